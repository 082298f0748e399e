"""How a pretraining run computes on its device: precision by compute capability, data-loader workers, and how a
global batch splits into micro-batches over the processes."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertcli.errors import ConfigError


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    reason: str = ""  # why this precision: recorded in the manifest
    tf32: bool = False  # TF32 matmuls for the fp32 parts (CUDA, compute capability 8.0 and above)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 autocast on a GPU that computes bf16 natively (compute capability 8.0 and above: A100, H100, L4…);
    fp16 with a gradient scaler on older GPUs (V100, T4), which only emulate bf16 — torch.cuda.is_bf16_supported()
    counts emulation unless told not to, and that emulation is far slower than their fp16 tensor cores; fp32 on
    CPU. fp16 always comes with a gradient scaler. TF32 matmuls for the fp32 parts on GPUs that have them."""
    gpu = ""
    tf32 = False
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gpu = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
        tf32 = major >= 8
    if requested != "auto":
        reason = f"precision: {requested} as configured" + (f" on {gpu}" if gpu else "")
        if requested == "bf16" and gpu and not torch.cuda.is_bf16_supported(including_emulation=False):
            reason += ", which only emulates bf16 (slow): fp16 or auto is faster there"
        return Precision(requested, _DTYPES[requested], reason, tf32)
    if device.type != "cuda":
        return Precision("fp32", None, f"auto on {device.type}: fp32", False)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision("bf16", torch.bfloat16, f"auto: {gpu} computes bf16 natively", tf32)
    return Precision("fp16", torch.float16, f"auto: {gpu} has no native bf16 (below 8.0): fp16 with a gradient "
                                            "scaler", tf32)


def resolve_num_workers(value: int | str, device: torch.device) -> int:
    """num_workers auto: 2 loader processes on CUDA (batches are built while the GPU computes), 0 on CPU (the
    collation is cheap next to a CPU step, and worker processes would take cores from it)."""
    if value == "auto":
        return 2 if device.type == "cuda" else 0
    return int(value)


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask on Linux; every CPU where the OS has no such call, as on
    macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def cpu_times(stat_text: str, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """{cpu: (busy ticks, total ticks)} of the listed CPUs from the text of /proc/stat. Idle is idle + iowait; busy
    is everything else, steal included (time the hypervisor gave to another machine is a core we do not have);
    guest time is already inside user and nice, so it is not added twice."""
    times = {}
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
        total = sum(ticks)
        times[int(name[3:])] = (total - ticks[3] - ticks[4], total)
    return times


def busy_cores(window_s: float = 0.3, stat_path: str = "/proc/stat") -> float | None:
    """How many of this process's cores other work keeps busy right now: the busy share of each CPU we may run on
    over window_s, summed (Linux). None where /proc/stat cannot tell (another OS, CPUs it does not list). Measured
    now, not averaged over the last minute as the load average is: a job that just ended (the pip install before
    `make demo`'s pretraining) still holds the 1-minute load average near 1 for a minute after."""
    cpus = usable_cpus()
    try:
        before = cpu_times(Path(stat_path).read_text(), cpus)
        time.sleep(window_s)
        after = cpu_times(Path(stat_path).read_text(), cpus)
    except (OSError, ValueError):
        return None
    if set(before) != cpus or set(after) != cpus:  # a CPU we may use that the file does not list
        return None
    busy = 0.0
    for cpu, (busy_after, total_after) in after.items():
        busy_before, total_before = before[cpu]
        if total_after > total_before:
            busy += (busy_after - busy_before) / (total_after - total_before)
    return busy


def resolve_num_threads(value: int | str, device: torch.device, cores: int | None = None,
                        load: float | None = None, default: int | None = None) -> int:
    """CPU threads of torch in a pretraining process. auto: torch's own choice (OMP_NUM_THREADS, else every core)
    on CUDA, when OMP_NUM_THREADS is set (torchrun sets it) or when the cores are idle; on a CPU whose cores other
    jobs keep busy, only the cores they leave idle, at least 1: threads that meet at every operation lose most of
    their time waiting for a busy core (one thread trained 3-4x faster than two on a shared 2-core machine,
    docs/benchmarks.md, "The demo"). How busy: measured over a short window at the start (busy_cores), else the
    1-minute load average."""
    if value != "auto":
        return int(value)
    default = torch.get_num_threads() if default is None else default
    if device.type == "cuda" or os.environ.get("OMP_NUM_THREADS") or default <= 1:
        return default
    cores = len(usable_cpus()) if cores is None else cores
    if load is None:
        load = busy_cores()
    if load is None:  # no /proc/stat: the load average (macOS), else nothing to go by (Windows): take the default
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(default, int(cores - load + 0.5)))


def micro_batching(batch_size: int, max_micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) for a global batch over world_size processes: the largest divisor of
    the per-process batch that is at most max_micro_batch_size, so any batch_size splits without a remainder."""
    if batch_size % world_size:
        counts = [n for n in range(1, min(batch_size, 64) + 1) if batch_size % n == 0]
        raise ConfigError(
            f"key 'batch_size': {batch_size} sequences cannot be split evenly over {world_size} processes",
            hint=f"choose a batch_size that is a multiple of {world_size}, or run {', '.join(map(str, counts))} "
            "processes (a run resumed keeps its batch_size)",
        )
    per_process = batch_size // world_size
    micro = max(d for d in range(1, min(per_process, max_micro_batch_size) + 1) if per_process % d == 0)
    return micro, per_process // micro


def check_ddp_comm(cfg: Any, ctx: Any) -> None:
    """ddp_comm bf16 compresses through NCCL (DDP's bf16_compress_hook); gloo (CPU processes) cannot."""
    if cfg.ddp_comm == "bf16" and ctx.distributed and ctx.backend != "nccl":
        raise ConfigError(
            f"key 'ddp_comm': bf16 needs NCCL (processes on GPUs); these {ctx.world_size} processes use "
            f"{ctx.backend}",
            hint="set ddp_comm: fp32 (on CPU the gradients are all-reduced in fp32)",
        )
