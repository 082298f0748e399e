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
    for profiled in report["profile"]:  # on CPU: the ops' own time; the top ones are the matrix products
        assert profiled["model"] == "tiny" and profiled["wall_ms_per_step"] > 0
        assert profiled["op_self_cpu_ms_per_step"] > 0
        assert 0.5 < sum(t["share"] for t in profiled["top"]) <= 1 + 1e-9  # the 12 largest hold most of the time
        assert any("mm" in t["name"] for t in profiled["top"][:3]), profiled["top"][:3]
    assert report["finetune"]["precision"] == "fp32" and 0.0 <= report["finetune"]["dev_accuracy"] <= 1.0
    resumed = report["fp16_kill_and_resume"]
    assert resumed["killed_mid_run"] and "resuming from" in resumed["resumed"]
    assert resumed["bit_identical"] and resumed["steps"] == [12, 12] and resumed["loss_scale"][0] > 0


def test_gpu_check_runs_every_part_and_reports_each_failure(tmp_path):
    """On a first GPU run a failing part must not hide the others: each part runs, its error is recorded, the partial
    report is on disk after each part, and the script exits non-zero naming the failed parts."""
    not_an_artifact = tmp_path / "empty"
    not_an_artifact.mkdir()
    work = tmp_path / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--data",
                             str(not_an_artifact), "--work", str(work)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    report = json.loads(result.stdout)
    parts = ["host_syncs_eager", "host_syncs_compiled", "speed_eager", "speed_compiled", "profile_model",
             "profile_tiny", "fp16_kill_and_resume", "finetune"]
    assert list(report["errors"]) == parts
    assert "has no manifest.json" in report["errors"]["speed_eager"]
    assert report["speed"] == [None, None] and report["profile"] == [None, None] and report["finetune"] is None
    assert report["data"] == {"path": str(not_an_artifact), "vocab_size": None}
    assert json.loads((work / "report.partial.json").read_text())["errors"] == report["errors"]
    assert f"FAILED in {', '.join(parts)}" in result.stderr


def test_attention_backend_is_read_from_the_kernel_names():
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_check import attention_backend

    assert attention_backend(["ampere_bf16_s16816gemm", "pytorch_flash::flash_fwd_kernel<...>"]) == "flash"
    assert attention_backend(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "elementwise"]) == "memory-efficient"
    assert attention_backend(["cudnn_generated_fort_native_sdpa_sm90_flash_fprop"]) == "cudnn"
    assert attention_backend(["softmax_warp_forward", "sm90_xmma_gemm_bf16"]) == "math"
