"""`bert train-vocab` and `bert tokenize`: outputs, loaders agree, script-safe normalization, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcli.cli import app

runner = CliRunner()

TEXTS = {
    "english": "The hacker ethic is a kludge of folklore, isn't it?",
    "korean": "한국어 문장은 자모로 쪼개지면 안 됩니다.",
    "japanese": "ガギグゲゴとパピプペポは濁点を持っています。",
    "chinese": "北京是中国的首都。",
    "accented": "Crème brûlée, Ångström, naïve café and São Paulo.",
}


def _train(tmp_path, tiny_corpus, multilingual_corpus, *sets: str, name: str = "tok") -> Path:
    out = tmp_path / name
    args = ["train-vocab", "--input", str(tiny_corpus), "--input", str(multilingual_corpus), "--output", str(out)]
    for s in ("vocab_size=900",) + sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def _tokenize_json(tok_dir: Path, texts: list[str]) -> list[dict]:
    result = runner.invoke(app, ["tokenize", "--tokenizer", str(tok_dir), "--json", *texts])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_output_directory_and_manifest(tiny_tokenizer):
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.yaml"):
        assert (tiny_tokenizer / name).is_file(), name
    manifest = json.loads((tiny_tokenizer / "manifest.json").read_text())
    assert manifest["stage"] == "train-vocab"
    assert (manifest["algorithm"], manifest["score"], manifest["reproducible"]) == ("wordpiece", "count", True)
    assert manifest["special_token_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert manifest["inputs"]["corpus"][0]["sha256"] and len(manifest["config_hash"]) == 64
    vocab = (tiny_tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == manifest["vocab_size"] <= 1000


def test_a_vocabulary_smaller_than_asked_for_is_said(tmp_path, tiny_corpus):
    out = tmp_path / "tok"
    result = runner.invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(out),
                                 "--set", "vocab_size=30522"])
    assert result.exit_code == 0, result.output
    size = json.loads((out / "manifest.json").read_text())["vocab_size"]
    assert size < 30522
    assert (f"warning: the vocabulary has {size:,} tokens, not the 30,522 of vocab_size" in result.stderr
            and "min_frequency (2)" in result.stderr), result.stderr
    # With min_frequency 0 every piece is kept already: the advice is only more text.
    zero = runner.invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(tmp_path / "zero"),
                               "--set", "vocab_size=30522", "--set", "min_frequency=0"])
    assert zero.exit_code == 0 and "the corpus gave no more pieces;" in zero.stderr
    assert "min_frequency" not in zero.stderr and "(more text gives more)" in zero.stderr, zero.stderr
    # One the corpus fills gets no warning.
    fits = runner.invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(tmp_path / "fits"),
                               "--set", f"vocab_size={size - 50}"])
    assert fits.exit_code == 0 and "warning" not in fits.stderr, fits.stderr


def test_bpe_manifest_says_how_reproducible_and_ids_are_canonical(tmp_path, tiny_corpus, multilingual_corpus):
    tok_dir = _train(tmp_path, tiny_corpus, multilingual_corpus, "algorithm=bpe")
    manifest = json.loads((tok_dir / "manifest.json").read_text())
    assert manifest["algorithm"] == "bpe" and manifest["score"] is None
    assert manifest["reproducible"] is False and "#1794" in manifest["reproducibility_note"]
    vocab = (tok_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # canonical order: single characters, then ##characters, then longer pieces
    kinds = [(len(t.removeprefix("##")) > 1, t.startswith("##") and len(t) > 2) for t in vocab[5:]]
    assert kinds == sorted(kinds)


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe"])
@pytest.mark.parametrize("strip_accents", ["none", "latin", "all"])
def test_autotokenizer_gives_the_ids_bert_tokenize_gives(
    tmp_path, tiny_corpus, multilingual_corpus, strip_accents, algorithm
):
    from transformers import AutoTokenizer, BertTokenizerFast

    tok_dir = _train(
        tmp_path, tiny_corpus, multilingual_corpus, f"strip_accents={strip_accents}", f"algorithm={algorithm}"
    )
    ours = _tokenize_json(tok_dir, list(TEXTS.values()))
    auto = AutoTokenizer.from_pretrained(tok_dir)
    for text, row in zip(TEXTS.values(), ours):
        assert auto(text)["input_ids"] == row["ids"], (strip_accents, text)
        assert row["tokens"][0] == "[CLS]" and row["tokens"][-1] == "[SEP]"
    if strip_accents != "latin":  # BertTokenizerFast rebuilds BertNormalizer, which cannot express "latin"
        bert_fast = BertTokenizerFast.from_pretrained(tok_dir)
        for text, row in zip(TEXTS.values(), ours):
            assert bert_fast(text)["input_ids"] == row["ids"], (strip_accents, text)


def test_default_normalization_keeps_scripts_whole(tiny_tokenizer):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(tiny_tokenizer)
    for name, text in TEXTS.items():
        back = auto.decode(auto(text)["input_ids"], skip_special_tokens=True)
        expected = text.lower() if name in ("english", "accented") else text
        assert back.replace(" ", "") == expected.replace(" ", ""), name


def test_strip_accents_latin_spares_hangul_and_kana(tmp_path, tiny_corpus, multilingual_corpus):
    from transformers import AutoTokenizer

    tok_dir = _train(tmp_path, tiny_corpus, multilingual_corpus, "strip_accents=latin")
    auto = AutoTokenizer.from_pretrained(tok_dir)

    def roundtrip(text: str) -> str:
        return auto.decode(auto(text)["input_ids"], skip_special_tokens=True).replace(" ", "")

    assert roundtrip(TEXTS["accented"]) == "cremebrulee,angstrom,naivecafeandsaopaulo."
    assert roundtrip(TEXTS["korean"]) == TEXTS["korean"].replace(" ", "")
    assert roundtrip(TEXTS["japanese"]) == TEXTS["japanese"]
    all_dir = _train(tmp_path, tiny_corpus, multilingual_corpus, "strip_accents=all", name="all")
    auto_all = AutoTokenizer.from_pretrained(all_dir)
    # BERT's own stripping drops the kana voicing marks: why it is not our default
    assert "ガ" not in auto_all.decode(auto_all(TEXTS["japanese"])["input_ids"])


def test_tokenize_plain_output(tiny_tokenizer):
    result = runner.invoke(app, ["tokenize", "--tokenizer", str(tiny_tokenizer), "hello world"])
    assert result.exit_code == 0
    tokens, ids = result.output.strip().splitlines()[-2:]
    assert tokens.split()[0] == "[CLS]" and ids.split()[0] == "2"


def test_tokenize_gives_what_autotokenizer_gives_for_special_tokens_in_the_text(tiny_tokenizer):
    # `bert tokenize "the [MASK] sat"` printed "[ mask ]" in pieces, where AutoTokenizer and fill-mask read [MASK].
    from transformers import AutoTokenizer

    texts = ["the [MASK] sat on [SEP] the mat .", "a [mask] in lower case", "[CLS][MASK]x"]
    result = runner.invoke(app, ["tokenize", "--tokenizer", str(tiny_tokenizer), "--json", *texts])
    assert result.exit_code == 0, result.output
    ours = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    reference = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    assert [o["ids"] for o in ours] == [reference(t)["input_ids"] for t in texts]
    assert "[MASK]" in ours[0]["tokens"] and "[MASK]" not in ours[1]["tokens"]


def test_tokenize_warns_when_a_text_is_mostly_unknown(tmp_path, tiny_corpus):
    # A tokenizer of English text only: three Hangul words are [UNK], the full stop is known (3 of 4). The README
    # once paired the two without a word.
    out = tmp_path / "en"
    assert runner.invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(out),
                               "--set", "vocab_size=600"]).exit_code == 0
    result = runner.invoke(app, ["tokenize", "--tokenizer", str(out), "the hacker", "서울은 대한민국의 수도입니다."])
    assert result.exit_code == 0, result.output
    assert "[UNK] [UNK] [UNK]" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 75% of text 2's tokens are [UNK] for the tokenizer of '{out}'; train a vocabulary "
                        "on such text (bert train-vocab), or check limit_alphabet"], result.stderr


def test_unknown_tokens_are_blamed_on_decomposed_text_only_where_it_is(tmp_path):
    # The [UNK] warning told every user to compose NFD text, also when the text was composed and the vocabulary
    # was the one trained on decomposed (NFD) Korean: that vocabulary is of jamo, and train-vocab said nothing.
    import unicodedata

    sentences = ["서울은 대한민국의 수도입니다 .", "한국어 문장을 토큰으로 나눕니다 .",
                 "사진을 찍으면 나중에 봅니다 ."] * 40
    composed, decomposed = tmp_path / "nfc.txt", tmp_path / "nfd.txt"
    composed.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    decomposed.write_text(unicodedata.normalize("NFD", composed.read_text(encoding="utf-8")), encoding="utf-8")

    def train(corpus, out, *options):
        result = runner.invoke(app, ["train-vocab", "--input", str(corpus), "--output", str(out),
                                     "--set", "vocab_size=300", *options])
        assert result.exit_code == 0, result.output
        return [line for line in result.stderr.splitlines() if "jamo" in line]

    def warned(tokenizer, text):
        result = runner.invoke(app, ["tokenize", "--tokenizer", str(tokenizer), text])
        assert result.exit_code == 0, result.output
        return [line for line in result.stderr.splitlines() if line.startswith("warning:")]

    assert train(composed, tmp_path / "syllables") == []
    jamo_warning = train(decomposed, tmp_path / "jamo")
    assert len(jamo_warning) == 1 and "spells Hangul as jamo" in jamo_warning[0]
    nfd_text = unicodedata.normalize("NFD", "서울은 수도입니다 .")
    [warning] = warned(tmp_path / "syllables", nfd_text)  # the text is decomposed: compose it
    assert "the text is in decomposed Unicode (NFD" in warning and "train a vocabulary" not in warning
    [warning] = warned(tmp_path / "jamo", "서울은 수도입니다 .")  # the vocabulary is: train it again
    assert "its vocabulary is of Hangul jamo" in warning and "the text is in decomposed" not in warning
    # strip_accents: all decomposes every input itself, so composed text reads fine: not NFD, but not for Korean
    [warning] = train(composed, tmp_path / "stripped", "--set", "strip_accents=all")
    assert "strip_accents: all spells Hangul as jamo" in warning and "NFD" not in warning
    assert warned(tmp_path / "stripped", "서울은 수도입니다 .") == []
    [warning] = warned(tmp_path / "stripped", "😀😀😀 😀")
    assert "jamo" not in warning and "train a vocabulary on such text" in warning
    # one decomposed accent among words of another script: the script is what the vocabulary lacks
    [warning] = warned(tmp_path / "syllables", "Привет мир как дела cafe\u0301")
    assert "train a vocabulary on such text" in warning and "decomposed" not in warning


def test_python_m_and_debug_traceback(tmp_path):
    env = dict(os.environ)
    ok = subprocess.run([sys.executable, "-m", "bertcli", "--version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "bertcli" in ok.stdout
    missing = [sys.executable, "-m", "bertcli", "tokenize", "--tokenizer", str(tmp_path / "nope"), "x"]
    quiet = subprocess.run(missing, capture_output=True, text=True, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.startswith("error: tokenizer directory")
    loud = subprocess.run(missing, capture_output=True, text=True, env={**env, "BERTCLI_DEBUG": "1"})
    assert loud.returncode == 2 and "Traceback" in loud.stderr


# ---------------------------------------------------------------- bad input: exit 2, a clear message, nothing left


def _bad(tmp_path: Path, args: list[str], expect: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["train-vocab", "--output", str(out), *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and expect in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary directory left behind"


def test_bad_missing_path(tmp_path):
    _bad(tmp_path, ["--input", str(tmp_path / "nope.txt")], "does not exist")


def test_bad_empty_and_blank_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    _bad(tmp_path, ["--input", str(tmp_path / "empty.txt")], "holds no text")
    (tmp_path / "blank.txt").write_text("\n\n   \n\t\n")
    _bad(tmp_path, ["--input", str(tmp_path / "blank.txt")], "holds no text")


def test_bad_binary_and_invalid_utf8(tmp_path):
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 50)
    _bad(tmp_path, ["--input", str(tmp_path / "bin.txt")], "binary file")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ok\n".encode("utf-8") + "na\u00efve\n".encode("latin-1"))
    _bad(tmp_path, ["--input", str(tmp_path / "latin1.txt")], "latin1.txt:2: invalid UTF-8")


def test_bad_vocab_size_below_alphabet(tmp_path, tiny_corpus):
    _bad(tmp_path, ["--input", str(tiny_corpus), "--set", "vocab_size=30"], "smaller than the 5 special tokens")
    _bad(tmp_path, ["--input", str(tiny_corpus), "--set", "vocab_size=5"], "leaves no room")


def test_bad_numbers_yaml_keys_types(tmp_path, tiny_corpus):
    _bad(tmp_path, ["--input", str(tiny_corpus), "--set", "vocab_size=0"], "expected a value >= 1")
    _bad(tmp_path, ["--input", str(tiny_corpus), "--set", "num_workers=-1"], "'num_workers'")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("vocab_size: 100\n  lowercase: true\n")
    _bad(tmp_path, ["--input", str(tiny_corpus), "--config", str(cfg)], f"{cfg}:2")
    cfg.write_text("vocab_size: 100\nlowercas: true\n")
    _bad(tmp_path, ["--input", str(tiny_corpus), "--config", str(cfg)], "did you mean 'lowercase'")
    cfg.write_text("vocab_size: a few\n")
    _bad(tmp_path, ["--input", str(tiny_corpus), "--config", str(cfg)], "expected an integer")


def test_existing_output_needs_overwrite_and_foreign_dirs_are_never_replaced(tmp_path, tiny_corpus):
    out = tmp_path / "tok"
    args = ["train-vocab", "--input", str(tiny_corpus), "--output", str(out), "--set", "vocab_size=300"]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "manifest.json").read_bytes()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert (out / "manifest.json").read_bytes() == first
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("precious")
    args[args.index(str(out))] = str(user_dir)
    refused = runner.invoke(app, args + ["--overwrite"])
    assert refused.exit_code == 2 and "not a bertcli artifact" in refused.output
    assert (user_dir / "thesis.tex").read_text() == "precious"


def test_an_unknown_key_names_the_stage_whose_keys_to_list(tmp_path, tiny_corpus):
    result = runner.invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(tmp_path / "t"),
                                 "--set", "vocab=100"])
    assert result.exit_code == 2
    assert "hint: run `bert config show train-vocab` to see every valid key" in result.stderr, result.stderr


def test_a_corpus_in_another_encoding_read_with_errors_replace_is_warned_about(tmp_path):
    # errors: replace read a CP949 file line by line as U+FFFD, and the vocabulary came out as mojibake, silently
    corpus = tmp_path / "cp949.txt"
    corpus.write_bytes(("서울은 대한민국의 수도입니다 .\n사진을 찍으면 나중에 봅니다 .\n" * 20).encode("cp949"))
    result = runner.invoke(app, ["train-vocab", "--input", str(corpus), "--output", str(tmp_path / "tok"),
                                 "--set", "vocab_size=200", "--set", "errors=replace"])
    assert result.exit_code == 0, result.output
    assert "warning: 40 of the corpus's 40 lines held bytes that are not UTF-8" in result.stderr
    assert "iconv -f CP949 -t UTF-8" in result.stderr
    utf8 = tmp_path / "utf8.txt"
    utf8.write_text("서울은 수도입니다 .\n", encoding="utf-8")
    clean = runner.invoke(app, ["train-vocab", "--input", str(utf8), "--output", str(tmp_path / "tok2"),
                                "--set", "vocab_size=200", "--set", "errors=replace"])
    assert clean.exit_code == 0 and "not UTF-8" not in clean.stderr
