"""`bert finetune` and `bert predict`: end to end on tiny models, determinism, early stopping, bad inputs, metrics."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from bertcli.classification import classification_metrics, label_order
from cli_helpers import app, fails, json_lines, last_json, ok, refused_with_hint, runner

# One torch thread: on a shared 2-core machine two busy-waiting threads run these tiny models many times slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
TRAIN = DATA / "topic-train.tsv"  # sentence<TAB>label, animal / thing
DEV = DATA / "topic-dev.csv"  # id,sentence,label
PAIRS = DATA / "same-subject.jsonl"  # text, hypothesis, label 0/1
TRAIN_TEXT = DATA / "en_tiny.txt"  # corpus text, for a tokenizer artifact
# A small model learns fast with a large learning rate; few examples make small batches.
FAST = ["--set", "learning_rate=2e-3", "--set", "batch_size=8", "--set", "warmup_fraction=0"]


def test_finetune_end_to_end_and_predict(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, pipeline

    out = tmp_path / "clf"
    args = ["finetune", "--model", str(tiny_bert), "--train", str(TRAIN), "--dev", str(DEV), "--output", str(out),
            "--seeds", "3", "--set", "max_epochs=6", *FAST, "--json"]
    summary = last_json(ok(args).stdout)
    seeds = summary["seeds"]
    assert [s["seed"] for s in seeds] == [42, 43, 44]
    for key in ("dev_accuracy", "dev_macro_f1", "dev_mcc"):
        assert summary[key] == pytest.approx(statistics.median(s[key] for s in seeds))
    best = max(seeds, key=lambda s: s["dev_accuracy"])
    assert summary["best_seed"] == best["seed"]
    assert best["dev_accuracy"] >= 0.75  # the topic is one word of the sentence: it must be learnt

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "finetune" and manifest["seed"] == 42 and manifest["config_hash"]
    assert manifest["inputs"]["train"]["sha256"] and manifest["inputs"]["dev"]["sha256"]
    assert manifest["stats"]["labels"] == ["animal", "thing"] and manifest["stats"]["train_examples"] == 40
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["seed"] for r in lines} == {42, 43, 44} and all("dev_mcc" in r for r in lines)

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "animal", 1: "thing"} and model.config.label2id == {"animal": 0, "thing": 1}
    texts = ["the big dog ran in the park .", "the green tea is on the mat ."]
    classify = pipeline("text-classification", model=str(out), device="cpu")
    expected = classify(texts)
    rows = json_lines(ok(["predict", "--model", str(out), "--json", *texts]).stdout)
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    for row, e in zip(rows, expected):
        assert row["probability"] == pytest.approx(e["score"], abs=1e-5)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    # The dev file through --input: its id and label columns are ignored, its sentence column read.
    file_rows = json_lines(ok(["predict", "--model", str(out), "--input", str(DEV), "--json"]).stdout)
    assert len(file_rows) == 16
    human = ok(["predict", "--model", str(out), texts[0]]).stdout
    assert human.startswith(rows[0]["label"] + "\t") and texts[0] in human
    # The saved tokenizer truncates to the model's positions, so the library's own pipeline takes a long text.
    positions = model.config.max_position_embeddings
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == positions
    assert classify(" ".join(["dog"] * (2 * positions)), truncation=True)[0]["label"] in ("animal", "thing")


def test_finetune_and_score_take_a_pretrain_run_directory(tiny_tokenizer, tiny_corpus, tmp_path, monkeypatch) -> None:
    from bertcli.schemas import ModelConfig, PretrainConfig
    from bertcli.stages import pretrain
    from pretrain_fixtures import make_artifact

    monkeypatch.setattr(pretrain, "_plot", lambda out: None)  # matplotlib costs seconds
    data = make_artifact(tmp_path / "masked", tiny_tokenizer, tiny_corpus, num_sequences=40)
    run = tmp_path / "run"
    model = ModelConfig(preset=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    pretrain.run(PretrainConfig(data=str(data), output=str(run), model=model, max_steps=2, batch_size=8,
                                micro_batch_size=8, warmup_steps=0, eval_every=0, save_every=0, seed=1))
    out = tmp_path / "clf"
    summary = last_json(ok(["finetune", "--model", str(run), "--train", str(TRAIN), "--dev", str(DEV), "--output",
                              str(out), "--set", "max_epochs=1", *FAST, "--json"]).stdout)
    assert summary["labels"] == ["animal", "thing"]
    assert json.loads((out / "manifest.json").read_text())["inputs"]["model"]["path"] == str(run / "final")
    assert json.loads((run / "final" / "tokenizer_config.json").read_text())["model_max_length"] == 64
    fails(["inspect", str(run / "final")], "is a checkpoint of a pretraining run")  # was: "did not finish"
    (row,) = json_lines(ok(["score", "--model", str(run), "--json", "The cat sat on the mat."]).stdout)
    assert row["pll"] < 0 and row["tokens"] > 0

    # The run given as a fine-tune's output by mistake: refused even with --overwrite, the run and a note of the
    # user's in it kept (its manifest lists no files, and it is another stage's output).
    (run / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    fails(["finetune", "--model", str(run), "--train", str(TRAIN), "--output", str(run / "final"), "--overwrite"],
          "is the input")
    other = tmp_path / "run-copy"
    shutil.copytree(run, other)
    refused_with_hint(["finetune", "--model", str(run), "--train", str(TRAIN), "--output", str(other),
                       "--overwrite"], "holds a pretrain artifact, which finetune does not replace")
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*")) == before
    # ...and the other way round: a pretraining run over the fine-tuned model is refused, not cleared
    fails(["pretrain", "--data", str(data), "--output", str(out), "--overwrite", "--set", "max_steps=1"],
          "not a bertcli run")
    assert (out / "model.safetensors").is_file()


def test_finetune_is_deterministic_per_seed(tiny_bert: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        ok(["finetune", "-m", str(tiny_bert), "--train", str(TRAIN), "--output", str(out), "--set", "max_epochs=2",
             *FAST, "--set", "classifier_dropout=0.3"])
        metrics = [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"}
                   for x in (out / "metrics.jsonl").read_text().splitlines()]
        outputs.append((metrics, (out / "model.safetensors").read_bytes()))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_weights(tiny_bert: Path, tmp_path: Path, precision: str) -> None:
    """bf16/fp16 autocast (what `precision: auto` picks on a GPU) on the CPU's autocast: the run learns, the saved
    weights stay fp32, the manifest says which precision and why, and the result differs from fp32's (autocast was
    really on). fp16 goes through the gradient scaler."""
    from safetensors.torch import load_file

    runs = {}
    for name in ("fp32", precision):
        out = tmp_path / name
        summary = last_json(ok(["finetune", "-m", str(tiny_bert), "--train", str(TRAIN), "--dev", str(DEV), "-o",
                                str(out), "--set", f"precision={name}", "--set", "max_epochs=4", *FAST,
                                "--json"]).stdout)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["stats"]["precision"] == name
        assert manifest["stats"]["precision_reason"] == f"precision: {name} as configured"
        weights = load_file(out / "model.safetensors")
        assert {w.dtype for w in weights.values()} == {torch.float32}
        assert all(torch.isfinite(w).all() for w in weights.values())
        runs[name] = (summary, weights)
    assert runs[precision][0]["dev_accuracy"] >= 0.75  # the topic word is learnt in low precision too
    fp32_w, low_w = runs["fp32"][1], runs[precision][1]
    assert any(not torch.equal(fp32_w[k], low_w[k]) for k in fp32_w)


def test_finetune_pairs_integer_labels_held_out_dev_plain_bert(plain_mlm: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    summary = last_json(ok([
        "finetune", "--model", str(plain_mlm), "--train", str(PAIRS), "--output", str(out), "--json",
        "--set", "text_pair_field=hypothesis", "--set", "dev_fraction=0.25", "--set", "max_epochs=1", *FAST,
    ]).stdout)
    assert summary["labels"] == ["0", "1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["dev_examples"] == 10 and manifest["stats"]["train_examples"] == 30
    assert "dev" not in manifest["inputs"] and manifest["text_pair_field"] == "hypothesis"
    rows = json_lines(ok(["predict", "--model", str(out), "--input", str(PAIRS), "--json"]).stdout)
    first = json.loads(PAIRS.read_text().splitlines()[0])
    assert len(rows) == 40 and rows[0]["text"] == first["text"] and rows[0]["text_pair"] == first["hypothesis"]
    assert {r["label"] for r in rows} <= {"0", "1"}
    refused_with_hint(["predict", "--model", str(out), "the cat ."], "sentence pairs", "hypothesis")
    _, hint = refused_with_hint(["predict", "--model", str(out), "--input", str(TRAIN)], "no field 'hypothesis'")
    assert "pass --text-pair-field" in hint
    txt = tmp_path / "texts.txt"
    txt.write_text("the cat .\n", encoding="utf-8")
    refused_with_hint(["predict", "--model", str(out), "--input", str(txt)], "one text a line", "sentence pairs")


def test_predict_reads_text_files_other_fields_and_keeps_one_line_a_result(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "clf"
    result = ok(["finetune", "-m", str(tiny_bert), "--train", str(TRAIN), "-o", str(out), "--set", "max_epochs=1",
                 *FAST])
    assert f'try: bert predict --model {out} "TEXT"' in result.stdout
    texts = ["the big dog ran in the park .", "the green tea is on the mat ."]
    expected = [r["label"] for r in json_lines(ok(["predict", "-m", str(out), "--json", *texts]).stdout)]
    # One text a line (blank lines skipped), as `bert score --input` reads them.
    txt = tmp_path / "texts.txt"
    txt.write_text(f"{texts[0]}\n\n{texts[1]}\n", encoding="utf-8")
    rows = json_lines(ok(["predict", "-m", str(out), "-i", str(txt), "--json"]).stdout)
    assert [r["label"] for r in rows] == expected and [r["line"] for r in rows] == [1, 3]  # the blank line 2
    # A file whose column is named otherwise than the training file's.
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"phrase": t}) + "\n" for t in texts), encoding="utf-8")
    _, hint = refused_with_hint(["predict", "-m", str(out), "-i", str(renamed)], "no field 'sentence' or 'text'")
    assert "pass --text-field" in hint
    rows = json_lines(ok(["predict", "-m", str(out), "-i", str(renamed), "--text-field", "phrase", "--json"]).stdout)
    assert [r["label"] for r in rows] == expected
    refused_with_hint(["predict", "-m", str(out), "--text-field", "phrase", texts[0]], "--input")
    # A line break or tab inside a text stays inside its result's line.
    human = ok(["predict", "-m", str(out), "two\nlines\tand a tab\u2028and more"]).stdout
    assert len(human.splitlines()) == 1 and human.rstrip("\n").endswith("two\\nlines\\tand a tab\\u2028and more")
    refused_with_hint(["predict", "-m", str(out), "-i", str(renamed), "--text-pair-field", "phrase"],
                      "fine-tuned on single texts")
    # Long inputs: one warning line, counting them, not one line each.
    long_file = tmp_path / "long.txt"
    long_file.write_text("".join(" ".join(["dog"] * 60) + "\n" for _ in range(5)), encoding="utf-8")
    result = ok(["predict", "-m", str(out), "-i", str(long_file)])
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "5 of 5 inputs are longer than the model's 40 tokens" in warning and f"{long_file}:1" in warning
    assert len(result.stdout.splitlines()) == 5


def test_early_stopping_and_time_budget(tiny_bert: Path, tmp_path: Path) -> None:
    base = ["finetune", "-m", str(tiny_bert), "--train", str(TRAIN), "--dev", str(DEV), "--json", "--set",
            "batch_size=8"]
    # A learning rate too small to change a prediction: no epoch beats the first, patience 1 stops at epoch 2.
    (run,) = last_json(ok([*base, "-o", str(tmp_path / "p"), "--set", "learning_rate=1e-12", "--set",
                             "max_epochs=5", "--set", "patience=1"]).stdout)["seeds"]
    assert run["stopped"] == "patience" and run["epochs"] == 2 and run["best_epoch"] == 1
    (run,) = last_json(ok([*base, "-o", str(tmp_path / "t"), "--set", "time_budget_s=1e-6",
                             "--set", "max_epochs=50"]).stdout)["seeds"]
    assert run["stopped"] == "time_budget" and run["epochs"] == 1 and run["steps"] == 0


def _nothing_left(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before


def test_a_dev_set_of_one_class_is_warned_about(tiny_bert: Path, tmp_path: Path) -> None:
    dev = tmp_path / "animals.tsv"
    dev.write_text("sentence\tlabel\nthe python sat on the mat .\tanimal\nthe dog ran .\tanimal\n", encoding="utf-8")
    base = ["finetune", "--model", str(tiny_bert), "--train", str(TRAIN), *FAST, "--set", "max_epochs=1"]
    result = ok([*base, "--dev", str(dev), "--output", str(tmp_path / "one-class")])
    assert f"warning: the dev file {dev} has 2 example(s), all labelled 'animal'" in result.stderr
    assert "MCC is 0" in result.stderr
    # the default held-out tenth of the 40 training sentences holds both topics: no warning
    assert "warning: the dev" not in ok([*base, "--output", str(tmp_path / "split")]).stderr


def test_finetune_bad_inputs(tiny_bert: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    base = ["finetune", "--model", str(tiny_bert), "--output", str(out), *FAST, "--set", "max_epochs=1"]

    def bad(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    dev = bad("dev.tsv", "sentence\tlabel\nthe cat .\tanimal\nthe sun .\tmaybe\n")
    fails([*base, "--train", str(TRAIN), "--dev", str(dev)], f"{dev}:3", "'maybe'", "'label'")
    _nothing_left(work, set())
    fails([*base, "--train", str(bad("empty.csv", ""))], "empty.csv", "no examples")
    fails([*base, "--train", str(bad("header.tsv", "sentence\tlabel\n"))], "header.tsv", "no examples")
    fails([*base, "--train", str(bad("nolabel.tsv", "sentence\ttopic\nthe cat .\tanimal\n"))],
           "nolabel.tsv:2", "no field 'label'")
    fails([*base, "--train", str(bad("num.jsonl", '{"text": "the cat .", "label": 1}\n{"text": 7, "label": 0}\n'))],
           "num.jsonl:2", "'text'", "not a string")
    fails([*base, "--train", str(bad("one.jsonl", '{"text": "the cat .", "label": "a"}\n' * 5))], "two or more")
    fails([*base, "--train", str(bad("float.jsonl", '{"text": "a .", "label": 1.5}\n'))], "float.jsonl:1", "1.5")
    refused_with_hint([*base, "--train", str(bad("list.jsonl", '{"text": "a .", "label": ["a"]}\n'))], "list.jsonl:1")
    refused_with_hint([*base, "--train", str(bad("array.jsonl", '["a .", 1]\n'))], "array.jsonl:1", "JSON array")
    refused_with_hint([*base, "--train", str(bad("indented.json", '[\n  {"text": "a .", "label": 1}\n]\n'))],
                      "indented.json:1", "JSON array")
    # A quote opened and closed in the middle of a field merged two rows into one text, silently.
    unclosed = bad("unclosed.csv", 'sentence,label\n"the cat .",animal\n"the sun .,thing\n"the dog .",animal\n')
    refused_with_hint([*base, "--train", str(unclosed)], "unclosed.csv:3", "not valid CSV", "ends on line 4")
    # The last of two columns of one name was read, silently; a header is matched without its stray spaces.
    refused_with_hint([*base, "--train", str(bad("dup.tsv", "sentence\tlabel\tlabel\nthe cat .\tanimal\tx\n"))],
                      "dup.tsv:1", "'label' twice")
    refused_with_hint([*base, "--train", str(bad("nohead.tsv", "the cat .\tanimal\nthe sun .\tthing\n"))],
                      "nohead.tsv:2", "no field 'sentence' or 'text'", "the header line has: the cat .")
    # The default text field paired with itself: a pair task of one text twice.
    refused_with_hint([*base, "--train", str(TRAIN), "--set", "text_pair_field=sentence"],
                      "text_pair_field 'sentence' is also the text field")
    refused_with_hint([*base, "--train", str(tmp_path)], "is a directory")
    big = bad("big.jsonl", '{"text": "a .", "label": ' + "1" * 5000 + "}\n")
    refused_with_hint([*base, "--train", str(big)], "big.jsonl:1", "number too long")
    surrogate = bad("surrogate.jsonl", '{"text": "a .", "label": "x"}\n{"text": "b \\udc80 .", "label": "y"}\n')
    refused_with_hint([*base, "--train", str(surrogate)], "surrogate.jsonl:2", "'text'", "not a character")
    fails([*base, "--train", str(bad("cols.tsv", "sentence\tlabel\nthe cat .\tanimal\textra\n"))], "cols.tsv:2")
    # A short row was told to quote its commas; a file in the other separator failed on a field "not in" a header
    # that visibly held it.
    _, hint = refused_with_hint([*base, "--train", str(bad("short.csv", "sentence,label\nthe cat .\n"))],
                                "short.csv:2: 1 comma-separated column, the header has 2")
    assert hint == "hint: give every row all 2 columns (an empty value as a,,b)"
    tabs = bad("tabs.csv", "sentence\tlabel\nthe cat .\tanimal\n")
    _, hint = refused_with_hint([*base, "--train", str(tabs)], "tabs.csv:1: the header line is one column", "as CSV")
    assert hint.startswith("hint: the file looks like TSV: name it .tsv"), hint
    # Not UTF-8: which encoding it likely is, and how to convert it (both were "not UTF-8 text (invalid start byte)")
    utf16 = tmp_path / "utf16.tsv"
    utf16.write_text("sentence\tlabel\nthe cat .\tanimal\n", encoding="utf-16")
    _, hint = refused_with_hint([*base, "--train", str(utf16)], f"{utf16}: is UTF-16 text; bertcli reads UTF-8")
    assert "iconv -f UTF-16 -t UTF-8" in hint
    bare = tmp_path / "utf16le.csv"  # no byte-order mark: valid UTF-8, one NUL after every letter
    bare.write_bytes("sentence,label\nthe cat .,animal\nthe sun .,thing\n".encode("utf-16-le"))
    refused_with_hint([*base, "--train", str(bare)], f"{bare}: is UTF-16 text; bertcli reads UTF-8")
    binary = tmp_path / "sheet.csv"  # a spreadsheet's NULs fall on odd and even bytes alike: not called UTF-16
    binary.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200) + b"\xff" * 100)
    refused_with_hint([*base, "--train", str(binary)], f"{binary}:1: not UTF-8 text")
    cp949 = tmp_path / "cp949.tsv"
    cp949.write_bytes("sentence\tlabel\n좋아요 .\t긍정\n".encode("cp949"))
    _, hint = refused_with_hint([*base, "--train", str(cp949)], f"{cp949}:2: not UTF-8 text")
    assert "iconv -f CP949 -t UTF-8" in hint
    commas = bad("commas.csv", "sentence,label\nthe cat .,animal\n")
    _, hint = refused_with_hint([*base, "--train", str(commas), "--set", "format=tsv"], "commas.csv:1", "as TSV")
    assert hint.startswith("hint: the file looks like CSV: set format: csv"), hint
    fails([*base, "--train", str(tmp_path / "missing.tsv")], "missing.tsv", "does not exist")
    fails([*base, "--train", str(TRAIN), "--set", "lerning_rate=1"], "did you mean 'learning_rate'")
    fails(["finetune", "--model", str(tmp_path / "nomodel"), "--train", str(TRAIN), "-o", str(out)], "does not exist")
    _nothing_left(work, set())
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails([*base, "--train", str(TRAIN)], "not a bertcli artifact")
    fails([*base, "--train", str(TRAIN), "--overwrite"], "not a bertcli artifact")
    assert (out / "keep.txt").read_text() == "mine"
    _nothing_left(work, {"out"})


def test_predict_refuses_a_model_that_is_not_a_classifier(tiny_bert: Path) -> None:
    fails(["predict", "--model", str(tiny_bert), "the cat ."], "not a sequence classifier")
    hint = runner.invoke(app, ["predict", "-m", str(tiny_bert), "a"]).stderr
    assert "hint: fine-tune it first: bert finetune" in hint
    fails(["predict", "--model", str(tiny_bert)], "give texts")


def test_another_architecture_is_named_not_fed_to_bert_code(tiny_bert: Path, tmp_path: Path) -> None:
    # finetune builds BERT's classifier head and options: a GPT-2 directory failed deep inside transformers
    # ("unexpected keyword argument 'classifier_dropout'"); predict told the user to fine-tune it, which fails so.
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_bert, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": []}))
    out = tmp_path / "out"
    fails(["finetune", "--model", str(gpt2), "--train", str(TRAIN), "-o", str(out)], "gpt2 model, not BERT")
    assert not out.exists()
    fails(["predict", "--model", str(gpt2), "the cat ."], "not a sequence classifier", "'gpt2'")
    hint = runner.invoke(app, ["predict", "--model", str(gpt2), "the cat ."]).stderr.splitlines()[-1]
    assert hint.startswith("hint: pass a directory written by `bert finetune`"), hint


def test_a_stage_artifact_given_as_the_model_is_named(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tok"
    ok(["train-vocab", "--input", str(TRAIN_TEXT), "--output", str(tokenizer), "--set", "vocab_size=200"])
    for command in (["predict", "the cat ."], ["fill-mask", "the [MASK] ."], ["score", "the cat ."]):
        fails([command[0], "--model", str(tokenizer), *command[1:]], "'train-vocab' artifact, not a model")
    fails(["finetune", "--model", str(tokenizer), "--train", str(TRAIN), "-o", str(tmp_path / "out")],
          "'train-vocab' artifact, not a model")


def test_the_held_out_dev_set_is_stratified() -> None:
    from bertcli.stages.finetune import held_out_indices

    # 90 of a, 9 of b, 1 of c: a random tenth could miss b or hold out c's only example (a dev label the model
    # never trains on: accuracy 0 on it, and no error, where a --dev file with it is refused).
    labels_of = ["a"] * 90 + ["b"] * 9 + ["c"]
    dev = held_out_indices(labels_of, ["a", "b", "c"], 0.1, seed=42)
    held = [labels_of[i] for i in sorted(dev)]
    assert held.count("a") == 9 and held.count("b") == 1 and "c" not in held
    assert dev == held_out_indices(list(labels_of), ["a", "b", "c"], 0.1, seed=42)
    assert dev != held_out_indices(labels_of, ["a", "b", "c"], 0.1, seed=43)
    assert held_out_indices(["x", "y"], ["x", "y"], 0.5, seed=0) == set()  # one each: nothing can be spared
    assert len(held_out_indices(["x", "x", "y", "y"], ["x", "y"], 0.1, seed=0)) == 1  # 0.4 rounds to 0: one anyway
    # 20 labels of 4: no label's own tenth reaches one example, yet 8 of 80 are held out, one each from 8 labels
    many = [f"l{k:02d}" for k in range(20) for _ in range(4)]
    dev = held_out_indices(many, sorted(set(many)), 0.1, seed=0)
    assert len(dev) == 8 and len({many[i] for i in dev}) == 8


def test_held_out_refusals_and_a_dev_file_equal_to_train(tiny_bert: Path, tmp_path: Path) -> None:
    base = ["finetune", "--model", str(tiny_bert), *FAST, "--set", "max_epochs=1"]
    # A label column of (almost) unique values, the sentence itself: warned about; with every label once, no dev
    # set is possible and the hint names label_field.
    result = ok([*base, "--train", str(TRAIN), "-o", str(tmp_path / "a"), "--set", "text_field=label",
                 "--set", "label_field=sentence"])
    assert "37 labels for 40 examples, most of them seen once or twice; check label_field" in result.stderr
    unique = tmp_path / "unique.tsv"
    unique.write_text("sentence\tlabel\n" + "".join(f"text {i} .\tl{i}\n" for i in range(6)), encoding="utf-8")
    _, hint = refused_with_hint([*base, "--train", str(unique), "-o", str(tmp_path / "u1")], "too few to hold out")
    assert hint.startswith("hint: every label occurs once: check label_field")
    result = ok([*base, "--train", str(TRAIN), "--dev", str(TRAIN), "-o", str(tmp_path / "b")])
    assert "warning: the dev file is the training file" in result.stderr
    # Text the tokenizer cannot read (another script): said once, for the training file, and for predict's input.
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("sentence\tlabel\n" + "".join(f"ꙮꙮ ꙮ{'ꙮ' * i} .\t{'ab'[i % 2]}\n" for i in range(20)),
                       encoding="utf-8")
    result = ok([*base, "--train", str(unknown), "-o", str(tmp_path / "u")])
    assert f"of the training file {unknown}'s tokens are [UNK]" in result.stderr
    assert "tokens are [UNK]" in ok(["predict", "-m", str(tmp_path / "u"), "ꙮꙮ ꙮ"]).stderr
    # Header names are matched without stray spaces around them.
    spaced = tmp_path / "spaced.tsv"
    spaced.write_text(TRAIN.read_text().replace("sentence\tlabel", " sentence \t label ", 1), encoding="utf-8")
    ok([*base, "--train", str(spaced), "--dev", str(DEV), "-o", str(tmp_path / "c")])


def test_labels_are_the_same_whether_composed_or_decomposed(tmp_path: Path) -> None:
    # A dev file with the labels in NFD (copied on macOS) was refused: "label '긍정' does not occur in the training
    # file", the hint listing 긍정 — two strings that look identical.
    import unicodedata

    from bertcli.labelled import load_examples

    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    rows = "sentence\tlabel\n좋아요 .\t긍정\n싫어요 .\t부정\n"
    train.write_text(rows, encoding="utf-8")
    dev.write_text(unicodedata.normalize("NFD", rows), encoding="utf-8")
    assert dev.read_text(encoding="utf-8") != rows
    labels = [[e.label for e in load_examples(path).examples] for path in (train, dev)]
    assert labels[0] == labels[1] == ["긍정", "부정"]


def test_classification_metrics() -> None:
    # Binary: TP 3, FN 1, FP 2, TN 4 (label 1 positive). MCC = (3·4 − 2·1) / sqrt(5·4·6·5) = 10 / sqrt(600).
    gold = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    m = classification_metrics(gold, pred, 2)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["mcc"] == pytest.approx(10 / 600 ** 0.5)
    assert m["macro_f1"] == pytest.approx((6 / 9 + 8 / 11) / 2)  # F1(1) = 2·3/(4+5), F1(0) = 2·4/(6+5)
    # Three classes, all right: 1; a constant prediction: MCC 0 (no division by zero).
    assert classification_metrics([0, 1, 2], [0, 1, 2], 3) == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0}
    assert classification_metrics([0, 1, 2, 2], [2, 2, 2, 2], 3)["mcc"] == 0.0
    # Multiclass MCC (Gorodkin): c=3, s=5, t=(2,2,1), p=(1,2,2): (15 − 8) / sqrt((25 − 9)(25 − 9)) = 7/16.
    assert classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 2, 2], 3)["mcc"] == pytest.approx(7 / 16)
    assert label_order(["10", "2", "1"]) == ["1", "2", "10"] and label_order(["b", "a", "1"]) == ["1", "a", "b"]
    # "01" and "1" are two labels in one order whatever the set's hash order; "--1" and "²" are not integers
    # (str.isdigit() took them, then int() failed: exit 1)
    assert label_order(["1", "01", "0"]) == ["0", "01", "1"] and label_order(["01", "1", "0"]) == ["0", "01", "1"]
    assert label_order(["--1", "2"]) == ["--1", "2"] and label_order(["²", "1"]) == ["1", "²"]


def _altered_model(tiny_bert: Path, out: Path, architecture: str = "BertForPreTraining", **config_changes) -> Path:
    """tiny_bert's tokenizer beside fresh weights of another shape (what adding tokens without resizing, or a
    one-segment conversion, leaves): the tools must name the mismatch, not fail inside the first forward."""
    import transformers

    config = transformers.BertConfig.from_pretrained(tiny_bert)
    for key, value in config_changes.items():
        setattr(config, key, value)
    getattr(transformers, architecture)(config).save_pretrained(out)
    for name in tiny_bert.iterdir():
        if name.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(name, out / name.name)
    return out


def test_a_tokenizer_larger_than_the_embeddings_is_named_by_finetune_and_predict(tiny_bert: Path,
                                                                                 tmp_path: Path) -> None:
    small = _altered_model(tiny_bert, tmp_path / "small", vocab_size=10)
    out = tmp_path / "out"
    fails(["finetune", "--model", str(small), "--train", str(TRAIN), "-o", str(out)], "tokens but the model only 10")
    assert not out.exists()
    classifier = _altered_model(tiny_bert, tmp_path / "clf", "BertForSequenceClassification", vocab_size=10)
    fails(["predict", "--model", str(classifier), "the cat ."], "tokens but the model only 10 embeddings")


def test_a_one_segment_model_refuses_pairs_and_takes_single_texts(tiny_bert: Path, tmp_path: Path) -> None:
    one = _altered_model(tiny_bert, tmp_path / "one", type_vocab_size=1)
    out = tmp_path / "out"
    fails(["finetune", "--model", str(one), "--train", str(PAIRS), "-o", str(out),
           "--set", "text_pair_field=hypothesis"], "1 segment embedding (type_vocab_size)")
    assert not out.exists()
    fails(["predict-nsp", "--model", str(one), "--first", "the cat .", "--second", "the dog ."], "1 segment embedding")
    fails(["attention", "--model", str(one), "--out", str(tmp_path / "a.html"), "--second", "the dog .", "the cat ."],
          "1 segment embedding")
    assert not (tmp_path / "a.html").exists()
    ok(["attention", "--model", str(one), "--out", str(tmp_path / "a.html"), "the cat ."])  # one text: fine
    pairs_data = tmp_path / "pairs-data"
    ok(["pairs", "--input", str(TRAIN_TEXT), "--tokenizer", str(one), "--output", str(pairs_data),
        "--set", "max_seq_length=32"])
    fails(["evaluate", "--model", str(one), "--data", str(pairs_data)], "1 segment embedding")
    classifier = _altered_model(tiny_bert, tmp_path / "clf", "BertForSequenceClassification", type_vocab_size=1)
    fails(["predict", "--model", str(classifier), "--input", str(PAIRS), "--text-pair-field", "hypothesis"],
          "1 segment embedding")
    assert ok(["predict", "--model", str(classifier), "the cat ."]).stdout.rstrip().endswith("the cat .")  # one text


def test_predict_takes_a_classifier_whose_tokenizer_is_not_bert_s() -> None:
    """`bert predict` takes any *ForSequenceClassification: only the vocabulary must fit, not [CLS]/[SEP]."""
    from types import SimpleNamespace

    from bertcli.errors import ArtifactError
    from bertcli.model_dir import check_tokenizer_fits

    class NoSpecials(list):  # len() is the vocabulary size
        cls_token_id = sep_token_id = None

    config = SimpleNamespace(vocab_size=10, type_vocab_size=1)
    check_tokenizer_fits(NoSpecials(range(10)), config, Path("m"), bert=False)
    with pytest.raises(ArtifactError, match="not a BERT one"):
        check_tokenizer_fits(NoSpecials(range(10)), config, Path("m"))
    with pytest.raises(ArtifactError, match="11 tokens but the model only 10"):
        check_tokenizer_fits(NoSpecials(range(11)), config, Path("m"), bert=False)
