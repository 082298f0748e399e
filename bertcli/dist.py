"""The one place that reads the torchrun environment and calls torch.distributed (DDP, collectives)."""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among world_size processes and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), if any.

    Backend: NCCL on CUDA, gloo on CPU. Without torchrun this is a single process and nothing is initialised.
    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(
                backend=backend,
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
                **({"device_id": dev} if use_cuda else {}),
            )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def log_main(ctx: DistContext | None, message: str) -> None:
    """Print a progress line to stderr from rank 0 only (every rank knows the same; one reports it).
    ctx None: outside a run, always print."""
    if ctx is None or ctx.is_main:
        print(message, file=sys.stderr, flush=True)


def warn_main(ctx: DistContext | None, message: str) -> None:
    log_main(ctx, f"warning: {message}")


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        torch_dist.barrier()


def _reduce(ctx: DistContext, tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not ctx.distributed:
        return tensor
    if ctx.backend == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(ctx.device)  # NCCL reduces CUDA tensors only
        torch_dist.all_reduce(moved, op=op)
        tensor.copy_(moved.cpu())
    else:
        torch_dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (returns it); CPU tensors are fine with either backend."""
    return _reduce(ctx, tensor, torch_dist.ReduceOp.SUM)


def all_reduce_max(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over all ranks in place (returns it)."""
    return _reduce(ctx, tensor, torch_dist.ReduceOp.MAX)


def max_over_ranks(ctx: DistContext, value: float) -> float:
    """The largest of the ranks' values (e.g. elapsed time: all ranks follow the slowest clock)."""
    if not ctx.distributed:
        return value
    return float(all_reduce_max(ctx, torch.tensor([value], dtype=torch.float64)).item())


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True if the flag is set on any rank (e.g. a non-finite loss seen by one rank stops all)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    return bool(all_reduce_max(ctx, t).item() > 0)


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's object on every rank (e.g. the checkpoint chosen for --resume)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(ctx: DistContext, module: nn.Module) -> nn.Module:
    """DistributedDataParallel over the module when there are several processes; the module itself otherwise."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


@contextlib.contextmanager
def maybe_no_sync(module: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for the micro-batches before the last one of an accumulation step."""
    target = module
    while hasattr(target, "_orig_mod"):
        target = target._orig_mod
    if skip_sync and isinstance(target, nn.parallel.DistributedDataParallel):
        with target.no_sync():
            yield
    else:
        yield
