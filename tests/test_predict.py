"""`bert predict-nsp`, `fill-mask`, `evaluate`, `embed` on a tiny model made with plain transformers code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bert_tiny import STORY, make_tiny_bert
from bertcli.cli import app
from cli_helpers import fails, json_lines, ok, refused_with_hint

runner = CliRunner()


# ---------------------------------------------------------------- predict-nsp


def test_predict_nsp_knows_the_story_order(tiny_bert: Path, tmp_path: Path) -> None:
    # Every ordered pair of STORY sentences: IsNext exactly when B is A's successor. A swapped label index
    # (IsNext is 0 in transformers) would score near 0 here.
    n = len(STORY)
    pairs = [(STORY[a], STORY[b]) for a in range(n) for b in range(n)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    rows = json_lines(ok(["predict-nsp", "--model", str(tiny_bert), "--input", str(tsv)]).stdout)
    assert [(r["first"], r["second"]) for r in rows] == pairs
    truth = [b == (a + 1) % n for a in range(n) for b in range(n)]
    correct = sum((r["label"] == "IsNext") == t for r, t in zip(rows, truth))
    assert correct / len(rows) >= 0.8
    for r in rows:
        assert 0.0 <= r["is_next_probability"] <= 1.0
        assert r["label"] == ("IsNext" if r["is_next_probability"] >= 0.5 else "NotNext")


def test_predict_nsp_single_pair_and_batch_agree(tiny_bert: Path, tmp_path: Path) -> None:
    single = ok(
        ["predict-nsp", "--model", str(tiny_bert), "--first", STORY[0], "--second", STORY[1], "--json"]
    ).stdout
    (row,) = json_lines(single)
    assert set(row) == {"first", "second", "is_next_probability", "label"}
    assert row["label"] == "IsNext"
    human = ok(["predict-nsp", "--model", str(tiny_bert), "--first", STORY[0], "--second", STORY[1]]).stdout
    assert human.startswith("IsNext") and f"{row['is_next_probability']:.4f}" in human

    # The same pair inside a JSONL batch of mixed lengths (padding) gets the same probability.
    jsonl = tmp_path / "pairs.jsonl"
    lines = [{"first": STORY[2], "second": STORY[3] + " " + STORY[4]}, {"first": STORY[0], "second": STORY[1]}]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    rows = json_lines(
        ok(["predict-nsp", "--model", str(tiny_bert), "--input", str(jsonl), "--batch-size", "2"]).stdout
    )
    assert len(rows) == 2
    assert rows[1]["is_next_probability"] == pytest.approx(row["is_next_probability"], abs=1e-5)

    # A TSV may name its columns in a first line; that line is not a pair (a later one with these words is).
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(f"First\tSecond\n{STORY[0]}\t{STORY[1]}\nfirst\tsecond\n", encoding="utf-8")
    rows = json_lines(ok(["predict-nsp", "--model", str(tiny_bert), "--input", str(tsv)]).stdout)
    assert [(r["first"], r["second"]) for r in rows] == [(STORY[0], STORY[1]), ("first", "second")]
    assert rows[0]["is_next_probability"] == pytest.approx(row["is_next_probability"], abs=1e-5)


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("bad.tsv", "a\tb\nno tab here\n", ":2:"),
        ("bad.tsv", "a\tb\n\nc\td\te\n", ":3:"),
        ("bad.jsonl", '{"first": "a", "second": "b"}\n{"first": "a", \n', ":2:"),
        ("bad.jsonl", '{"first": "a", "second": "b"}\n{"first": "a"}\n', ":2:"),
        ("bad.jsonl", '{"first": "a", "second": ""}\n', ":1:"),
        ("bad.tsv", b"a\tb\r\nc\t\xff\xfe\r\n", ":2:"),
        # JSON a parser cannot hold (a 5,000-digit number, brackets 100,000 deep) or text that is no Unicode (a lone
        # surrogate escape): these were tracebacks (exit 1)
        ("bad.jsonl", '{"first": "a", "second": "b", "n": ' + "9" * 5000 + "}\n", ":1:"),
        ("bad.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", ":1:"),
        ("bad.jsonl", '{"first": "a", "second": "b"}\n{"first": "a \\ud800", "second": "b"}\n', ":2 holds"),
    ],
)
def test_predict_nsp_malformed_pairs_file_names_the_line(
    tiny_bert: Path, tmp_path: Path, name: str, content: str | bytes, line: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    result = runner.invoke(app, ["predict-nsp", "--model", str(tiny_bert), "--input", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}{line}" in result.stderr
    assert result.stdout == ""  # nothing half-written before the bad line


def test_predict_nsp_needs_a_pair_or_a_file(tiny_bert: Path) -> None:
    model = ["predict-nsp", "--model", str(tiny_bert)]
    refused_with_hint([*model, "--first", "a"], "(--second not given)")
    refused_with_hint(model, "(--first and --second not given)")
    refused_with_hint([*model, "--input", "x.tsv", "--first", "a"], "not both")
    refused_with_hint([*model, "--input", str(Path(__file__).parent)], "pairs file", "is a directory")
    # the refusal names the empty one
    assert refused_with_hint([*model, "--first", " ", "--second", "b"])[0] == "error: --first is empty"
    assert refused_with_hint([*model, "--first", "", "--second", ""])[0] == "error: --first and --second are empty"


def test_text_longer_than_positions_is_truncated_with_a_warning(tiny_bert: Path) -> None:
    long_text = " ".join(STORY * 3)  # ~50 tokens, the model has 40 positions
    result = ok(["predict-nsp", "--model", str(tiny_bert), "--first", long_text, "--second", STORY[0], "--json"])
    assert "warning:" in result.stderr and "truncated to 40" in result.stderr
    assert len(json_lines(result.stdout)) == 1


# ---------------------------------------------------------------- fill-mask


def test_fill_mask_predicts_the_trained_words(tiny_bert: Path) -> None:
    out = ok(["fill-mask", "--model", str(tiny_bert), "--top-k", "3", "--json", "the cat [MASK] on the mat ."]).stdout
    (obj,) = json_lines(out)
    (mask,) = obj["masks"]
    preds = mask["predictions"]
    assert len(preds) == 3
    assert preds[0]["token"] == "sat"
    assert preds[0]["sequence"] == "the cat sat on the mat."
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert not {p["token"] for p in preds} & {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"}

    human = ok(["fill-mask", "--model", str(tiny_bert), "the cat [MASK] on the mat ."]).stdout
    assert human.splitlines()[0].split()[1] == "sat"


def test_fill_mask_and_predict_nsp_say_when_the_text_is_mostly_unknown(tiny_bert: Path) -> None:
    # Both answered an all-[UNK] text without a word, where tokenize, score and predict warn.
    assert "tokens are [UNK]" not in ok(["fill-mask", "-m", str(tiny_bert), "the cat [MASK] on the mat ."]).stderr
    result = ok(["fill-mask", "-m", str(tiny_bert), "ꙮꙮ ꙮ [MASK] ꙮ ."])
    assert "warning: 75% of the text's tokens are [UNK]" in result.stderr  # 3 of 4, the mask left out
    result = ok(["predict-nsp", "-m", str(tiny_bert), "--first", "ꙮꙮ ꙮ .", "--second", "ꙮ ꙮꙮ ."])
    assert "warning: 67% of the text's tokens are [UNK]" in result.stderr  # 4 of 6
    assert "IsNext" in result.stdout or "NotNext" in result.stdout
    assert "[UNK]" not in ok(["predict-nsp", "-m", str(tiny_bert), "--first", "the cat sat .",
                              "--second", "the dog ran ."]).stderr


def test_fill_mask_two_masks(tiny_bert: Path) -> None:
    out = ok(["fill-mask", "--model", str(tiny_bert), "--json", "the cat [MASK] on the [MASK] ."]).stdout
    masks = json_lines(out)[0]["masks"]
    assert [m["mask_index"] for m in masks] == [0, 1]
    assert [m["predictions"][0]["token"] for m in masks] == ["sat", "mat"]
    assert "[MASK]" in masks[1]["predictions"][0]["sequence"]  # the other mask stays masked


def test_a_mask_beyond_the_positions_is_named_not_dropped_silently(tiny_bert: Path) -> None:
    long_text = " ".join(STORY * 3)  # ~50 tokens: a mask after it lies beyond the model's 40 positions
    result = ok(["fill-mask", "--model", str(tiny_bert), "--json", f"the [MASK] {long_text} [MASK] ."])
    assert len(json_lines(result.stdout)[0]["masks"]) == 1
    assert "warning: 1 of the text's 2 [MASK] tokens lie beyond the model's 40 positions" in result.stderr
    fails(["fill-mask", "--model", str(tiny_bert), "--device", "meta", "the [MASK] ."], "--device 'meta'")
    error = fails(["fill-mask", "--model", str(tiny_bert), "--device", "tpu", "the [MASK] ."], "--device 'tpu'")
    assert error == "error: --device 'tpu': not a device name; bertcli runs on cpu or cuda only"  # not torch's list
    fails(["predict-nsp", "--model", str(tiny_bert), "--first", "a \udcff", "--second", "b"], "not a character")
    fails(["predict-nsp", "--model", str(tiny_bert), "--first", "\u200b", "--second", "b"],
          "the first text has no tokens")  # a zero-width space only: scored as an empty segment before


def test_a_cased_vocabulary_behind_a_lowercasing_tokenizer_is_warned_about(tiny_bert: Path, tmp_path: Path) -> None:
    # Public BERTs often ship vocab.txt alone; transformers then lowercases, and a cased model's capitals are
    # never used ("The" and "the" score alike), without a word.
    cased = tmp_path / "cased"
    shutil.copytree(tiny_bert, cased)
    ids = json.loads((cased / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (cased / name).unlink(missing_ok=True)
    vocab = sorted(ids, key=ids.__getitem__)
    vocab = [t.capitalize() if t.isalpha() and i % 5 == 0 else t for i, t in enumerate(vocab)]
    (cased / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    result = ok(["fill-mask", "--model", str(cased), "the cat [MASK] on the mat ."])
    assert "pieces have capitals, but the tokenizer lowercases the text" in result.stderr
    assert "capitals" not in ok(["fill-mask", "--model", str(tiny_bert), "the cat [MASK] on the mat ."]).stderr


def test_fill_mask_uses_the_tokenizers_own_mask_token(tmp_path: Path) -> None:
    model = make_tiny_bert(tmp_path / "angle", train=False, mask_token="<mask>")
    fails(["fill-mask", "--model", str(model), "the cat [MASK] on the mat ."], "no <mask> token")
    out = ok(["fill-mask", "--model", str(model), "--json", "the cat <mask> on the mat ."]).stdout
    assert len(json_lines(out)[0]["masks"]) == 1


def test_fill_mask_without_mask_is_refused(tiny_bert: Path) -> None:
    fails(["fill-mask", "--model", str(tiny_bert), "the cat sat on the mat ."], "no [MASK] token")


def test_a_refused_long_text_is_not_first_warned_about(tiny_bert: Path) -> None:
    # ~50 tokens before the mask on a 40-position model: truncation would drop the mask, so it is refused, and
    # the truncation warning that an accepted text gets would only bury the error.
    long_text = " ".join(STORY * 3)
    refused_with_hint(["fill-mask", "--model", str(tiny_bert), f"{long_text} [MASK]"], "beyond the model's 40")
    accepted = ok(["fill-mask", "--model", str(tiny_bert), f"the [MASK] {long_text}"])
    assert "warning: the text has" in accepted.stderr and "truncated to 40" in accepted.stderr

    embed = ["embed", "--model", str(tiny_bert), "--word", "python"]
    no_python = " ".join(s for s in STORY * 3 if "python" not in s)  # ~75 tokens
    refused_with_hint([*embed, f"{no_python} python", "python is fun ."], "sentence 1 lies beyond")
    refused_with_hint([*embed, "--layer", "99", "python is fun ."], "--layer 99", "layers 0 (embeddings) to 2")
    refused_with_hint([*embed[:-1], "[MASK]", "the [MASK] is", "a [MASK]"], "is a special token")
    refused_with_hint(["embed", "--model", str(tiny_bert), "--word", "an", "the bank .", "an apple ."],
                      "does not occur in sentence 1")


# ---------------------------------------------------------------- embed


def test_embed_static_versus_contextual(tiny_bert: Path) -> None:
    sentences = ["He got bit by a Python .", "Python is my favorite programming language .", "the cat sat on the mat ."]
    result = runner.invoke(app, ["embed", "--model", str(tiny_bert), "--word", "python", "--json", *sentences[:2]])
    assert result.exit_code == 0, result.output
    obj = json_lines(result.stdout)[0]
    assert obj["pieces"] == [["python"], ["python"]]
    static = np.array(obj["static_similarity"])
    contextual = np.array(obj["contextual_similarity"])
    # The same piece has the same input embedding wherever it stands; its contextual vector moves with the sentence.
    np.testing.assert_allclose(static, 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diag(contextual), 1.0, atol=1e-5)
    np.testing.assert_allclose(contextual, contextual.T, atol=1e-6)
    assert contextual[0, 1] < 0.99
    vectors = np.array(obj["vectors"])
    assert vectors.shape == (2, 64)
    a, b = vectors
    assert contextual[0, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)

    human = ok(["embed", "--model", str(tiny_bert), "--word", "python", *sentences[:2]]).stdout
    assert "contextual" in human and "static" in human and "pieces: python" in human

    fails(["embed", "--model", str(tiny_bert), "--word", "python", *sentences], "sentence 3", "'python'")


def test_find_word_prefers_whole_words() -> None:
    from bertcli.tools.predict import find_word

    assert find_word("pythonic code in Python", "python") == (17, 23)
    assert find_word("파이썬은 재미있다", "파이썬") == (0, 3)  # a Korean particle attached
    assert find_word("我喜欢猫。", "猫") == (3, 4)  # no spaces at all
    assert find_word("the cat", "dog") is None
    assert find_word("the bank", "an") is None and find_word("another day", "an") is None  # not inside a word
    assert find_word("an apple", "an") == (0, 2)
    assert find_word("東京に行く", "東京") == (0, 2) and find_word("ภาษาไทยง่าย", "ไทย") == (4, 7)


# ---------------------------------------------------------------- evaluate


def _masked_artifact(out: Path, model_dir: Path, rows: list[tuple[str, str, int]], seed: int = 0) -> Path:
    """A masked artifact in the on-disk format of `bert mask` (docs/formats.md), written with the foundation's
    ShardWriter; ~15% of the non-special tokens masked."""
    from transformers import AutoTokenizer

    from bertcli import artifacts, shards
    from bertcli.schemas import MaskConfig
    from bertcli.vocab import tokenizer_hash

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = shards.token_dtype(len(tok))
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    writer = shards.ShardWriter(
        out,
        ragged={"input_ids": dtype, "masked_positions": np.int16, "masked_labels": dtype},
        scalar={"type_boundary": np.int32, "next_sentence_label": np.int8},
        sequences_per_shard=3,
    )
    from pretrain_fixtures import write_rows

    sequences = []
    for first, second, label in rows:
        enc = tok(first, second)
        ids = np.array(enc["input_ids"])
        boundary = enc["token_type_ids"].index(1)
        candidates = [i for i, t in enumerate(ids) if t not in tok.all_special_ids]
        k = max(1, round(0.15 * len(candidates)))
        positions = np.sort(rng.choice(candidates, size=k, replace=False))
        labels = ids[positions].copy()
        ids[positions] = tok.mask_token_id
        sequences.append({"input_ids": ids, "masked_positions": positions, "masked_labels": labels,
                          "type_boundary": boundary, "next_sentence_label": label})
    write_rows(writer, sequences)
    writer.close()
    (out / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, out / "tokenizer" / name)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (out / "tokenizer" / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    special = {"pad": tok.pad_token_id, "unk": tok.unk_token_id, "cls": tok.cls_token_id, "sep": tok.sep_token_id,
               "mask": tok.mask_token_id}
    made_with = {"tokenizer": {"path": str(model_dir), "hash": tokenizer_hash(out / "tokenizer")}}
    artifacts.write_manifest(out, "masked", MaskConfig(input="pairs", output=str(out)), stats={}, inputs=made_with,
                             extra={"special_token_ids": special, "max_seq_length": 40, "vocab_size": len(tok),
                                    "token_dtype": dtype.name, "nsp": True})
    return out


def test_evaluate_matches_transformers_own_loss(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from transformers import BertForPreTraining

    n = len(STORY)
    rows = [(STORY[k], STORY[(k + 1) % n], 0) for k in range(n)] + [(STORY[k], STORY[(k + 3) % n], 1) for k in range(n)]
    data = _masked_artifact(tmp_path / "masked", tiny_bert, rows)
    metrics = json_lines(ok(["evaluate", "--model", str(tiny_bert), "--data", str(data), "--json",
                               "--batch-size", "5"]).stdout)[0]
    assert set(metrics) >= {"mlm_loss", "mlm_accuracy", "perplexity", "nsp_accuracy"}

    # The reference: BertForPreTraining's own full-vocabulary loss, one unpadded sequence at a time.
    from bertcli.shards import ShardedArrays

    model = BertForPreTraining.from_pretrained(tiny_bert).eval()
    total, count, correct, nsp_correct = 0.0, 0, 0, 0
    arrays = ShardedArrays(data)
    for r in (arrays[i] for i in range(len(arrays))):
        ids = torch.tensor(np.asarray(r["input_ids"], dtype=np.int64))[None]
        types = torch.zeros_like(ids)
        types[0, int(r["type_boundary"]):] = 1
        labels = torch.full_like(ids, -100)
        labels[0, torch.tensor(np.asarray(r["masked_positions"], dtype=np.int64))] = torch.tensor(
            np.asarray(r["masked_labels"], dtype=np.int64))
        with torch.no_grad():
            out = model(input_ids=ids, token_type_ids=types)
        logits = out.prediction_logits[0][labels[0] != -100]
        target = labels[0][labels[0] != -100]
        total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        count += len(target)
        correct += int((logits.argmax(-1) == target).sum())
        nsp_correct += int(out.seq_relationship_logits.argmax(-1).item() == int(r["next_sentence_label"]))
    assert metrics["masked_tokens"] == count
    assert metrics["mlm_loss"] == pytest.approx(total / count, rel=1e-4)
    assert metrics["mlm_accuracy"] == pytest.approx(correct / count)
    assert metrics["perplexity"] == pytest.approx(np.exp(total / count), rel=1e-4)
    assert metrics["nsp_accuracy"] == pytest.approx(nsp_correct / len(rows))
    assert metrics["nsp_accuracy"] >= 0.75 and metrics["mlm_accuracy"] >= 0.5  # the model did learn the story

    human = ok(["evaluate", "--model", str(tiny_bert), "--data", str(data)]).stdout
    assert "mlm_accuracy" in human and "perplexity" in human


def test_evaluate_refuses_data_of_another_tokenizer(tiny_bert: Path, tmp_path: Path) -> None:
    # The same size and special tokens, two ordinary tokens swapped: data made with it means something else.
    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    spec = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.__getitem__)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    data = _masked_artifact(tmp_path / "masked", other, [(STORY[0], STORY[1], 0)])
    _, hint = refused_with_hint(["evaluate", "--model", str(tiny_bert), "--data", str(data)],
                                "made with another tokenizer")
    # The fix names the model's own tokenizer, not "the tokenizer you train with".
    assert hint == (f"hint: make the data with the model's tokenizer: `bert pairs --tokenizer {tiny_bert}` "
                    "(then `bert mask`, for static masks)")
    fails(["evaluate", "--model", str(tiny_bert), "--data", str(tmp_path / "nothing")], "does not exist")


# ---------------------------------------------------------------- model directories


def test_bad_model_directories(tiny_bert: Path, tmp_path: Path) -> None:
    fails(["fill-mask", "--model", str(tmp_path / "missing"), "a [MASK]"], "does not exist")

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_bert, no_weights)
    (no_weights / "model.safetensors").unlink()
    fails(["fill-mask", "--model", str(no_weights), "a [MASK]"], "has no weights")

    not_bert = tmp_path / "gpt2"
    shutil.copytree(tiny_bert, not_bert)
    config = json.loads((not_bert / "config.json").read_text())
    config["model_type"] = "gpt2"
    (not_bert / "config.json").write_text(json.dumps(config))
    fails(["predict-nsp", "--model", str(not_bert), "--first", "a", "--second", "b"], "gpt2 model, not BERT")

    no_config = tmp_path / "empty"
    no_config.mkdir()
    fails(["embed", "--model", str(no_config), "--word", "a", "a"], "no config.json")

    weights_file = no_weights / "config.json"
    fails(["fill-mask", "--model", str(weights_file), "a [MASK]"], "is a file, expected a model directory")
    bad_json = tmp_path / "bad-json"
    shutil.copytree(tiny_bert, bad_json)
    (bad_json / "config.json").write_text("{not json")
    fails(["fill-mask", "--model", str(bad_json), "a [MASK]"], "config.json: not valid JSON")
    for model in (weights_file, bad_json):  # each refusal says what to do
        assert "\nhint: " in runner.invoke(app, ["fill-mask", "--model", str(model), "a [MASK]"]).stderr

    cut_short = tmp_path / "cut-short"  # a copy or download that stopped part-way
    shutil.copytree(tiny_bert, cut_short)
    (cut_short / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes()[:1000])
    _, hint = refused_with_hint(["fill-mask", "--model", str(cut_short), "a [MASK]"], "cannot load the weights")
    assert "copy or download the model directory again" in hint

    fails(["fill-mask", "--model", str(tiny_bert), "--device", "cuda:7", "a [MASK]"], "cuda")


def test_a_model_without_the_nsp_head_is_refused_for_nsp(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM

    mlm_only = tmp_path / "mlm-only"
    BertForMaskedLM.from_pretrained(tiny_bert).save_pretrained(mlm_only)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(mlm_only)
    fails(["predict-nsp", "--model", str(mlm_only), "--first", "a", "--second", "b"], "no next-sentence")
    out = ok(["fill-mask", "--model", str(mlm_only), "--json", "the cat [MASK] on the mat ."]).stdout
    assert json_lines(out)[0]["masks"][0]["predictions"][0]["token"] == "sat"


def test_a_run_directory_means_its_final_checkpoint(tiny_bert: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    fails(["fill-mask", "--model", str(run), "a [MASK]"], "no final/ checkpoint")
    shutil.copytree(tiny_bert, run / "final")
    out = ok(["fill-mask", "--model", str(run), "--json", "the cat [MASK] on the mat ."]).stdout
    assert json_lines(out)[0]["masks"][0]["predictions"][0]["token"] == "sat"


def test_fill_mask_example_masks_a_whole_word_of_a_corpus_sentence_in_its_language(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bertcli.tools.predict import fill_mask_example

    corpus = tmp_path / "ko.txt"
    skipped = ['짧은 문장.', '"따옴표가 있는 문장은 셸 명령에 넣을 수 없습니다."',
               "느낌표가 있는 문장은 안 됩니다 정말로!", "- 목록의 항목은 옵션으로 읽히므로 쓰지 않습니다.",
               "it's a sentence the apostrophe would cut in two"]
    sentence = "문서의 모든 수식을 지금 다시 계산합니다 그리고 저장합니다."
    chinese_sentence = "北京是中国的首都，也是一座历史悠久的城市。"
    corpus.write_text("\n".join([*skipped, sentence, chinese_sentence]) + "\n", encoding="utf-8")
    tok = tmp_path / "tok"  # trained on both sentences; the prompts below come from one of them at a time
    assert runner.invoke(app, ["train-vocab", "--input", str(corpus), "--output", str(tok),
                               "--set", "vocab_size=300", "--set", "min_frequency=1"]).exit_code == 0
    keys = SimpleNamespace(input=[str(corpus)], layout="sentence-per-line", format="auto", text_field="text",
                           language="auto")
    # Too short, quoted, with "!" (history expansion), a leading "-" (an option), an apostrophe: passed over; in
    # the sentence left, a word that is one piece is masked.
    corpus.write_text("\n".join([*skipped, sentence]) + "\n", encoding="utf-8")
    prompt = fill_mask_example(keys, tok)
    assert prompt is not None and prompt.count("[MASK]") == 1
    head, tail = prompt.split("[MASK]")
    assert sentence.startswith(head) and sentence.endswith(tail)
    word = sentence[len(head): len(sentence) - len(tail)]
    assert word in sentence.split() and word.isalpha()
    # Chinese has no spaces: a single ideograph is a word of its own.
    corpus.write_text("\n".join([*skipped, chinese_sentence]) + "\n", encoding="utf-8")
    chinese = fill_mask_example(keys, tok)
    assert chinese is not None and len(chinese) == len(chinese_sentence) + len("[MASK]") - 1
    corpus.write_text("짧은 문장.\n", encoding="utf-8")
    assert fill_mask_example(keys, tok) is None
    corpus.unlink()  # gone after the run: no prompt, and no error
    assert fill_mask_example(keys, tok) is None


def test_fill_mask_example_asks_for_a_word_the_corpus_uses_often(tmp_path: Path, monkeypatch) -> None:
    """The masked word is the one the first sentences use most (outside the most common pieces), so that a model
    trained on the corpus has seen it in many contexts; a full sentence is preferred to a fragment."""
    from types import SimpleNamespace

    from bertcli.tools import predict
    from bertcli.vocab import load_tokenizer

    lines = ["harbour harbour harbour, see also harbour.",  # the most of it, but a fragment
             "Ships wait outside harbour walls until morning tides rise over grey stones.",
             "Fishermen mend nets near harbour steps before sunrise on cold winter days.",
             "Gulls circle above harbour cranes while tired workers unload heavy wooden crates."]
    corpus = tmp_path / "en.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = tmp_path / "tok"
    assert runner.invoke(app, ["train-vocab", "--input", str(corpus), "--output", str(tok),
                               "--set", "vocab_size=400", "--set", "min_frequency=1"]).exit_code == 0
    assert load_tokenizer(tok).tokenizer.encode("harbour", add_special_tokens=False).tokens == ["harbour"]
    keys = SimpleNamespace(input=[str(corpus)], layout="sentence-per-line", format="auto", text_field="text",
                           language="auto")
    monkeypatch.setattr(predict, "COMMON_PIECES", 0)  # a corpus this small has no "the" to leave out
    assert predict.fill_mask_example(keys, tok) == lines[1].replace("harbour", "[MASK]")


def test_fill_mask_lines_align_for_wide_characters() -> None:
    # The token column was padded by characters: a Hangul answer (two terminal columns a character) pushed its
    # filled-in text 2 columns right of the others'.
    import unicodedata

    from bertcli.tools.predict import format_fill_mask

    preds = [{"probability": 0.5, "token": token, "sequence": "x"} for token in ("사진", "photo", "##을")]
    lines = format_fill_mask([{"mask_index": 0, "position": 1, "predictions": preds}], "[MASK]").splitlines()

    def columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    assert len({columns(line) for line in lines}) == 1, lines
