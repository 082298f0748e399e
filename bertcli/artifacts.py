"""Artifact directories: atomic writes, file hashes, manifest.json (written last), and the one typed reader of a
pairs or masked artifact (`load_data`) with its tokenizer checks."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from bertcli import __version__
from bertcli.config import config_hash, config_to_yaml
from bertcli.errors import ArtifactError, OutputExistsError
from bertcli.schemas import stage_of_manifest
from bertcli.vocab import LoadedTokenizer, load_tokenizer

if TYPE_CHECKING:  # numpy is imported only by the stages that read arrays (train-vocab's memory is measured)
    from bertcli.shards import ShardedArrays

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
TOKENIZER_DIR = "tokenizer"
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


# ---------------------------------------------------------------- atomic output directories

def _is_ours(path: Path) -> bool:
    """A directory we may replace under --overwrite: empty, or one that a bertcli stage wrote."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    return not entries or (path / MANIFEST).is_file() or (path / CONFIG).is_file()


def remove_stale_temps(parent: Path, name: str = "*") -> None:
    """Temporary directories (`.NAME.tmp-PID`, `.NAME.old-PID`) of writers that died are ours to clean; those of a
    live process (another run writing right now) are left alone."""
    if not parent.is_dir():
        return
    for mark in (TMP_MARK, OLD_MARK):
        for entry in parent.glob(f".{name}{mark}*"):
            pid_text = entry.name.rsplit("-", 1)[-1]
            if entry.is_dir() and pid_text.isdigit() and not pid_alive(int(pid_text)):
                shutil.rmtree(entry, ignore_errors=True)


def pid_alive(pid: int) -> bool:
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
    remove_stale_temps(out.parent, out.name)
    tmp = out.parent / f".{out.name}{TMP_MARK}{os.getpid()}"
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
        old = out.parent / f".{out.name}{OLD_MARK}{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- manifests

def library_versions() -> dict[str, str]:
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
        if p.is_file() and p.name not in (MANIFEST, CONFIG) and TMP_MARK not in str(p.relative_to(directory))
    ]
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def file_sha256(path: str | Path) -> str:
    """sha256 of one file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprints(paths: list[Path]) -> list[dict]:
    """Path, size and sha256 of each input file, for a manifest's inputs."""
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths]


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
        "versions": library_versions(),
        "seed": getattr(cfg, "seed", None),
        "config_hash": config_hash(cfg),
        "inputs": inputs,
        "content_hash": content_hash(out_dir),
        "stats": stats,
    }
    manifest.update(extra or {})
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, then rename it into place: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
            f"'{directory}' has no manifest.json: it is not a bertcli artifact, or the run that wrote it did not "
            "finish",
            hint=_hint_for(stages) + " (rerun that stage with --overwrite to finish the job)",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})", hint="rerun the stage that wrote it") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest is not a JSON object", hint="rerun the stage that wrote it")
    if stages and manifest.get("stage") not in stages:
        raise ArtifactError(
            f"'{directory}' is a {manifest.get('stage')!r} artifact, expected {' or '.join(map(repr, stages))}",
            hint=_hint_for(stages),
        )
    return manifest


def _hint_for(stages: tuple[str, ...]) -> str:
    """Which command makes an artifact of these manifest stages (the stage registry knows)."""
    specs = [stage_of_manifest(s) for s in stages]
    named = [spec.command for spec in specs if spec is not None]
    return f"make it with `{'` or `'.join(named)}`" if named else "check the path"


# ---------------------------------------------------------------- pairs and masked artifacts, read


def check_tokenizer_matches(manifest: dict, loaded: LoadedTokenizer, what: str) -> None:
    """Refuse an artifact made with another tokenizer than `loaded`: recorded tokenizer hash, vocabulary size and
    special-token ids must all agree."""
    made_with = (manifest.get("inputs") or {}).get("tokenizer") or {}
    if made_with.get("hash") and made_with["hash"] != loaded.hash:
        raise ArtifactError(
            f"{what} was made with another tokenizer ({made_with.get('path')}, hash {made_with['hash'][:12]}) "
            f"than '{loaded.path}' (hash {loaded.hash[:12]})",
            hint="rebuild it with `bert pairs --tokenizer` pointing at the tokenizer you train with",
        )
    vocab_size = manifest.get("vocab_size")
    if vocab_size is not None and int(vocab_size) != loaded.vocab_size:
        raise ArtifactError(
            f"{what} records vocab_size {vocab_size}, but tokenizer '{loaded.path}' has {loaded.vocab_size} ids",
            hint="rebuild the artifact with this tokenizer",
        )
    ids = manifest.get("special_token_ids")
    if ids and ids != loaded.special_ids:
        raise ArtifactError(
            f"{what} records special-token ids {ids}, but tokenizer '{loaded.path}' has {loaded.special_ids}",
            hint="rebuild the artifact with this tokenizer",
        )


DATA_STAGES = ("pairs", "masked")
_DATA_FIELDS = {
    "pairs": {"input_ids", "type_boundary", "next_sentence_label"},
    "masked": {"input_ids", "type_boundary", "next_sentence_label", "masked_positions", "masked_labels"},
}


@dataclasses.dataclass
class DataArtifact:
    """A finished pairs or masked artifact, opened: its manifest, memory-mapped arrays and tokenizer, and the facts
    every reader needs (checked against each other when opened)."""

    path: Path
    kind: str  # "pairs" (dynamic masking at training time) or "masked" (static masking)
    manifest: dict
    arrays: ShardedArrays
    tokenizer: LoadedTokenizer  # the copy inside the artifact, which made its ids
    max_seq_length: int
    has_nsp: bool  # False for pairs made with nsp: false (single segments, next_sentence_label -1)
    token_dtype: str
    sequences_per_shard: int
    content_hash: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self.tokenizer.special_ids)

    @property
    def tokenizer_dir(self) -> Path:
        return self.tokenizer.path

    @property
    def tokenizer_hash(self) -> str:
        return self.tokenizer.hash


def load_data(path: str | Path, kinds: tuple[str, ...] = DATA_STAGES) -> DataArtifact:
    """Open a pairs or masked artifact (memory-mapped) and check its manifest, tokenizer and fields agree."""
    from bertcli.shards import ShardedArrays

    path = Path(path)
    manifest = load_manifest(path, kinds)
    kind = manifest["stage"]
    what = f"{kind} artifact '{path}'"
    for key, kind_of in (("max_seq_length", int), ("token_dtype", str)):
        if not isinstance(manifest.get(key), kind_of):
            raise ArtifactError(
                f"{path / MANIFEST}: '{key}' is missing or not a{'n integer' if kind_of is int else ' string'}",
                hint=f"the manifest is damaged; rebuild the artifact ({_hint_for((kind,))})",
            )
    if not (path / TOKENIZER_DIR).is_dir():
        raise ArtifactError(f"'{path}' has no {TOKENIZER_DIR}/ directory", hint=f"rebuild it ({_hint_for((kind,))})")
    loaded = load_tokenizer(path / TOKENIZER_DIR)
    check_tokenizer_matches(manifest, loaded, what)
    arrays = ShardedArrays(path)
    missing = _DATA_FIELDS[kind] - set(arrays.fields)
    if missing:
        raise ArtifactError(
            f"'{path}': the {kind} artifact lacks the fields {', '.join(sorted(missing))}",
            hint="rebuild it with the current `bert pairs` / `bert mask`",
        )
    return DataArtifact(
        path=path,
        kind=kind,
        manifest=manifest,
        arrays=arrays,
        tokenizer=loaded,
        max_seq_length=int(manifest["max_seq_length"]),
        has_nsp=manifest.get("nsp", True) is not False,
        token_dtype=str(manifest["token_dtype"]),
        sequences_per_shard=_sequences_per_shard(path, manifest, arrays),
        content_hash=str(manifest.get("content_hash", "")),
    )


def _sequences_per_shard(path: Path, manifest: dict, arrays: ShardedArrays) -> int:
    """The shard size the artifact was written with: its manifest's, else its config's (artifacts written before
    the manifest recorded it), else the first shard's size."""
    if isinstance(manifest.get("sequences_per_shard"), int):
        return manifest["sequences_per_shard"]
    import yaml

    config_path = path / CONFIG
    if config_path.is_file():
        data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and isinstance(data.get("sequences_per_shard"), int):
            return data["sequences_per_shard"]
    return max(int(arrays.counts[0]), 1)
