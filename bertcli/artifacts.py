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

from bertcli import __version__
from bertcli.config import config_hash, config_to_yaml
from bertcli.errors import ArtifactError, OutputExistsError
from bertcli.schemas import EXECUTION_ONLY_KEYS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
_TMP_MARK = ".tmp-"


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
    versions = {"python": platform.python_version(), "bertcli": __version__}
    for name in ("numpy", "torch", "transformers", "tokenizers"):
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


# ---------------------------------------------------------------- sharded arrays live in bertcli.shards

_SHARD_NAMES = {"ShardWriter", "ShardedArrays", "token_dtype"}


def __getattr__(name: str) -> Any:
    # numpy is imported only by stages that make arrays: `bert train-vocab` needs none, and its peak memory is
    # measured against the bare tokenizers trainer.
    if name in _SHARD_NAMES:
        from bertcli import shards

        return getattr(shards, name)
    raise AttributeError(name)
