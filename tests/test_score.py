"""`bert score`: pseudo-log-likelihoods against a straightforward computation, minimal pairs, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bert_tiny import STORY
from bertcli.pll import masking_plan, minimal_pair_accuracy
from cli_helpers import app, fails, json_lines, last_json, ok, runner
from plain_bert import save_plain

# One torch thread: on a shared 2-core machine two busy-waiting threads run these tiny models many times slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
PAIRS = DATA / "minimal-pairs.jsonl"
# Out-of-vocabulary words become [UNK], "mats" two pieces (mat ##s): both must be scored like any other piece.
TEXTS = [*STORY[:3], "the cats sat on the big mats .", "python zebra ."]


def reference_pll(model, tokenizer, text: str, variant: str = "original") -> float:
    """The straightforward computation, as the public MLM-scoring packages do it: one sentence at a time, a copy per
    scored token with that token (word_l2r: and the rest of its word) masked, the full MLM logits of every copy."""
    import torch

    enc = tokenizer(text, return_special_tokens_mask=True)
    ids, special, words = enc["input_ids"], enc["special_tokens_mask"], enc.word_ids()
    positions = [t for t in range(len(ids)) if not special[t]]
    copies = []
    for t in positions:
        row = list(ids)
        for u in positions:
            if u == t or (variant == "word_l2r" and u > t and words[u] == words[t]):
                row[u] = tokenizer.mask_token_id
        copies.append(row)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(copies))
        logits = out.logits if hasattr(out, "logits") else out.prediction_logits  # (n, T, V)
        log_probs = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(log_probs[k, t, ids[t]]) for k, t in enumerate(positions))


@pytest.mark.parametrize("variant", ["original", "word_l2r"])
def test_score_equals_straightforward_pll(tiny_bert: Path, variant: str) -> None:
    from transformers import AutoTokenizer, BertForPreTraining

    model = BertForPreTraining.from_pretrained(tiny_bert).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    # Batches of 3 copies cut sentences apart and mix lengths: the sums must not depend on it.
    for batch_size in ("3", "256"):
        rows = json_lines(
            ok(["score", "--model", str(tiny_bert), "--json", "--variant", variant, "--batch-size", batch_size,
                 *TEXTS]).stdout
        )
        assert [r["text"] for r in rows] == TEXTS
        for row, text in zip(rows, TEXTS):
            expected = reference_pll(model, tokenizer, text, variant)
            assert row["pll"] == pytest.approx(expected, abs=1e-5)
            n = len(tokenizer(text)["input_ids"]) - 2
            assert row["tokens"] == n
            assert row["pseudo_perplexity"] == pytest.approx(math.exp(-expected / n), rel=1e-5)


def test_word_l2r_differs_only_on_multi_piece_words(tiny_bert: Path) -> None:
    def pll(variant: str, text: str) -> float:
        (row,) = json_lines(ok(["score", "-m", str(tiny_bert), "--json", "--variant", variant, text]).stdout)
        return row["pll"]

    assert pll("original", STORY[0]) == pytest.approx(pll("word_l2r", STORY[0]), abs=1e-6)
    assert pll("original", "the cat sat on the mats .") != pytest.approx(pll("word_l2r", "the cat sat on the mats ."))


def test_score_plain_transformers_masked_lm_and_input_file(plain_mlm: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(plain_mlm).eval()
    tokenizer = AutoTokenizer.from_pretrained(plain_mlm)
    text_file = tmp_path / "sentences.txt"
    text_file.write_text("\n".join(TEXTS[:2]) + "\n\n" + TEXTS[3] + "\n", encoding="utf-8")
    rows = json_lines(ok(["score", "--model", str(plain_mlm), "--input", str(text_file), "--json"]).stdout)
    assert [r["text"] for r in rows] == [TEXTS[0], TEXTS[1], TEXTS[3]]
    for row in rows:
        assert row["pll"] == pytest.approx(reference_pll(model, tokenizer, row["text"]), abs=1e-5)
    header, human = ok(["score", "--model", str(plain_mlm), TEXTS[0]]).stdout.strip("\n").splitlines()
    assert header.split() == ["pll", "pseudo-ppl", "text"]
    assert human.endswith(TEXTS[0]) and f"{rows[0]['pll']:.3f}" in human


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_pll_takes_a_bert_for_masked_lm_object(plain_mlm: Path, tmp_path: Path, layers: int) -> None:
    # BertForMaskedLM's encoder has no pooler, BertForPreTraining's has: the scorer must need neither. One layer is
    # first and last at once, three have one in the middle.
    from transformers import AutoTokenizer, BertForMaskedLM

    from bertcli.pll import pseudo_log_likelihoods

    path = plain_mlm if layers == 2 else save_plain(tmp_path / "mlm", num_hidden_layers=layers)
    model = BertForMaskedLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(TEXTS, return_special_tokens_mask=True)
    plans = [masking_plan([m == 0 for m in mask]) for mask in enc["special_tokens_mask"]]
    plls = pseudo_log_likelihoods(model.bert, model.cls.predictions, enc["input_ids"], plans,
                                  tokenizer.mask_token_id, tokenizer.pad_token_id, batch_size=4)
    for pll, text in zip(plls, TEXTS):
        assert pll == pytest.approx(reference_pll(model, tokenizer, text), abs=1e-5)


def test_masking_plan() -> None:
    scored = [False, True, True, True, True, False]
    words = [None, 0, 1, 1, 1, None]  # [CLS] the sou ##vl ##aki [SEP]
    assert masking_plan(scored, words, "original") == [(1, (1,)), (2, (2,)), (3, (3,)), (4, (4,))]
    assert masking_plan(scored, words, "word_l2r") == [(1, (1,)), (2, (2, 3, 4)), (3, (3, 4)), (4, (4,))]


def test_minimal_pair_accuracy_tie_counts_half_and_mean_over_groups() -> None:
    # Group a: 1 win, 1 tie, 1 loss → 0.5; group b: 1 win → 1.0. Mean over groups 0.75 (over pairs: 0.625).
    result = minimal_pair_accuracy([-1.0, -2.0, -5.0, -1.0], [-2.0, -2.0, -1.0, -3.0], ["a", "a", "a", "b"])
    assert result["per_group"] == {"a": {"accuracy": 0.5, "pairs": 3}, "b": {"accuracy": 1.0, "pairs": 1}}
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["pairs"] == 4 and result["groups"] == 2


def test_score_pairs_groups_and_summary(tiny_bert: Path) -> None:
    out = json_lines(ok(["score", "--model", str(tiny_bert), "--pairs", str(PAIRS), "--json"]).stdout)
    *rows, summary = out
    assert len(rows) == summary["pairs"] == 9
    assert summary["group_by"] == "UID" and summary["groups"] == 3
    assert set(summary["per_group"]) == {"animate_subject", "verb_position", "determiner_position"}
    for group, result in summary["per_group"].items():
        mine = [r for r in rows if r["group"] == group]
        wins = sum(1.0 if r["pll_good"] > r["pll_bad"] else 0.5 if r["pll_good"] == r["pll_bad"] else 0.0 for r in mine)
        assert result == {"accuracy": pytest.approx(wins / len(mine)), "pairs": len(mine)}
    groups = summary["per_group"].values()
    assert summary["accuracy"] == pytest.approx(sum(g["accuracy"] for g in groups) / 3)
    by_field = json_lines(
        ok(["score", "-m", str(tiny_bert), "--pairs", str(PAIRS), "--json", "--group-by", "field"]).stdout
    )
    assert set(by_field[-1]["per_group"]) == {"semantics", "syntax"}
    human = ok(["score", "--model", str(tiny_bert), "--pairs", str(PAIRS)]).stdout
    assert "mean over 3 group(s)" in human and "verb_position" in human


def test_identical_sentences_tie(tiny_bert: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "tie.jsonl"
    # The same sentence twice, among others of other lengths: bit-equal scores, half a point.
    lines = [{"sentence_good": STORY[2], "sentence_bad": STORY[2]},
             {"sentence_good": STORY[0], "sentence_bad": STORY[4]}]
    pairs.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    *rows, summary = json_lines(
        ok(["score", "-m", str(tiny_bert), "--pairs", str(pairs), "--json", "--batch-size", "5"]).stdout
    )
    assert rows[0]["pll_good"] == rows[0]["pll_bad"]
    assert summary["group_by"] is None and list(summary["per_group"]) == ["all"]
    second = 1.0 if rows[1]["pll_good"] > rows[1]["pll_bad"] else 0.0
    assert summary["accuracy"] == pytest.approx((0.5 + second) / 2)


def test_score_bad_inputs(tiny_bert: Path, tmp_path: Path) -> None:
    model = ["score", "--model", str(tiny_bert)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"sentence_good": "the cat .", "sentence_bad": "cat the ."}\n{"sentence_good": "the dog ."}\n')
    fails([*model, "--pairs", str(pairs)], f"{pairs}:2", "sentence_bad")
    pairs.write_text('{"sentence_good": "the cat .", "sentence_bad": "  "}\n')
    fails([*model, "--pairs", str(pairs)], f"{pairs}:1", "empty")
    pairs.write_text('{"sentence_good": "the cat .", "sentence_bad": 3}\n')
    fails([*model, "--pairs", str(pairs)], f"{pairs}:1", "not a string")
    pairs.write_text('{"sentence_good": "the cat .", "sentence_bad": "cat the .", "UID": "x"}\nnot json\n')
    fails([*model, "--pairs", str(pairs)], f"{pairs}:2", "not valid JSON")
    pairs.write_text('{"sentence_good": "the cat .", "sentence_bad": "cat the .", "UID": "x"}\n'
                     '{"sentence_good": "the cat .", "sentence_bad": "cat the ."}\n')
    fails([*model, "--pairs", str(pairs), "--group-by", "UID"], f"{pairs}:2", "'UID'")
    # JSON that parses into no Python value, or into text that is no Unicode: named, not a traceback (exit 1).
    for name, line in (("bigint", '{"sentence_good": "a", "sentence_bad": "b", "n": ' + "9" * 5000 + "}"),
                       ("deep", "[" * 100_000 + "]" * 100_000)):
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(line + "\n")
        fails([*model, "--pairs", str(bad)], f"{bad}:1", "too deeply nested or with a number too long")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"sentence_good": "the cat \\ud800 .", "sentence_bad": "cat the ."}\n')
    fails([*model, "--pairs", str(surrogate)], f"{surrogate}:1", "not a character")
    fails([*model, "the cat \udcff sat"], "text 1", "not a character")  # bytes not UTF-8 in argv
    utf16 = tmp_path / "sentences.txt"  # through text_lines: named as UTF-16, as the corpus reader names it
    utf16.write_text("the cat sat .\nthe dog ran .\n", encoding="utf-16")
    fails([*model, "--input", str(utf16)], f"{utf16}: is UTF-16 text; bertcli reads UTF-8")
    utf16.write_bytes("the cat sat on the mat .\nthe dog ran to the park .\n".encode("utf-16-le"))  # no mark
    fails([*model, "--input", str(utf16)], f"{utf16}: is UTF-16 text; bertcli reads UTF-8")
    utf16.write_bytes("the cat sat .\n".encode("utf-16-le"))  # 28 bytes: it was read, NUL after every letter
    fails([*model, "--input", str(utf16)], f"{utf16}: is UTF-16 text; bertcli reads UTF-8")
    null_group = tmp_path / "null-group.jsonl"
    null_group.write_text('{"sentence_good": "the cat .", "sentence_bad": "cat the .", "UID": null}\n')
    fails([*model, "--pairs", str(null_group), "--group-by", "UID"], f"{null_group}:1", "not a group name")
    fails([*model, "--pairs", str(tmp_path)], "is a directory")
    fails([*model, "--pairs", str(tmp_path / "missing.jsonl")], "does not exist")
    fails([*model, "   "], "text 1 is empty")
    fails([*model, " ".join(["the cat"] * 30)], "text 1", "positions")
    fails([*model, " ".join(["the cat"] * 30), "a b", " ".join(["the cat"] * 30)], "text 1", "positions",
          "and 1 more sentences")
    fails([*model, "a " * 100_000], "text 1 has", "+ tokens")  # cut before the tokenizer reads it all
    fails(model, "give sentences")
    fails([*model, "the cat", "--input", str(pairs)], "not TEXT and --input")
    fails([*model, "the cat", "--variant", "l2r"], "--variant")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails([*model, "--input", str(empty)], str(empty), "no sentences")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n\n")  # not empty, but no sentence on any line
    fails([*model, "--input", str(blank)], str(blank), "every line is blank")
    long_line = tmp_path / "long.txt"
    long_line.write_text("the cat .\n" + " ".join(["the cat"] * 30) + "\n")
    refused = runner.invoke(app, [*model, "--input", str(long_line)])
    assert refused.exit_code == 2 and f"{long_line}:2" in refused.stderr
    assert refused.stdout == ""  # not even the column header: a redirected output is not left half-written


def test_scoring_in_chunks_gives_the_same_scores(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    # A file is scored CHUNK_TEXTS lines at a time (memory bounded by a chunk); the chunks must not change a score
    # beyond float rounding, nor a tie, and a bad line anywhere is refused before any score is printed.
    from bertcli.tools import score as tool

    lines = [s.strip() for s in STORY] * 3
    text = tmp_path / "s.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"sentence_good": a, "sentence_bad": b, "UID": str(i % 2)}) + "\n"
                             for i, (a, b) in enumerate(zip(lines, [*lines[1:], lines[0]]))), encoding="utf-8")
    whole = json_lines(ok(["score", "-m", str(tiny_bert), "-i", str(text), "--json"]).stdout)
    whole_pairs = json_lines(ok(["score", "-m", str(tiny_bert), "--pairs", str(pairs), "--json"]).stdout)
    monkeypatch.setattr(tool, "CHUNK_TEXTS", 4)
    chunked = json_lines(ok(["score", "-m", str(tiny_bert), "-i", str(text), "--json"]).stdout)
    chunked_pairs = json_lines(ok(["score", "-m", str(tiny_bert), "--pairs", str(pairs), "--json"]).stdout)
    assert [r["text"] for r in chunked] == lines
    for a, b in zip(whole, chunked):
        assert a["pll"] == pytest.approx(b["pll"], abs=1e-5) and a["tokens"] == b["tokens"]
    assert whole_pairs[-1]["accuracy"] == chunked_pairs[-1]["accuracy"]
    assert len(chunked_pairs) == len(lines) + 1
    text.write_text("\n".join(lines) + "\n" + " ".join(["the cat"] * 40) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["score", "-m", str(tiny_bert), "-i", str(text), "--json"])
    assert result.exit_code == 2 and result.stdout == "" and f"{text}:{len(lines) + 1} has" in result.stderr


def test_the_default_grouping_is_a_key_of_every_pair(tiny_bert: Path, tmp_path: Path) -> None:
    # The first pair without UID used to group the whole file by linguistics_term; a later one without it used to
    # refuse the file. The order of the lines must not decide.
    pair = {"sentence_good": "the cat sat .", "sentence_bad": "cat the sat ."}
    rows = [{**pair, "UID": "u1", "linguistics_term": "t"}, {**pair, "UID": "u2", "linguistics_term": "t"},
            {**pair, "linguistics_term": "t"}]
    summaries = []
    for order in (rows, rows[::-1]):
        path = tmp_path / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in order))
        summaries.append(last_json(ok(["score", "-m", str(tiny_bert), "--pairs", str(path), "--json"]).stdout))
    assert [s["group_by"] for s in summaries] == ["linguistics_term", "linguistics_term"]
    assert summaries[0]["groups"] == 1 and summaries[0]["accuracy"] == summaries[1]["accuracy"]


def test_text_of_unknown_tokens_is_warned_about(tiny_bert: Path) -> None:
    result = ok(["score", "-m", str(tiny_bert), "ꙮꙮ ꙮ ꙮꙮꙮ ꙮ ꙮꙮ", "the cat sat ."])  # 5 of 9 tokens
    assert "warning: " in result.stderr and "of the text's tokens are [UNK]" in result.stderr
    assert "[UNK]" not in ok(["score", "-m", str(tiny_bert), "the cat sat ."]).stderr


def test_score_refuses_a_model_without_mlm_head(tmp_path: Path) -> None:
    classifier = save_plain(tmp_path / "classifier", "classifier")
    fails(["score", "--model", str(classifier), "the cat ."], "masked-LM head")


def test_score_reads_the_text_field_of_a_labelled_file(tiny_bert: Path, tmp_path: Path) -> None:
    """A .tsv, .csv or .jsonl --input is read by field, as `bert predict` reads it: its raw lines would score the
    header and the JSON syntax."""
    model = ["score", "--model", str(tiny_bert), "--json"]
    texts = [STORY[0], STORY[1]]
    direct = [row["pll"] for row in json_lines(ok([*model, *texts]).stdout)]
    tsv = tmp_path / "s.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\tgood\n" for t in texts), encoding="utf-8")
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    for path, extra in ((tsv, []), (jsonl, ["--text-field", "body"])):
        rows = json_lines(ok([*model, "--input", str(path), *extra]).stdout)
        assert [row["text"] for row in rows] == texts
        assert all(abs(row["pll"] - want) < 1e-5 for row, want in zip(rows, direct))
    fails([*model, "--input", str(jsonl)], f"{jsonl}:1", "no field 'sentence' or 'text'")
    fails([*model, "--input", str(tsv), "--text-field", "nope"], f"{tsv}:2", "no field 'nope'")
    txt = tmp_path / "s.txt"
    txt.write_text("\n".join(texts) + "\n", encoding="utf-8")
    fails([*model, "--input", str(txt), "--text-field", "body"], "is a text file")
    fails([*model, "--text-field", "body", STORY[0]], "--text-field names a field of an --input file")
