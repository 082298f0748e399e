"""scripts/gpu_check.sh end to end with DEVICE=cpu: data from the bundled sample, host syncs, eager and compiled
speed, and an fp16 run killed with SIGKILL and resumed (bit-identical on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    work = tmp_path / "gpu-check"
    env = {**os.environ, "DEVICE": "cpu", "WORK": str(work), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                            text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    assert report == json.loads(result.stdout)
    assert report["device"]["precision_auto"] == "fp32" and report["device"]["precision_reason"]
    for label in ("eager", "compiled"):
        syncs = report[f"host_syncs_{label}"]
        assert syncs["dispatch_syncs_per_step"] == 0 and syncs["syncs_per_check"] == 1, syncs
    speeds = {s["run"]: s for s in report["speed"]}
    assert speeds["compiled"]["compile"] and not speeds["eager"]["compile"]
    for s in speeds.values():
        assert s["sequences_per_s"] > 0 and s["model_tflops_per_s"] > 0 and s["mfu"] is None  # no peak on CPU
    assert report["finetune"]["precision"] == "fp32" and 0.0 <= report["finetune"]["dev_accuracy"] <= 1.0
    resumed = report["fp16_kill_and_resume"]
    assert resumed["killed_mid_run"] and "resuming from" in resumed["resumed"]
    assert resumed["bit_identical"] and resumed["steps"] == [12, 12] and resumed["loss_scale"][0] > 0
