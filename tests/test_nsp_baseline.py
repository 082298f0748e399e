"""scripts/bench_nsp_baseline.py: the word-overlap rule that held-out NSP accuracy is judged against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from bertcli.cli import app

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_nsp_baseline.py"


def test_overlap_rule_on_real_pairs(tmp_path, tiny_corpus, tiny_tokenizer):
    pairs = tmp_path / "pairs"
    result = CliRunner().invoke(app, ["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
                                      "--output", str(pairs), "--set", "max_seq_length=64"])
    assert result.exit_code == 0, result.output
    out = subprocess.run([sys.executable, str(SCRIPT), "--train", str(pairs), "--heldout", str(pairs),
                          "--common", "0,20"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["max_seq_length"] == 64 and [r["common_left_out"] for r in report["rules"]] == [0, 20]
    for rule in report["rules"]:
        # the same artifact on both sides: the chosen threshold scores the same on both
        assert rule["heldout_accuracy"] == rule["train_accuracy"]
        # the lowest threshold calls every pair IsNext, so the best one is at least that good; and real
        # continuations share more words with A than random sentences do, so it is better on this corpus
        assert rule["train_accuracy"] > max(rule["heldout_is_next"], 1 - rule["heldout_is_next"])


def test_model_against_the_overlap(tmp_path, tiny_corpus, tiny_tokenizer, reference_run):
    import importlib.util

    import torch
    from transformers import BertForPreTraining

    from bertcli.artifacts import load_data

    pairs = tmp_path / "pairs"
    result = CliRunner().invoke(app, ["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
                                      "--output", str(pairs), "--set", "max_seq_length=64"])
    assert result.exit_code == 0, result.output
    model_dir = reference_run / "final"
    out = subprocess.run([sys.executable, str(SCRIPT), "--train", str(pairs), "--heldout", str(pairs),
                          "--common", "0", "--model", str(model_dir)], capture_output=True, text=True, check=True)
    model = json.loads(out.stdout.strip().splitlines()[-1])["model"]
    data = load_data(pairs, ("pairs",))
    bands = model["bands"]
    # every sequence lands in exactly one band, and the bands' accuracies add up to the overall one
    assert sum(band["sequences"] for band in bands) == len(data.arrays)
    weighted = sum(band["model_accuracy"] * band["sequences"] for band in bands) / len(data.arrays)
    assert abs(weighted - model["accuracy"]) < 0.01 and -1 <= model["correlation_with_share"] <= 1

    # the batched, padded forward gives each sequence what it gets alone (padding and segments are right)
    spec = importlib.util.spec_from_file_location("bench_nsp_baseline", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    batched = script.is_next_probabilities(str(model_dir), str(pairs), batch_size=7)
    alone = BertForPreTraining.from_pretrained(model_dir).eval()
    for i in (0, 3, len(data.arrays) - 1):
        row = data.arrays[i]
        ids = torch.as_tensor(row["input_ids"].astype("int64"))[None]
        types = (torch.arange(ids.shape[1]) >= int(row["type_boundary"])).long()[None]
        with torch.no_grad():
            logits = alone(input_ids=ids, token_type_ids=types).seq_relationship_logits[0]
        assert abs(torch.softmax(logits, -1)[0].item() - batched[i]) < 1e-5
