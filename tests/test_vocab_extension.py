"""Vocabulary extension for domain adaptation: `bert train-vocab --set extend_from=DIR --set extra_tokens=N` and
`bert pretrain --set init_from=DIR` growing the model to the extended vocabulary (vocab_extension, model)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcli.cli import app
from bertcli.vocab import load_tokenizer
from bertcli.vocab_extension import (
    character_counts,
    is_vocab_prefix,
    rank_extension_candidates,
    select_extension_tokens,
    spell_new_tokens,
    wordpiece_split,
)

runner = CliRunner()
DATA = Path(__file__).parent / "data"

# Words of a "domain" the Jargon File never uses: a base vocabulary trained on it splits them into many pieces.
DOMAIN_WORDS = ["kubernetes", "kubectl", "namespace", "daemonset", "microservice", "containerd", "autoscaler",
                "sidecar", "ingress", "helmchart", "statefulset", "configmap"]
VERBS = ["restarts", "schedules", "watches", "patches", "drains", "labels"]


def write_domain_corpus(path: Path, documents: int = 40) -> Path:
    """Sentence-per-line documents about the domain (deterministic), then the Korean/Japanese/Chinese lines of
    tests/data/multilingual.txt as a last document: characters a Jargon-only vocabulary lacks."""
    lines = []
    n = len(DOMAIN_WORDS)
    for d in range(documents):
        for s in range(4):
            a, b, c = DOMAIN_WORDS[(d + s) % n], DOMAIN_WORDS[(3 * d + s + 1) % n], DOMAIN_WORDS[(d * s + 5) % n]
            lines.append(f"The {a} {VERBS[(d + s) % len(VERBS)]} every {b} before the {c} sees it.")
        lines.append("")
    lines += [line for line in (DATA / "multilingual.txt").read_text(encoding="utf-8").splitlines() if line]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pieces_per_word(tok_dir: Path, text: str) -> float:
    tok = load_tokenizer(tok_dir).tokenizer
    pieces = words = 0
    for line in text.splitlines():
        enc = tok.encode(line, add_special_tokens=False)
        pieces += len(enc.ids)
        words += len({w for w in enc.word_ids if w is not None})
    return pieces / words


def vocab_of(tok_dir: Path) -> list[str]:
    return (tok_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]


def train_vocab(args: list[str]) -> None:
    result = runner.invoke(app, ["train-vocab", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    return write_domain_corpus(tmp_path_factory.mktemp("domain") / "domain.txt")


@pytest.fixture(scope="module")
def base_tok(tmp_path_factory, tiny_corpus) -> Path:
    """Our tokenizer, 600 tokens, trained on the Jargon File only."""
    out = tmp_path_factory.mktemp("base") / "tok"
    train_vocab(["--input", str(tiny_corpus), "--output", str(out), "--set", "vocab_size=600"])
    return out


def extend(base: Path, domain: Path, out: Path, extra_tokens: int) -> Path:
    """`bert train-vocab` extending the tokenizer `base` with up to extra_tokens learnt on `domain`."""
    train_vocab(["--input", str(domain), "--output", str(out), "--set", f"extend_from={base}",
                 "--set", f"extra_tokens={extra_tokens}"])
    return out


@pytest.fixture(scope="module")
def extended(tmp_path_factory, base_tok, domain) -> Path:
    return extend(base_tok, domain, tmp_path_factory.mktemp("ext") / "tok", 300)


# ---------------------------------------------------------------------------------------------- pure logic

def test_ranking_puts_new_characters_first_then_merge_order_and_never_an_old_piece():
    old = ["[PAD]", "[UNK]", "a", "b", "##b", "ab"]
    learned = ["[PAD]", "[UNK]", "a", "b", "c", "##b", "##c", "##d", "ab", "##cd", "abc", "ab", "cab"]
    chars = character_counts([("abcd", 3), ("c", 5), ("cab", 1)])
    assert chars["c"] == 6 and chars["##c"] == 3 and chars["##d"] == 3 and chars["a"] == 3
    # characters by frequency (ties by code point), then merges in merge order; old tokens and repeats dropped
    assert rank_extension_candidates(old, learned, chars) == ["c", "##c", "##d", "##cd", "abc", "cab"]


def test_selection_keeps_only_tokens_the_extended_vocabulary_uses_and_refills():
    old = ["[UNK]", "p", "##e", "##o", "##l", "##p", "##s", "x"]
    words = [("people", 5), ("peoples", 2), ("xp", 1)]
    # trainer order: an intermediate merge (peop) first, then the whole word, then a rarer merge
    candidates = ["peop", "people", "##ples", "xp", "##le"]
    chosen, ran_out = select_extension_tokens(old, candidates, 2, words)
    # peop is never used once people is in: dropped; the next candidate, ##ples, is not used either (peoples is
    # people ##s), so xp takes the place
    assert chosen == ["people", "xp"] and not ran_out
    chosen, ran_out = select_extension_tokens(old, candidates, 3, words, min_uses=2)
    assert chosen == ["people"] and ran_out  # xp is used once only, ##le never
    assert select_extension_tokens(old, candidates, 0, words) == ([], False)


def test_wordpiece_split_matches_the_tokenizers_model_and_spells_continuations():
    from tokenizers.models import WordPiece

    vocab = {t: i for i, t in enumerate(["[UNK]", "k", "ku", "##b", "##be", "##ber", "##net", "##es", "##e", "##s",
                                         "##n", "##t", "##k", "##u", "b", "e"])}
    model = WordPiece(vocab, unk_token="[UNK]")
    for word in ("kubernetes", "kube", "ku", "kubx", "b"):
        expected = [t.id for t in model.tokenize(word)]
        got = wordpiece_split(word, vocab)
        assert got == (None if expected == [vocab["[UNK]"]] else expected), word
    # a continuation token is spelled as the rest of a word: ##bernetes → ##ber ##net ##es (not b ##e …)
    assert wordpiece_split("##bernetes", vocab) == [vocab["##ber"], vocab["##net"], vocab["##es"]]
    assert wordpiece_split("##x", vocab) is None
    assert spell_new_tokens(["[UNK]", "k", "##u"], ["[UNK]", "k", "##u", "ku", "##uu", "##uk", "é"]) == [
        [1, 2], [2, 2], [], []]
    assert is_vocab_prefix(["a", "b"], ["a", "b", "c"]) and not is_vocab_prefix(["a", "b"], ["b", "a", "c"])


def test_grow_vocabulary_mean_of_pieces_exact_and_tied():
    import torch
    from transformers import BertConfig, BertForPreTraining

    from bertcli.model import grow_vocabulary, mean_of_rows

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=16, max_position_embeddings=16))
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.arange(10, dtype=torch.float32))
    old = model.get_input_embeddings().weight.detach().clone()
    pieces = [[1, 2, 3], [7], []]
    assert grow_vocabulary(model, 10, pieces) == 3
    emb = model.get_input_embeddings().weight
    assert emb.shape == (13, 8) and model.config.vocab_size == 13
    assert torch.equal(emb[:10], old)
    assert torch.equal(emb[10], torch.stack([old[1], old[2], old[3]]).mean(0))
    assert torch.equal(emb[11], old[7])
    head = model.cls.predictions
    assert head.decoder.weight is emb and head.decoder.bias is head.bias  # the tying survives
    assert head.bias.tolist() == [*range(10), 2.0, 7.0, 4.5]
    assert torch.equal(mean_of_rows(old, [[0, 0, 9]]), ((old[0] + old[0] + old[9]) / 3)[None])
    out = model(input_ids=torch.tensor([[2, 10, 12, 3]]))
    assert out.prediction_logits.shape == (1, 4, 13)


def test_tokens_nothing_spells_are_drawn_like_old_rows_apart_and_seeded():
    import torch
    from transformers import BertConfig, BertForPreTraining

    from bertcli.model import grow_vocabulary, sample_like_rows

    torch.manual_seed(0)
    old = torch.randn(400, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([5.0, -1.0, 0.0, 2.0])
    drawn = sample_like_rows(old, 20000, torch.Generator().manual_seed(1))
    assert torch.allclose(drawn.mean(0), old.mean(0), atol=0.06)
    assert torch.allclose(torch.cov(drawn.T), torch.cov(old.T), rtol=0.05, atol=0.06)

    def grown(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = BertForPreTraining(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=16))
        grow_vocabulary(model, 10, [[], [], [1]], seed=seed)
        assert model.cls.predictions.bias[10] == model.cls.predictions.bias[:10].mean()  # the mean old bias
        return model.get_input_embeddings().weight.detach().clone()

    a, b = grown(0), grown(0)
    assert torch.equal(a, b) and not torch.equal(a[10], a[11])  # seeded; two unspelled tokens stay apart
    assert not torch.equal(grown(1)[10], a[10]) and torch.equal(a[12], a[1])


# ---------------------------------------------------------------------------------------------- train-vocab

def test_extension_keeps_every_id_and_appends_new_pieces(base_tok, extended, domain):
    old, new = vocab_of(base_tok), vocab_of(extended)
    assert new[: len(old)] == old  # every old token keeps its id
    added = new[len(old) :]
    assert 0 < len(added) <= 300 and not set(added) & set(old)  # no appended token is already a single piece
    manifest = json.loads((extended / "manifest.json").read_text())
    base_manifest = json.loads((base_tok / "manifest.json").read_text())
    assert manifest["added_tokens"] == len(added) and manifest["vocab_size"] == len(new)
    assert manifest["special_token_ids"] == base_manifest["special_token_ids"]
    sha = hashlib.sha256((base_tok / "vocab.txt").read_bytes()).hexdigest()
    assert manifest["extended_from"] == {"path": str(base_tok), "vocab_sha256": sha, "vocab_size": len(old)}
    assert manifest["inputs"]["extend_from"]["vocab_sha256"] == sha
    assert "한" in added  # a character the Jargon vocabulary lacked
    assert any(t in added for t in ("kubernetes", "namespace", "daemonset"))  # a whole domain word
    text = domain.read_text(encoding="utf-8")
    before, after = pieces_per_word(base_tok, text), pieces_per_word(extended, text)
    assert after < 0.7 * before, (before, after)


def test_extended_tokenizer_loads_with_autotokenizer(extended):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(extended))
    ours = load_tokenizer(extended).tokenizer
    text = "The kubectl drains every daemonset. 한국어 문장"
    assert hf(text)["input_ids"] == ours.encode(text).ids
    assert len(hf) == len(vocab_of(extended))


def test_extension_is_deterministic(tmp_path, base_tok, extended, domain):
    again = extend(base_tok, domain, tmp_path / "again", 300)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (extended / name).read_bytes(), name


def test_extra_tokens_caps_the_count_and_every_appended_merge_is_used(tmp_path, base_tok, extended, domain):
    from bertcli.vocab_extension import token_uses

    out = extend(base_tok, domain, tmp_path / "few", 7)
    n = len(vocab_of(base_tok))
    assert len(vocab_of(out)) - n == 7
    tok = load_tokenizer(extended).tokenizer
    words = [w for line in domain.read_text(encoding="utf-8").splitlines()
             for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line))]
    uses = token_uses(tok.get_vocab(), [(w, 1) for w in words])
    vocab = vocab_of(extended)
    merges = [i for i in range(n, len(vocab)) if len(vocab[i].removeprefix("##")) > 1]
    assert len(merges) >= 10
    # min_frequency 2: each appended merged token is used at least twice (characters are kept regardless)
    assert all(uses[i] >= 2 for i in merges), [vocab[i] for i in merges if uses[i] < 2]


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.txt", "both"])
def test_extends_a_plain_hugging_face_tokenizer_and_keeps_its_settings(tmp_path, domain, files):
    from transformers import AutoTokenizer, BertTokenizer

    from bert_tiny import build_vocab

    base = tmp_path / "hf"
    vocab = build_vocab()
    BertTokenizer(vocab=vocab, do_lower_case=False).save_pretrained(str(base))  # transformers 5: tokenizer.json
    old = sorted(vocab, key=vocab.__getitem__)
    if files != "tokenizer.json":  # the files the older slow BertTokenizer wrote: vocab.txt + tokenizer_config.json
        (base / "vocab.txt").write_text("".join(t + "\n" for t in old), encoding="utf-8")
    if files == "vocab.txt":
        (base / "tokenizer.json").unlink()
    out = extend(base, domain, tmp_path / "ext", 60)
    new = vocab_of(out)
    assert new[: len(old)] == old and 0 < len(new) - len(old) <= 60
    hf = AutoTokenizer.from_pretrained(str(out))
    # special tokens at the base's unusual ids ([PAD] 8, [MASK] last of the old vocabulary), still there
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert hf.convert_tokens_to_ids(token) == vocab[token]
    assert "T" in new  # cased: the base does not lowercase, so neither does the extension ("The …" sentences)
    assert hf.tokenize("The") != hf.tokenize("the") == ["the"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_from_base"]["lowercase"] is False


@pytest.mark.parametrize("lowercase, strip_accents", [(True, "none"), (False, "latin"), (True, "latin"),
                                                      (True, "all"), (False, "none")])
def test_read_base_tokenizer_recovers_our_settings(tmp_path, tiny_corpus, lowercase, strip_accents):
    from bertcli.vocab import read_base_tokenizer

    out = tmp_path / "tok"
    train_vocab(["--input", str(tiny_corpus), "--output", str(out), "--set", "vocab_size=300",
                 "--set", f"lowercase={str(lowercase).lower()}", "--set", f"strip_accents={strip_accents}",
                 "--set", "handle_chinese_chars=false", "--set", "max_input_chars_per_word=50"])
    base = read_base_tokenizer(out)
    assert (base.lowercase, base.strip_accents) == (lowercase, strip_accents)
    assert (base.clean_text, base.handle_chinese_chars, base.max_input_chars_per_word) == (True, False, 50)
    assert base.vocab == vocab_of(out) and base.continuing_subword_prefix == "##"


def _refused(tmp_path: Path, args: list[str], expect: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["train-vocab", "--output", str(out), *args])
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expect in error_lines[0], result.output
    assert "Traceback" not in result.output and not out.exists()


def test_bad_extension_inputs_exit_2_with_one_line(tmp_path, base_tok, domain):
    ext = ["--input", str(domain), "--set", f"extend_from={base_tok}", "--set", "extra_tokens=10"]
    _refused(tmp_path, ["--input", str(domain), "--set", f"extend_from={tmp_path / 'nope'}",
                        "--set", "extra_tokens=10"], "does not exist")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, ["--input", str(domain), "--set", f"extend_from={tmp_path / 'empty'}",
                        "--set", "extra_tokens=10"], "has no vocab.txt or WordPiece tokenizer.json")
    _refused(tmp_path, [*ext, "--set", "lowercase=false"], "'lowercase'")  # the base lowercases
    _refused(tmp_path, [*ext, "--set", "strip_accents=all"], "'strip_accents'")
    _refused(tmp_path, [*ext, "--set", "vocab_size=800"], "'vocab_size'")
    _refused(tmp_path, [*ext, "--set", "algorithm=bpe"], "'algorithm'")
    _refused(tmp_path, ["--input", str(domain), "--set", f"extend_from={base_tok}"], "'extra_tokens'")
    _refused(tmp_path, ["--input", str(domain), "--set", "extra_tokens=5"], "'extra_tokens'")


# ---------------------------------------------------------------------------------------------- pretrain init_from

@pytest.fixture(scope="module")
def extended_run_tok(tmp_path_factory, tiny_tokenizer, domain) -> Path:
    """The session's tiny_tokenizer (that of reference_run) extended on the domain corpus."""
    return extend(tiny_tokenizer, domain, tmp_path_factory.mktemp("ext-run") / "tok", 80)


def test_init_from_grows_the_model_with_the_mean_of_old_pieces(tmp_path, reference_run, extended_run_tok, domain,
                                                              one_thread_no_plot, capsys):
    import torch
    from transformers import AutoModelForPreTraining, pipeline

    from bertcli.artifacts import load_data
    from bertcli.batching import EpochPlan
    from bertcli.stages import pretrain
    from pretrain_fixtures import make_artifact, tiny_cfg, weights

    data_dir = make_artifact(tmp_path / "masked", extended_run_tok, domain, num_sequences=64, sequences_per_shard=64)
    old, new = vocab_of(reference_run / "final"), vocab_of(extended_run_tok)
    old_ids = {t: i for i, t in enumerate(old)}
    src = weights(reference_run)
    cfg = tiny_cfg(data_dir, tmp_path / "run", init_from=str(reference_run / "final"), max_steps=1, save_every=0,
                   eval_every=0)
    data = load_data(data_dir)
    model = pretrain.build_pretraining_model(cfg, data, EpochPlan(data.arrays, 3, 8, 0.1), None, None)
    emb, bias = model.get_input_embeddings().weight.detach(), model.cls.predictions.bias.detach()
    old_emb, old_bias = src["bert.embeddings.word_embeddings.weight"], src["cls.predictions.bias"]
    assert emb.shape[0] == len(new)
    assert torch.equal(emb[: len(old)], old_emb) and torch.equal(bias[: len(old)], old_bias)
    spelled = 0
    for j, token in enumerate(new[len(old) :]):
        ids = wordpiece_split(token, old_ids)
        rows = list(ids) if ids else list(range(len(old)))
        if ids:  # a token nothing spells is drawn at random (test above); its bias is the mean of all
            assert torch.equal(emb[len(old) + j], old_emb[rows].mean(0)), token
            spelled += 1
        assert torch.equal(bias[len(old) + j], old_bias[rows].mean(0)), token
    assert spelled > 0
    assert model.cls.predictions.decoder.weight is model.get_input_embeddings().weight
    assert "kubectl" in new or "namespace" in new  # whole domain words that the old pieces spell
    capsys.readouterr()
    pretrain.run(cfg)
    assert f"grew the vocabulary by {len(new) - len(old)} rows" in capsys.readouterr().err
    final = tmp_path / "run" / "final"
    loaded = AutoModelForPreTraining.from_pretrained(str(final))
    assert loaded.config.vocab_size == len(new)
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    fill = pipeline("fill-mask", model=str(final), device="cpu")
    assert len(fill("the kubectl [MASK] every daemonset .", top_k=3)) == 3


def test_init_from_a_vocabulary_that_is_not_a_prefix_is_refused(tmp_path, tiny_bert, extended_run_tok, domain):
    from bertcli.errors import ArtifactError
    from bertcli.stages import pretrain
    from pretrain_fixtures import make_artifact, tiny_cfg

    data_dir = make_artifact(tmp_path / "masked", extended_run_tok, domain, num_sequences=32, sequences_per_shard=32)
    with pytest.raises(ArtifactError, match=r"neither the one of the data .* nor a prefix") as err:
        pretrain.run(tiny_cfg(data_dir, tmp_path / "run", init_from=str(tiny_bert), max_steps=1))
    assert str(tiny_bert) in str(err.value) and str(data_dir) in str(err.value)
    assert "extend_from" in err.value.hint
    result = runner.invoke(app, ["pretrain", "--data", str(data_dir), "--output", str(tmp_path / "cli"),
                                 "--set", f"init_from={tiny_bert}", "--set", "batch_size=8",
                                 "--set", "micro_batch_size=4", "--set", "device=cpu"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nor a prefix of it" in errors[0] and "Traceback" not in result.output
