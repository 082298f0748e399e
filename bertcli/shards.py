"""Sharded ragged arrays: the on-disk, memory-mapped format of the pairs and masked artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import ArtifactError

SHARD_PREFIX = "shard"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits, int32 beyond (ids are never negative)."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


class ShardWriter:
    """Write sequences as shards of flat .npy arrays: ragged fields as (flat, offsets), scalar fields one per sequence.

    Sequences come in blocks: ragged fields as (flat, lengths), scalar fields as arrays. Shards hold exactly
    sequences_per_shard sequences (the last fewer), whatever the block sizes, so the files depend only on the
    sequence order. Memory is bounded by one shard, never by the corpus.
    """

    def __init__(self, out_dir: str | Path, ragged: dict[str, Any], scalar: dict[str, Any], sequences_per_shard: int):
        self.out_dir = Path(out_dir)
        self.ragged = {k: np.dtype(v) for k, v in ragged.items()}
        self.scalar = {k: np.dtype(v) for k, v in scalar.items()}
        self.sequences_per_shard = sequences_per_shard
        self.shards: list[str] = []
        self.num_sequences = 0
        # pieces of the shard being filled: (flat ragged values, ragged lengths, scalar values), each by field
        self._pending: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self._rows = 0

    def add_block(self, ragged: dict[str, tuple[np.ndarray, np.ndarray]], scalar: dict[str, np.ndarray]) -> None:
        n = len(next(iter(scalar.values())))
        bounds = {k: np.concatenate([[0], np.cumsum(lengths)]) for k, (_, lengths) in ragged.items()}
        start = 0
        while start < n:
            take = min(n - start, self.sequences_per_shard - self._rows)
            stop = start + take
            flats = {k: flat[bounds[k][start] : bounds[k][stop]] for k, (flat, _) in ragged.items()}
            lengths = {k: np.asarray(lens[start:stop], np.int64) for k, (_, lens) in ragged.items()}
            scalars = {k: np.asarray(v[start:stop]) for k, v in scalar.items()}
            self._pending.append((flats, lengths, scalars))
            self._rows += take
            self.num_sequences += take
            start = stop
            if self._rows == self.sequences_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"{SHARD_PREFIX}-{len(self.shards):05d}"
        for field, dtype in self.ragged.items():
            flat = np.concatenate([p[0][field] for p in self._pending]).astype(dtype, copy=False)
            lengths = np.concatenate([p[1][field] for p in self._pending])
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            np.save(self.out_dir / f"{name}.{field}.npy", flat)
            np.save(self.out_dir / f"{name}.{field}.offsets.npy", offsets)
        for field, dtype in self.scalar.items():
            values = np.concatenate([p[2][field] for p in self._pending]).astype(dtype, copy=False)
            np.save(self.out_dir / f"{name}.{field}.npy", values)
        self.shards.append(name)
        self._pending = []
        self._rows = 0

    def close(self) -> list[str]:
        self._flush()
        return list(self.shards)


class ShardedArrays:
    """Memory-mapped reader over every shard of an artifact: `arrays[i]` is one sequence's fields."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        names = sorted({p.name.split(".")[0] for p in self.directory.glob(f"{SHARD_PREFIX}-*.npy")})
        if not names:
            raise ArtifactError(f"'{directory}' holds no {SHARD_PREFIX}-*.npy data files", hint="rerun the stage")
        self.shard_names = names
        self.shards: list[dict[str, np.ndarray]] = []
        self.ragged_fields: set[str] = set()
        counts = []
        for name in names:
            arrays: dict[str, np.ndarray] = {}
            for path in sorted(self.directory.glob(f"{name}.*.npy")):
                parts = path.name[len(name) + 1 : -len(".npy")]
                try:
                    arrays[parts] = np.load(path, mmap_mode="r")
                except (ValueError, OSError) as exc:  # truncated or overwritten: numpy's words are cryptic
                    raise ArtifactError(
                        f"'{path}' is damaged ({str(exc).splitlines()[0][:120]})",
                        hint="rebuild the artifact with the stage that wrote it",
                    ) from exc
            for key in arrays:
                if key.endswith(".offsets"):
                    self.ragged_fields.add(key[: -len(".offsets")])
            if self.shards and set(arrays) != set(self.shards[0]):
                missing = sorted(set(self.shards[0]) ^ set(arrays))
                raise ArtifactError(
                    f"'{self.directory / name}': shard files differ from the first shard's ({', '.join(missing)})",
                    hint="a file is missing or left over; rebuild the artifact",
                )
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

    def read_range(self, start: int, stop: int, field: str = "input_ids") -> dict[str, np.ndarray]:
        """Sequences [start, stop) across shards: the ragged `field` flat with "offsets" (n+1,), and every scalar
        field (n,)."""
        flats, lengths = [], []
        scalar_fields = [f for f in self.fields if f not in self.ragged_fields]
        parts: dict[str, list[np.ndarray]] = {f: [] for f in scalar_fields}
        for s, shard in enumerate(self.shards):
            lo, hi = int(self.starts[s]), int(self.starts[s + 1])
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if a >= b:
                continue
            off = np.asarray(shard[f"{field}.offsets"][a : b + 1])
            flats.append(np.asarray(shard[field][off[0] : off[-1]]))
            lengths.append(np.diff(off))
            for f in scalar_fields:
                parts[f].append(np.asarray(shard[f][a:b]))
        lengths_all = np.concatenate(lengths)
        offsets = np.zeros(len(lengths_all) + 1, np.int64)
        np.cumsum(lengths_all, out=offsets[1:])
        scalars = {f: np.concatenate(v) for f, v in parts.items()}
        return {field: np.concatenate(flats), "offsets": offsets, **scalars}
