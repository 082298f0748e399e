"""The one place that reads the torchrun environment and calls torch.distributed (DDP, collectives)."""

from __future__ import annotations

import contextlib
import datetime
import inspect
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

from bertcli.errors import BertcliError, ConfigError


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
    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda". Raises ConfigError for
    device cuda without a usable GPU, and for more processes on a node than it has GPUs (they would share a GPU
    silently until NCCL fails).
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "cuda" and not torch.cuda.is_available():
        build = (f"a CPU build of PyTorch ({torch.__version__})" if torch.version.cuda is None
                 else f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}), which finds no usable GPU")
        raise ConfigError(f"key 'device': cuda, but this is {build}",
                          hint="set device: auto or cpu, or install a CUDA build of torch on a machine with a GPU")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            local_world = _env_int("LOCAL_WORLD_SIZE", local_rank + 1)
            raise ConfigError(f"{local_world} processes on this node but only {gpus} GPU(s) (LOCAL_RANK "
                              f"{local_rank} has none): start at most {gpus} per node (torchrun --nproc_per_node "
                              f"{gpus}), or set device: cpu")
        dev = torch.device("cuda", local_rank)
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


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's object on every rank (e.g. the checkpoint chosen for --resume)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank (e.g. each rank's RNG state for a checkpoint)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def main_decides(ctx: DistContext | None, decide: Callable[[], Any]) -> Any:
    """Run `decide` on rank 0 only and return its result on every rank; a BertcliError it raises is raised on every
    rank (another failure there stops the others with a BertcliError naming it).

    For decisions about files only rank 0 needs to see (the run directory on a filesystem that another node may
    not mount): the other ranks follow rank 0 instead of looking for themselves and deciding differently."""
    result, error = None, None
    if ctx is None or ctx.is_main:
        try:
            result = decide()
        except BertcliError as exc:
            error = (type(exc), exc.message, exc.hint)
        except Exception as exc:
            if ctx is not None and ctx.distributed:
                broadcast_object(ctx, (None, (BertcliError, f"rank 0 failed: {type(exc).__name__}: {exc}", None)))
            raise
    if ctx is not None and ctx.distributed:
        result, error = broadcast_object(ctx, (result, error))
    if error is not None:
        kind, message, hint = error
        exc = kind(message, hint=hint)
        exc.relayed = ctx is not None and not ctx.is_main
        raise exc
    return result


class _Slot:
    """Where a tensor sat in a structure sent by broadcast_tensors: its place in the byte buffer."""

    def __init__(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype):
        self.offset, self.shape, self.dtype = offset, shape, dtype


def broadcast_tensors(ctx: DistContext, tree: Any) -> Any:
    """Rank 0's nested structure (dicts, lists and tuples of tensors and plain values) on every rank; the other
    ranks pass anything (None). The structure travels pickled, the tensors' bytes in one buffer (on the GPU for
    NCCL): model weights, optimizer state and RNG states of a checkpoint only rank 0 can read. CPU tensors come out."""
    if not ctx.distributed:
        return tree
    parts: list[torch.Tensor] = []
    size = 0

    def strip(x: Any) -> Any:
        nonlocal size
        if isinstance(x, torch.Tensor):
            data = x.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            slot = _Slot(size, tuple(x.shape), x.dtype)
            parts.append(data)
            size += -(-data.numel() // 16) * 16  # 16-byte aligned, so every dtype can view its bytes
            return slot
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(strip(v) for v in x)
        return x

    skeleton = strip(tree) if ctx.is_main else None
    skeleton, size = broadcast_object(ctx, (skeleton, size))
    comm_device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    buffer = torch.zeros(size, dtype=torch.uint8)
    if ctx.is_main:
        offset = 0
        for data in parts:
            buffer[offset : offset + data.numel()] = data
            offset += -(-data.numel() // 16) * 16
    moved = buffer.to(comm_device)
    torch_dist.broadcast(moved, src=0)
    buffer = moved.cpu()

    def build(x: Any) -> Any:
        if isinstance(x, _Slot):
            count = math.prod(x.shape) * torch.empty((), dtype=x.dtype).element_size()
            return buffer[x.offset : x.offset + count].view(x.dtype).reshape(x.shape).clone()
        if isinstance(x, dict):
            return {k: build(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(build(v) for v in x)
        return x

    return build(skeleton)


def wrap_model(ctx: DistContext, module: nn.Module, comm: str = "fp32") -> nn.Module:
    """DistributedDataParallel over the module when there are several processes; the module itself otherwise.

    gradient_as_bucket_view: gradients live in DDP's communication buckets (no copy in or out of them);
    forward_sync_buffers off (what broadcast_buffers=False was before torch 2.13): BERT's buffers (position and
    token-type ids) never change, so after DDP's start there is nothing to send before every forward.
    comm "bf16": gradients are all-reduced in bf16 (half the bytes; DDP's bf16_compress_hook), which rounds each
    rank's contribution to bf16 before the sum."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp_class = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed the option and deprecated the old name; older torch knows only broadcast_buffers
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters
                      else {"broadcast_buffers": False})
    ddp = ddp_class(module, device_ids=device_ids, gradient_as_bucket_view=True, **no_buffer_sync)
    if comm == "bf16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return ddp


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
