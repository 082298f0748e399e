"""Artifact directories: atomic writes, manifest.json (written last), and sharded memory-mapped arrays."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bertcli import __version__
from bertcli.config import config_hash, config_to_yaml
from bertcli.errors import ArtifactError, OutputExistsError
from bertcli.schemas import EXECUTION_ONLY_KEYS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
_TMP_MARK = ".tmp-"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits, int32 beyond (ids are never negative)."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


# ---------------------------------------------------------------- atomic output directories

def _is_ours(path: Path) -> bool:
    """A directory we may replace under --overwrite: empty, or one that a bertcli stage wrote."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    return not entries or (path / MANIFEST).is_file() or (path / CONFIG).is_file()


def _remove_stale_temps(parent: Path, name: str) -> None:
    """Temp directories of earlier runs that died (their pid is gone) are ours to clean."""
    if not parent.is_dir():
        return
    for entry in parent.glob(f".{name}{_TMP_MARK}*"):
        pid_text = entry.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless --overwrite, and refuse to replace what a bertcli stage did not write."""
    out = Path(path)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"output '{out}' already exists", hint="pass --overwrite to replace it, or choose another --output"
            )
        if not _is_ours(out):
            raise OutputExistsError(
                f"output '{out}' exists and was not written by bertcli (no manifest.json or config.yaml in it)",
                hint="choose another --output; bertcli never deletes files it did not write",
            )
    return out


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on failure it is removed."""
    out = check_output(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out.parent, out.name)
    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        check_output(out, overwrite)  # it may have appeared while we worked
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- manifests

def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "bertcli": __version__, "numpy": np.__version__}
    for name in ("torch", "transformers", "tokenizers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
            continue
        try:  # read from the installed metadata: importing torch just to name it costs ~150 MB
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _data_files(directory: Path) -> list[Path]:
    files = [
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, CONFIG) and _TMP_MARK not in str(p.relative_to(directory))
    ]
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def content_hash(directory: str | Path) -> str:
    """sha256 over the data files' relative paths and bytes (config.yaml and manifest.json left out)."""
    directory = Path(directory)
    h = hashlib.sha256()
    for path in _data_files(directory):
        h.update(path.relative_to(directory).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def write_manifest(
    out_dir: str | Path,
    stage: str,
    cfg: Any,
    stats: dict,
    inputs: dict,
    extra: dict | None = None,
) -> dict:
    """Write config.yaml, then manifest.json last: its presence means the stage finished."""
    out_dir = Path(out_dir)
    (out_dir / CONFIG).write_text(config_to_yaml(cfg), encoding="utf-8")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "bertcli_version": __version__,
        "versions": _versions(),
        "seed": getattr(cfg, "seed", None),
        "config_hash": config_hash(cfg, exclude=EXECUTION_ONLY_KEYS),
        "inputs": inputs,
        "content_hash": content_hash(out_dir),
        "stats": stats,
    }
    manifest.update(extra or {})
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def load_manifest(directory: str | Path, stages: tuple[str, ...] = ()) -> dict:
    """The manifest of a finished artifact; a clear ArtifactError if it is missing, unfinished or of another stage."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"'{directory}' does not exist", hint=_hint_for(stages))
    if not directory.is_dir():
        raise ArtifactError(f"'{directory}' is a file, expected an artifact directory", hint=_hint_for(stages))
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"'{directory}' has no manifest.json: it is not a bertcli artifact, or the run that wrote it did not finish",
            hint=_hint_for(stages) + " (rerun that stage with --overwrite to finish the job)",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})", hint="rerun the stage that wrote it") from exc
    if stages and manifest.get("stage") not in stages:
        raise ArtifactError(
            f"'{directory}' is a {manifest.get('stage')!r} artifact, expected {' or '.join(map(repr, stages))}",
            hint=_hint_for(stages),
        )
    return manifest


def _hint_for(stages: tuple[str, ...]) -> str:
    commands = {"train-vocab": "bert train-vocab", "pairs": "bert pairs", "masked": "bert mask", "mask": "bert mask"}
    named = [commands[s] for s in stages if s in commands]
    return f"make it with `{'` or `'.join(named)}`" if named else "check the path"


# ---------------------------------------------------------------- sharded ragged arrays

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
