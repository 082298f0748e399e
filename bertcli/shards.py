"""Sharded ragged arrays: the on-disk, memory-mapped format of the pairs and masked artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bertcli.errors import ArtifactError


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits, int32 beyond (ids are never negative)."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


class ShardWriter:
    """Write sequences as shards of flat .npy arrays: ragged fields with offsets, scalar fields one per sequence.

    Memory is bounded by one shard (sequences_per_shard rows), never by the corpus.
    """

    def __init__(
        self,
        out_dir: str | Path,
        ragged: dict[str, Any],
        scalar: dict[str, Any],
        sequences_per_shard: int = 65536,
        prefix: str = "shard",
    ):
        self.out_dir = Path(out_dir)
        self.ragged = {k: np.dtype(v) for k, v in ragged.items()}
        self.scalar = {k: np.dtype(v) for k, v in scalar.items()}
        self.sequences_per_shard = sequences_per_shard
        self.prefix = prefix
        self.shards: list[str] = []
        self.num_sequences = 0
        self._reset()

    def _reset(self) -> None:
        self._ragged_buf: dict[str, list[np.ndarray]] = {k: [] for k in self.ragged}
        self._scalar_buf: dict[str, list] = {k: [] for k in self.scalar}
        self._rows = 0

    def add(self, **row: Any) -> None:
        for name, dtype in self.ragged.items():
            self._ragged_buf[name].append(np.asarray(row[name], dtype=dtype))
        for name in self.scalar:
            self._scalar_buf[name].append(row[name])
        self._rows += 1
        self.num_sequences += 1
        if self._rows >= self.sequences_per_shard:
            self._flush()

    def add_batch(self, ragged: dict[str, list[np.ndarray]], scalar: dict[str, Any]) -> None:
        """Add many rows at once (same fields as add)."""
        n = len(next(iter(scalar.values()))) if scalar else len(next(iter(ragged.values())))
        for i in range(n):
            self.add(**{k: v[i] for k, v in ragged.items()}, **{k: v[i] for k, v in scalar.items()})

    def _flush(self) -> None:
        if self._rows == 0:
            return
        name = f"{self.prefix}-{len(self.shards):05d}"
        for field, dtype in self.ragged.items():
            parts = self._ragged_buf[field]
            lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
            offsets = np.zeros(len(parts) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            flat = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
            np.save(self.out_dir / f"{name}.{field}.npy", flat)
            np.save(self.out_dir / f"{name}.{field}.offsets.npy", offsets)
        for field, dtype in self.scalar.items():
            np.save(self.out_dir / f"{name}.{field}.npy", np.asarray(self._scalar_buf[field], dtype=dtype))
        self.shards.append(name)
        self._reset()

    def close(self) -> list[str]:
        self._flush()
        return list(self.shards)


class ShardedArrays:
    """Memory-mapped reader over every shard of an artifact: `arrays[i]` is one sequence's fields."""

    def __init__(self, directory: str | Path, prefix: str = "shard"):
        self.directory = Path(directory)
        names = sorted({p.name.split(".")[0] for p in self.directory.glob(f"{prefix}-*.npy")})
        if not names:
            raise ArtifactError(f"'{directory}' holds no {prefix}-*.npy data files", hint="rerun the stage")
        self.shard_names = names
        self.shards: list[dict[str, np.ndarray]] = []
        self.ragged_fields: set[str] = set()
        counts = []
        for name in names:
            arrays: dict[str, np.ndarray] = {}
            for path in sorted(self.directory.glob(f"{name}.*.npy")):
                parts = path.name[len(name) + 1 : -len(".npy")]
                arrays[parts] = np.load(path, mmap_mode="r")
            for key in arrays:
                if key.endswith(".offsets"):
                    self.ragged_fields.add(key[: -len(".offsets")])
            self.shards.append(arrays)
            counts.append(self._count(arrays))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.num_sequences = int(self.starts[-1])

    def _count(self, arrays: dict[str, np.ndarray]) -> int:
        for key, arr in arrays.items():
            if key.endswith(".offsets"):
                return len(arr) - 1
        return len(next(iter(arrays.values())))

    @property
    def fields(self) -> list[str]:
        return sorted(k for k in self.shards[0] if not k.endswith(".offsets"))

    def __len__(self) -> int:
        return self.num_sequences

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_sequences:
            raise IndexError(index)
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        return shard, index - int(self.starts[shard])

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, local = self.locate(int(index))
        arrays = self.shards[shard]
        row: dict[str, Any] = {}
        for key, arr in arrays.items():
            if key.endswith(".offsets"):
                continue
            if key in self.ragged_fields:
                off = arrays[f"{key}.offsets"]
                row[key] = arr[off[local] : off[local + 1]]
            else:
                row[key] = arr[local]
        return row

    def lengths(self, field: str = "input_ids") -> np.ndarray:
        """Per-sequence length of a ragged field, for every sequence in order (int64)."""
        return np.concatenate([np.diff(np.asarray(s[f"{field}.offsets"])) for s in self.shards])

    def column(self, field: str) -> np.ndarray:
        """A scalar field for every sequence, concatenated."""
        return np.concatenate([np.asarray(s[field]) for s in self.shards])

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        for i in range(self.num_sequences):
            yield self[i]
