"""`bert pretrain` as real processes: torchrun with 2 CPU processes (gloo) and SIGKILL-then-resume."""

from __future__ import annotations

import json
import os
import random
import shutil
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
    for _attempt in range(8):  # kill twice mid-run, at random points, before letting it finish
        proc = subprocess.Popen(_cmd(data, run, extra) + (["--resume"] if run.exists() else []), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        # wait until it has trained past its first checkpoint, then a random extra delay
        while time.time() < deadline and not list(run.glob("step-*")) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (run / "manifest.json").exists():  # it finished before the kill (an idle machine): start again
            shutil.rmtree(run)
            continue
        killed_mid_run += proc.returncode == -signal.SIGKILL
        if killed_mid_run == 2:
            break
    assert killed_mid_run == 2
    result = subprocess.run(_cmd(data, run, extra) + ["--resume"], env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _weights(reference), _weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _two_ranks(data: Path, outputs: tuple[Path, Path], extra: list[str], nan_calls: tuple[str, str] = ("", ""),
               flags: tuple[str, ...] = (), timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Two `bert pretrain` processes joined as torchrun would join them, each with its own --output (a node that
    cannot see the run directory gets another path) and its own injected faults (tests/pretrain_worker.py)."""
    port = str(29500 + random.randrange(1000))
    procs = []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NAN_CALLS": nan_calls[rank]}
        cmd = _cmd(data, outputs[rank], extra, [sys.executable, str(ROOT / "tests" / "pretrain_worker.py")]) + [*flags]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_rank_without_the_run_directory_resumes_and_rolls_back_from_rank_0(data, tmp_path):
    """Rank 1 cannot read the checkpoints (its node does not mount the run directory: another path there). It still
    resumes from rank 0's step 4 — not from step 0 — and the NaN it produces at step 5 rolls both ranks back to step
    4 (read by rank 0, broadcast), skipping that batch: the same weights as an uninterrupted run with that NaN."""
    extra = ["max_steps=8", "save_every=2", "keep_checkpoints=3"]
    reference = tmp_path / "reference"
    # 2 micro-batches per rank per step and 1 held-out one at the evaluation after step 4: rank 1's 10th forward is
    # its first of step 5
    results = _two_ranks(data, (reference, reference), extra, ("", "10"))
    assert all(r.returncode == 0 for r in results), results[0].stderr[-3000:] + results[1].stderr[-3000:]
    assert "rolled back to" in results[0].stderr
    state = json.loads((reference / "final/training_state/state.json").read_text())["state"]
    assert state["skipped_batches"] == [[0, 4]] and state["step"] == 8

    run = tmp_path / "run"  # as a kill after step 5 leaves it: checkpoints up to step 4
    shutil.copytree(reference, run)
    for name in ("final", "step-00000006", "step-00000008"):
        shutil.rmtree(run / name, ignore_errors=True)
    (run / "manifest.json").unlink()
    elsewhere = tmp_path / "node-2-local" / "run"  # what rank 1's node sees at the run's path: nothing
    results = _two_ranks(data, (run, elsewhere), extra, ("", "1"), flags=("--resume",))
    assert all(r.returncode == 0 for r in results), results[0].stderr[-3000:] + results[1].stderr[-3000:]
    err = results[0].stderr
    assert "resuming from" in err and "step-00000004" in err and "starting from step 0" not in err
    assert "rolled back to" in err and "step 4" in err
    assert not elsewhere.exists()  # rank 1 never looked for, or wrote, anything there
    a, b = _weights(reference), _weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [2, 4, 6, 8]


@pytest.mark.slow
def test_torchrun_compiled_with_accumulation_matches_one_process(data, tmp_path):
    """torch.compile under DDP with gradient accumulation (no_sync), dropout 0: 2 ranks equal 1 process with twice
    the accumulation, compiled too, to float rounding (Inductor on CPU: minutes of compiling)."""
    extra = ["max_steps=3", "save_every=0", "eval_every=0", "compile=true", "model.hidden_dropout_prob=0",
             "model.attention_probs_dropout_prob=0"]
    single = tmp_path / "single"
    result = subprocess.run(_cmd(data, single, extra), env=_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    double = tmp_path / "double"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + random.randrange(1000)), "-m", "bertcli"]
    result = subprocess.run(_cmd(data, double, extra, torchrun), env=_env(), capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((double / "manifest.json").read_text())
    assert manifest["stats"]["compile"] and manifest["stats"]["world_size"] == 2
    a, b = _weights(single), _weights(double)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
