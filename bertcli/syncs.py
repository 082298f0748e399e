"""Counting the places where the host waits for the device: a dispatch-level counter that works on CPU stand-ins
(what the tests use), and CUDA's own sync debug mode (what scripts/gpu_check.py adds on a GPU)."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that make the host wait for the device's result: a scalar read (.item(), float(t), bool(t)), and ops
# whose output size depends on tensor values (nonzero, bincount's min/max, masked_select, unique…).
SYNC_OPS = (
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.bincount",
    "aten.nonzero",
    "aten.masked_select",
    "aten.unique",
    "aten._unique2",
    "aten.repeat_interleave",
    "aten.equal",
    "aten.allclose",
)
# Tensor methods that copy to the host (on CUDA each waits for the device).
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class HostSyncCounter(TorchDispatchMode):
    """Counts the ops of SYNC_OPS dispatched while active, and the calls of SYNC_METHODS on tensors. On CPU nothing
    waits, but the same code on CUDA would: this is how the CPU test suite shows the GPU step is free of syncs.

        with HostSyncCounter() as syncs:
            trainer.train_step(group)
        assert syncs.total == 0, syncs.counts
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self._patches: list[tuple[str, object]] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNC_OPS:
            self._count(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostSyncCounter:
        for method in SYNC_METHODS:
            original = getattr(torch.Tensor, method)

            def counted(tensor, *args, _original=original, _name=method, **kwargs):
                self._count(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)

            self._patches.append((method, torch.Tensor.__dict__.get(method)))
            setattr(torch.Tensor, method, counted)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for method, previous in reversed(self._patches):
            if previous is None:
                delattr(torch.Tensor, method)
            else:
                setattr(torch.Tensor, method, previous)
        self._patches.clear()


@contextlib.contextmanager
def cuda_sync_warnings() -> Iterator[list[str]]:
    """On CUDA: the synchronising calls made while active, from torch.cuda.set_sync_debug_mode("warn")."""
    found: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    # torch's own notice on switching the mode on ("Synchronization debug mode is a prototype feature…", seen once
    # on an H200) names no call: it is not a sync
    found.extend(str(w.message).splitlines()[0] for w in caught
                 if "synchroniz" in str(w.message) and "prototype feature" not in str(w.message))
