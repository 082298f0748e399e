"""The GPU figures of docs/benchmarks.md in one run (scripts/gpu_check.sh builds the data first); prints JSON.

    python scripts/gpu_check.py --data runs/gpu-check/masked --work runs/gpu-check [--device cuda|cpu]

On one GPU, in a few minutes: the device and what `precision: auto` picks there and why; the host syncs of a
training step (a dispatch-level counter of the ops that make the host wait, and on CUDA torch's own
set_sync_debug_mode); sequences/s, model TFLOP/s, MFU and peak memory of BERT-base at length 128 in bf16, eager and
under torch.compile (`bert pretrain` itself, read from its metrics.jsonl after the first log intervals); a profile
of that step and of BERT-tiny's (where the time goes: the GPU's busy share, launches per step, the attention kernel,
the top kernels); and an fp16
run killed with SIGKILL after its first checkpoint and resumed, against an uninterrupted one (on CPU the weights
must be bit-identical; on a GPU atomics in some backward kernels allow float-rounding differences, so the largest
weight difference is reported). --device cpu runs the same with BERT-tiny and fewer steps (the slow test runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def device_report(device: str) -> dict:
    import torch

    from bertcli.metrics import gpu_peak_tflops
    from bertcli.stages.pretrain import resolve_precision

    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    precision = resolve_precision("auto", dev)
    report = {"torch": torch.__version__, "device": device, "precision_auto": precision.name,
              "precision_reason": precision.reason, "tf32": precision.tf32}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        report.update(name=name, capability=".".join(map(str, torch.cuda.get_device_capability(dev))),
                      memory_gb=round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1),
                      peak_tflops=gpu_peak_tflops(name), cuda=torch.version.cuda)
    return report


def count_syncs(cfg, steps: int) -> dict:
    """Host syncs of `steps` training steps and of one check (a Trainer built as `bert pretrain` builds it)."""
    import torch

    from bertcli import dist
    from bertcli.stages import pretrain
    from bertcli.syncs import HostSyncCounter, cuda_sync_warnings

    ctx = dist.init_distributed(cfg.device)
    trainer = pretrain.build_trainer(cfg, ctx)
    stream = trainer.micro_batch_stream()
    for _ in range(3):  # warm-up: optimizer state, allocator, kernels (and compilation)
        trainer.train_step(next(stream))
    groups = [next(stream) for _ in range(steps)]
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    flags = []
    with HostSyncCounter() as counter, (cuda_sync_warnings() if cuda else _nothing()) as warned:
        for group in groups:
            flags.append(trainer.train_step(group)[2])
    trainer.pending = [(i, (0, i), f) for i, f in enumerate(flags)]
    with HostSyncCounter() as check_counter:
        trainer.check_steps(1.0)
    stream.close()
    trainer.metrics.close()
    micro = steps * trainer.accum
    result = {"steps": steps, "micro_batches": micro, "dispatch_syncs_per_step": counter.total / steps,
              "dispatch_syncs": counter.counts, "syncs_per_check": check_counter.total}
    if cuda:
        result["cuda_sync_debug_warnings_per_step"] = len(warned) / steps
        result["cuda_sync_debug_warnings"] = sorted(set(warned))[:10]
    return result


class _nothing:
    def __enter__(self) -> list:
        return []

    def __exit__(self, *exc) -> None:
        return None


ATTENTION_KERNELS = (  # (backend, pieces of kernel names that mark it), first match wins: cuDNN's attention
    # kernels can have "flash" in their names too; nothing else in a BERT step runs a cuDNN kernel
    ("cudnn", ("cudnn",)),
    ("flash", ("flash",)),
    ("memory-efficient", ("fmha", "efficient_attention", "mem_eff")),
)


def attention_backend(names: list[str]) -> str:
    """Which SDPA kernel ran, from the kernel names: flash, memory-efficient, cudnn, or math (softmax and batched
    matrix products, nothing fused)."""
    for backend, pieces in ATTENTION_KERNELS:
        if any(piece in name.lower() for name in names for piece in pieces):
            return backend
    return "math"


def profile_steps(cfg, steps: int) -> dict:
    """Where a training step's time goes, for the next speed work: `steps` steps timed bare, then the same number
    under torch.profiler. On CUDA: the GPU's busy share (kernel time / bare wall time; far below 1 means the step
    waits on Python and kernel launches, not arithmetic), kernel launches per step, the attention kernel SDPA chose,
    and the kernels that take the most time. On CPU the same from the ops' own CPU time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from bertcli import dist
    from bertcli.stages import pretrain

    shutil.rmtree(cfg.output, ignore_errors=True)
    ctx = dist.init_distributed(cfg.device)
    trainer = pretrain.build_trainer(cfg, ctx)
    stream = trainer.micro_batch_stream()
    for _ in range(3):  # warm-up: optimizer state, allocator, kernels (and compilation)
        trainer.train_step(next(stream))
    cuda = ctx.device.type == "cuda"

    def run(groups: list) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for group in groups:
            trainer.train_step(group)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    bare_s = run([next(stream) for _ in range(steps)])
    groups = [next(stream) for _ in range(steps)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        profiled_s = run(groups)
    stream.close()
    trainer.metrics.close()
    events = prof.key_averages()
    device_type, key = (DeviceType.CUDA, "self_device_time_total") if cuda else (DeviceType.CPU, "self_cpu_time_total")
    timed = [e for e in events if e.device_type == device_type and getattr(e, key) > 0]
    total_us = sum(getattr(e, key) for e in timed)
    top = sorted(timed, key=lambda e: getattr(e, key), reverse=True)[:12]
    result = {
        "steps": steps, "model": cfg.model.preset, "batch_size": cfg.batch_size, "precision": cfg.precision,
        "wall_ms_per_step": 1000 * bare_s / steps, "profiled_wall_ms_per_step": 1000 * profiled_s / steps,
        ("kernel_ms_per_step" if cuda else "op_self_cpu_ms_per_step"): total_us / 1000 / steps,
        "top": [{"name": e.key[:100], "ms_per_step": getattr(e, key) / 1000 / steps,
                 "share": getattr(e, key) / total_us, "calls_per_step": e.count / steps} for e in top],
    }
    if cuda:
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                              "cuLaunchKernelEx"))
        result.update(gpu_busy_share=total_us / 1e6 / bare_s, launches_per_step=launches / steps,
                      attention_backend=attention_backend([e.key for e in timed]))
    return result


def speed(cfg, label: str) -> dict:
    """One `bert pretrain` run; throughput from its metrics.jsonl, leaving out the first two log intervals (start-up,
    compilation)."""
    from bertcli.stages import pretrain

    start = time.perf_counter()
    manifest = pretrain.run(cfg)
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "tokens_per_s" in r]
    steady = train[2:] or train[-1:]

    def mean(key: str) -> float | None:
        values = [r[key] for r in steady if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "run": label, "precision": manifest["stats"]["precision"], "compile": cfg.compile,
        "steps": manifest["stats"]["steps"], "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size,
        "sequences_per_s": mean("sequences_per_s"), "tokens_per_s": mean("tokens_per_s"),
        "model_tflops_per_s": mean("model_tflops_per_s"), "mfu": mean("mfu"),
        "peak_memory_gb": max((r.get("peak_memory_gb") or 0.0 for r in train), default=None) or None,
        "wall_s": wall, "first_interval_s": train[0]["elapsed_s"] if train else None,
    }


def kill_and_resume(args, sets: list[str], out: Path) -> dict:
    """An fp16 run killed (SIGKILL) after its first checkpoint and resumed, against an uninterrupted one."""
    import torch
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "bertcli", "pretrain", "--data", args.data] + [a for s in sets for a in ("--set", s)]
    reference, killed = out / "fp16-reference", out / "fp16-killed"
    for d in (reference, killed):
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run(base + ["--output", str(reference)], env=env, check=True, capture_output=True, timeout=1200)
    proc = subprocess.Popen(base + ["--output", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list(killed.glob("step-*")) and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    killed_mid_run = proc.poll() is None
    if killed_mid_run:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(base + ["--output", str(killed), "--resume"], env=env, capture_output=True, text=True,
                             timeout=1200)
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed:\n{resumed.stderr[-3000:]}")
    line = next((ln for ln in resumed.stderr.splitlines() if "resuming from" in ln), "")
    a = load_file(str(reference / "final" / "model.safetensors"))
    b = load_file(str(killed / "final" / "model.safetensors"))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    state = [json.loads((d / "final/training_state/state.json").read_text()) for d in (reference, killed)]
    return {
        "killed_mid_run": killed_mid_run, "resumed": line.strip(),
        "bit_identical": all(torch.equal(a[k], b[k]) for k in a),
        "max_abs_weight_difference": diff,
        "loss_scale": [s["scaler"]["scale"] if s["scaler"] else None for s in state],
        "steps": [s["state"]["step"] for s in state],
    }


def finetune_check(args, model_dir: Path, out: Path) -> dict:
    """`bert finetune` under `precision: auto` (bf16 autocast on a GPU with native bf16, fp16 and a gradient scaler
    before it, fp32 on CPU) from the fp16 run's model, on the tests' small topic task: the precision picked, the dev
    accuracy and the time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    data = ROOT / "tests" / "data"
    cmd = [sys.executable, "-m", "bertcli", "finetune", "--model", str(model_dir), "--train",
           str(data / "topic-train.tsv"), "--dev", str(data / "topic-dev.csv"), "--output", str(out), "--overwrite",
           "--json", "--set", f"device={args.device}", "--set", "max_epochs=4", "--set", "learning_rate=1e-3",
           "--set", "batch_size=8", "--set", "warmup_fraction=0"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"finetune failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    return {"precision": stats["precision"], "precision_reason": stats["precision_reason"],
            "dev_accuracy": summary["dev_accuracy"], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="masked artifact at length 128 (scripts/gpu_check.sh)")
    parser.add_argument("--work", default="runs/gpu-check")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=0, help="steps per speed run (default: 60 on GPU, 12 on CPU)")
    args = parser.parse_args()

    import torch

    from bertcli.schemas import ModelConfig, PretrainConfig

    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; run with DEVICE=cpu for the CPU version")
    if not gpu:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (60 if gpu else 12)
    preset, batch = ("base", 256) if gpu else ("tiny", 32)
    precision = "bf16" if gpu else "fp32"

    def cfg(name: str, **changes) -> PretrainConfig:
        values = dict(data=args.data, output=str(work / name), model=ModelConfig(preset=preset), max_steps=steps,
                      batch_size=batch, micro_batch_size=batch, learning_rate=1e-4, warmup_steps=10, eval_every=0,
                      eval_batches=1, save_every=0, log_every=max(steps // 6, 1), eval_fraction=0.01, seed=0,
                      precision=precision, device=args.device)
        values.update(changes)
        return PretrainConfig(**values)

    report: dict = {"device": device_report(args.device)}
    log(json.dumps(report["device"]))
    errors: dict[str, str] = {}

    def section(name: str, fn) -> dict | None:
        """Run one part; on the first run on a new GPU a failure in one part must not hide the figures of the others:
        its error (the traceback's last lines) goes into the report and the next part runs. The report so far is
        rewritten after each part, so a run stopped at its time limit still leaves what it measured."""
        try:
            value = fn()
        except BaseException as exc:  # SystemExit from a child's failure too; KeyboardInterrupt still stops
            if isinstance(exc, KeyboardInterrupt):
                raise
            errors[name] = "".join(traceback.format_exception(exc)[-6:])[-2000:]
            log(f"{name}: FAILED\n{errors[name]}")
            value = None
        else:
            log(f"{name}: {json.dumps(value)}")
        (work / "report.partial.json").write_text(json.dumps({**report, name: value, "errors": errors}, indent=2))
        return value

    for label, compiled in (("eager", False), ("compiled", True)):
        cfg_sync = cfg(f"syncs-{label}", compile=compiled, batch_size=batch // 2 if gpu else 16,
                       micro_batch_size=batch // 4 if gpu else 8, max_steps=10 ** 6)
        shutil.rmtree(cfg_sync.output, ignore_errors=True)
        report[f"host_syncs_{label}"] = section(f"host_syncs_{label}", lambda c=cfg_sync: count_syncs(c, steps=4))
    report["speed"] = []
    for label, compiled in (("eager", False), ("compiled", True)):
        c = cfg(f"speed-{label}", compile=compiled)
        shutil.rmtree(c.output, ignore_errors=True)
        report["speed"].append(section(f"speed_{label}", lambda c=c, label=label: speed(c, label)))
    # where the step's time goes: the speed runs' model, and BERT-tiny at batch 32 (on a GPU bound by launches)
    profile_steps_n = 10 if gpu else 4
    report["profile"] = [
        section("profile_model", lambda: profile_steps(cfg("profile-model", max_steps=10 ** 6), profile_steps_n)),
        section("profile_tiny", lambda: profile_steps(
            cfg("profile-tiny", model=ModelConfig(preset="tiny"), batch_size=32, micro_batch_size=32,
                max_steps=10 ** 6), profile_steps_n)),
    ]
    # fp16 on a CPU has no fast kernels (seconds per step): a shorter run there
    small, fp16_steps, fp16_batch = ("mini", 40, 32) if gpu else ("tiny", 12, 16)
    sets = [f"model.preset={small}", "precision=fp16", f"device={args.device}", f"max_steps={fp16_steps}",
            f"save_every={fp16_steps // 4}", f"log_every={fp16_steps // 8}", "eval_every=0", "eval_batches=1",
            f"batch_size={fp16_batch}", f"micro_batch_size={fp16_batch // 2}", "learning_rate=0.001",
            "warmup_steps=3", "seed=0", "num_workers=0"]
    report["fp16_kill_and_resume"] = section("fp16_kill_and_resume", lambda: kill_and_resume(args, sets, work))
    report["finetune"] = section("finetune", lambda: finetune_check(args, work / "fp16-reference", work / "finetune"))
    manifest = Path(args.data) / "manifest.json"
    vocab = json.loads(manifest.read_text()).get("vocab_size") if manifest.is_file() else None
    report["data"] = {"path": args.data, "vocab_size": vocab}
    report["errors"] = errors
    print(json.dumps(report, indent=2))
    if errors:
        raise SystemExit(f"gpu_check: FAILED in {', '.join(errors)} (the report's `errors` holds each traceback)")
    syncs = [report[f"host_syncs_{x}"]["dispatch_syncs_per_step"] for x in ("eager", "compiled")]
    ok = all(s == 0 for s in syncs) and (gpu or report["fp16_kill_and_resume"]["bit_identical"])
    if not ok:
        raise SystemExit("gpu_check: FAILED (host syncs in the step, or the resumed CPU run differs)")


if __name__ == "__main__":
    main()
