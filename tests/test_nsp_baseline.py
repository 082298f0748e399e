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
