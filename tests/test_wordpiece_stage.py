"""`bert train-vocab` with algorithm wordpiece: exact, byte-identical across worker counts, loadable everywhere."""

from __future__ import annotations

import json

import pytest

from bertcli.schemas import TrainVocabConfig
from bertcli.stages import train_vocab
from bertcli.tools import inspect
from test_wordpiece import SPECIALS, bert_word_counts, reference_loop

EXACT = dict(min_frequency=0, limit_alphabet=0, lowercase=False, strip_accents="none", clean_text=False,
             handle_chinese_chars=False)


def test_textbook_stage_reproduces_the_textbook_loop(tmp_path, tiny_corpus):
    lines = [line for line in tiny_corpus.read_text(encoding="utf-8").splitlines()[:60] if line.strip()]
    corpus = tmp_path / "slice.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    cfg = TrainVocabConfig(input=[str(corpus)], output=str(out), vocab_size=350, algorithm="wordpiece",
                           score="textbook", num_workers=1, **EXACT)
    manifest = train_vocab.run(cfg)
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == reference_loop(bert_word_counts(lines), 350, SPECIALS, score="textbook")
    assert manifest["algorithm"] == "wordpiece" and manifest["score"] == "textbook"
    assert manifest["reproducible"] is True


@pytest.mark.parametrize("score", ["likelihood", "textbook", "count"])
def test_byte_identical_for_any_worker_count(tmp_path, tiny_corpus, multilingual_corpus, score):
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"tok{workers}"
        cfg = TrainVocabConfig(input=[str(tiny_corpus), str(multilingual_corpus)], output=str(out), vocab_size=800,
                               algorithm="wordpiece", score=score, num_workers=workers)
        train_vocab.run(cfg)
        outputs.append(out)
    for name in ("vocab.txt", "tokenizer.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes()
    vocab = (outputs[0] / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 800 and vocab[:5] == SPECIALS
    manifest = json.loads((outputs[0] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["score"] == score


def test_autotokenizer_agrees_with_bert_tokenize(tmp_path, tiny_corpus, multilingual_corpus):
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    cfg = TrainVocabConfig(input=[str(tiny_corpus), str(multilingual_corpus)], output=str(out), vocab_size=700,
                           algorithm="wordpiece", score="likelihood", num_workers=1)
    train_vocab.run(cfg)
    texts = ["The hacker's kludge worked, mostly.", "한국어 문장은 자모로 쪼개지면 안 됩니다.", "Crème brûlée"]
    ours = inspect.tokenize(out, texts)
    auto = AutoTokenizer.from_pretrained(str(out))
    for text, row in zip(texts, ours):
        assert auto(text)["input_ids"] == row["ids"]
