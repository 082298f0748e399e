"""`bert pretrain` as real processes: torchrun with 2 CPU processes (gloo) and SIGKILL-then-resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain_fixtures import make_artifact

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "model.preset=null", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=64", "model.max_position_embeddings=64", "batch_size=8", "micro_batch_size=2",
    "learning_rate=0.002", "warmup_steps=2", "eval_every=4", "eval_batches=2", "log_every=2", "eval_fraction=0.1",
    "seed=5",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _cmd(data: Path, out: Path, extra: list[str], launcher: list[str] | None = None) -> list[str]:
    sets = [a for s in SETS + extra for a in ("--set", s)]
    launcher = launcher or [sys.executable, "-m", "bertcli"]
    return [*launcher, "pretrain", "--data", str(data), "--output", str(out), *sets]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_tokenizer, tiny_corpus) -> Path:
    return make_artifact(tmp_path_factory.mktemp("data") / "masked", tiny_tokenizer, tiny_corpus,
                         num_sequences=160, sequences_per_shard=40)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(data, tmp_path):
    """2 ranks × micro 2 × accumulation 2 == 1 process × micro 2 × accumulation 4 (same global batch of 8)."""
    extra = ["max_steps=4", "save_every=2"]
    single = tmp_path / "single"
    subprocess.run(_cmd(data, single, extra), env=_env(), check=True, capture_output=True, timeout=300)
    double = tmp_path / "double"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + random.randrange(1000)), "-m", "bertcli"]
    result = subprocess.run(_cmd(data, double, extra, torchrun), env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _weights(single), _weights(double)
    assert a.keys() == b.keys()
    for k in a:
        # the same computation up to the order of float additions in the gradient all-reduce
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    initial = json.loads((double / "manifest.json").read_text())
    assert initial["stats"]["world_size"] == 2 and initial["stats"]["steps"] == 4
    assert (double / "step-00000002" / "checkpoint.json").is_file()  # rank 0 wrote; nothing written twice
    records = [json.loads(x) for x in (double / "metrics.jsonl").read_text().splitlines()]
    single_records = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(single_records)
    for r, s in zip(records, single_records):
        if "loss" in r:
            assert r["loss"] == pytest.approx(s["loss"], rel=1e-4)
        if "eval_mlm_accuracy" in r:
            assert r["eval_mlm_accuracy"] == pytest.approx(s["eval_mlm_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_weights(data, tmp_path):
    """Kill -9 at a random moment (possibly while a checkpoint is written), --resume: same final weights."""
    extra = ["max_steps=24", "save_every=3", "keep_checkpoints=2"]
    reference = tmp_path / "reference"
    subprocess.run(_cmd(data, reference, extra), env=_env(), check=True, capture_output=True, timeout=600)
    rng = random.Random()
    run = tmp_path / "killed"
    killed_mid_run = 0
    for attempt in range(2):  # kill twice, at random points, before letting it finish
        proc = subprocess.Popen(_cmd(data, run, extra) + (["--resume"] if attempt else []), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        # wait until it has trained past its first checkpoint, then a random extra delay
        while time.time() < deadline and not list(run.glob("step-*")) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_run += proc.returncode == -signal.SIGKILL and not (run / "manifest.json").exists()
    assert killed_mid_run >= 1
    result = subprocess.run(_cmd(data, run, extra) + ["--resume"], env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _weights(reference), _weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
