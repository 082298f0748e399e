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
import socket
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
CHECKPOINT_MARKER = "checkpoint.json"  # a pretraining checkpoint's file list (checkpoints.MARKER)
RUN_MARKER = "bertcli-run.json"  # written first into a pretraining run directory (checkpoints.RUN_MARKER)
# Temporaries are named `.NAME.tmp-HOST-PID`: several nodes may write into one shared directory, and only the
# writer's own node can tell whether its process is alive.
_HOST = socket.gethostname().replace("/", "_")
_OWNER = f"{_HOST}-{os.getpid()}"


# ---------------------------------------------------------------- atomic output directories

def read_bertcli_manifest(directory: Path) -> dict | None:
    """The manifest of a directory that a bertcli stage wrote, else None. A manifest.json alone is not enough
    (browser extensions and many other tools have one): it must be a JSON object with bertcli's keys."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and {"format_version", "stage", "bertcli_version"} <= set(data):
        return data
    return None


def foreign_entries(directory: Path) -> list[str]:
    """Files in a bertcli artifact directory that its manifest does not list (something a person put there).
    Manifests written before the file list existed list nothing: then nothing is known to be foreign."""
    manifest = read_bertcli_manifest(directory)
    listed = manifest.get("files") if manifest else None
    if not isinstance(listed, dict):
        return []
    known = set(listed) | {MANIFEST, CONFIG}
    found = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(f for f in found if f not in known)


def remove_stale_temps(parent: Path, name: str = "*") -> None:
    """Clean what writers that died left in `parent` (those of a live process, another run writing right now, are
    left alone): a temporary `.NAME.tmp-PID` is removed; a `.NAME.old-PID` (the previous artifact, moved aside by an
    --overwrite killed between its two renames) is put back as NAME if NAME is missing, else removed. Each action
    is reported on stderr."""
    if not parent.is_dir():
        return
    for mark in (TMP_MARK, OLD_MARK):
        for entry in sorted(parent.glob(f".{name}{mark}*")):
            original_name, owner = entry.name[1:].rsplit(mark, 1)
            host, _, pid_text = owner.rpartition("-")
            # A process id means something on its own machine only: on a shared file system another node's
            # temporaries are left alone (names without a host are from before hosts were recorded).
            if not pid_text.isdigit() or (host and host != _HOST) or pid_alive(int(pid_text)):
                continue
            original = parent / original_name
            if mark == OLD_MARK and not original.exists() and not original.is_symlink():
                os.replace(entry, original)
                _note(f"restored '{original}' from '{entry.name}' (an --overwrite was interrupted)")
            elif entry.is_symlink() or entry.is_file():
                entry.unlink()
                _note(f"removed '{entry}', left by an interrupted run")
            else:
                shutil.rmtree(entry, ignore_errors=True)
                _note(f"removed '{entry}', left by an interrupted run")


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_output(
    path: str | Path, overwrite: bool, inputs: tuple[str | Path, ...] = (), stage: str | None = None
) -> Path:
    """Refuse an output that is, or lies inside, one of the stage's inputs; refuse an existing output unless
    --overwrite; never replace what bertcli did not write. A symbolic link is followed (its target is the output).

    --overwrite replaces only an artifact of the same `stage` whose manifest lists its files: another stage's
    output (a pretraining run given as a fine-tune's --output) is a mistaken path far more often than a wish to
    destroy it, and in a directory whose manifest lists no files (a pretraining run, which keeps checkpoints and
    the user's notes beside its own files) a user's files cannot be told from bertcli's."""
    out = Path(path)
    if out.is_symlink():
        out = out.resolve()
    real = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if _inside(real, source) or _inside(source, real):
            raise OutputExistsError(
                f"output '{path}' is the input '{given}' or lies inside it (or holds it)",
                hint="choose an --output outside every input: bertcli never writes into its inputs",
            )
    if not out.exists():
        return out
    if not out.is_dir():
        raise OutputExistsError(f"output '{path}' exists and is a file", hint="choose another --output")
    empty = not any(out.iterdir())
    if not empty and read_bertcli_manifest(out) is None:
        raise OutputExistsError(
            f"output '{path}' exists and is not a bertcli artifact (no bertcli manifest.json in it)",
            hint="choose another --output; bertcli never deletes files it did not write",
        )
    manifest = None if empty else read_bertcli_manifest(out)
    if manifest is not None and stage is not None and manifest.get("stage") != stage:
        raise OutputExistsError(
            f"output '{path}' holds a {manifest.get('stage')} artifact, which {stage} does not replace",
            hint="choose another --output; bertcli never replaces another stage's output",
        )
    if manifest is not None and overwrite and not isinstance(manifest.get("files"), dict):
        raise OutputExistsError(
            f"output '{path}' holds a bertcli artifact whose manifest does not list its files, so files of yours in "
            "it could not be told apart and kept",
            hint="choose another --output, or remove the old artifact yourself",
        )
    foreign = foreign_entries(out)
    if foreign:
        raise OutputExistsError(
            f"output '{path}' holds files its manifest does not list ({', '.join(foreign[:3])}"
            f"{', …' if len(foreign) > 3 else ''})",
            hint="move them out first, or choose another --output; bertcli never deletes files it did not write",
        )
    if not overwrite and not empty:
        raise OutputExistsError(
            f"output '{path}' already holds a bertcli artifact",
            hint="pass --overwrite to replace it, or choose another --output",
        )
    return out


def temp_dir_for(out: Path) -> Path:
    """A fresh, empty temporary sibling of `out` (`.NAME.tmp-PID`) to write into before move_into_place."""
    tmp = out.parent / f".{out.name}{TMP_MARK}{_OWNER}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def move_into_place(tmp: Path, out: Path, durable: bool = False) -> None:
    """Rename a finished temporary directory to `out`. An existing `out` is first renamed aside (`.NAME.old-PID`,
    which remove_stale_temps puts back if this process dies between the two renames), then deleted. durable: fsync
    the directory entries too (checkpoints, whose files the caller has fsynced)."""
    if durable:
        _fsync_dir(tmp)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{OLD_MARK}{_OWNER}"
        os.replace(out, old)
    os.replace(tmp, out)
    if durable:
        _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    path: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = (), stage: str | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on failure it is removed."""
    out = check_output(path, overwrite, inputs, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)
    tmp = temp_dir_for(out)
    try:
        yield tmp
        if out.exists():
            check_output(out, overwrite, (), stage)  # it may have appeared while we worked
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def hash_files(directory: str | Path) -> tuple[str, dict[str, dict]]:
    """One pass over the data files (config.yaml and manifest.json left out): the content hash (sha256 over
    relative paths and bytes) and each file's size and sha256."""
    directory = Path(directory)
    whole = hashlib.sha256()
    files: dict[str, dict] = {}
    for path in _data_files(directory):
        rel = path.relative_to(directory).as_posix()
        one = hashlib.sha256()
        whole.update(rel.encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                whole.update(block)
                one.update(block)
        whole.update(b"\0")
        files[rel] = {"bytes": path.stat().st_size, "sha256": one.hexdigest()}
    return whole.hexdigest(), files


def content_hash(directory: str | Path) -> str:
    """sha256 over the data files' relative paths and bytes (config.yaml and manifest.json left out)."""
    return hash_files(directory)[0]


def new_manifest(stage: str, cfg: Any, inputs: dict, stats: dict, config_hash_value: str | None = None) -> dict:
    """The keys every manifest has, stage artifacts' and pretraining runs' alike."""
    return {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "bertcli_version": __version__,
        "versions": library_versions(),
        "seed": getattr(cfg, "seed", None),
        "config_hash": config_hash_value if config_hash_value is not None else config_hash(cfg),
        "inputs": inputs,
        "stats": stats,
    }


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
    manifest = new_manifest(stage, cfg, inputs, stats)
    # every data file with its size and sha256: verified when the artifact is opened, and --overwrite replaces
    # the directory only while it holds nothing else
    manifest["content_hash"], manifest["files"] = hash_files(out_dir)
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
    if not path.is_file() and (directory / CHECKPOINT_MARKER).is_file():
        raise ArtifactError(
            f"'{directory}' is a checkpoint of a pretraining run (a model), not an artifact with a manifest",
            hint=_hint_for(stages) if stages else f"inspect the run directory '{directory.parent}', or use the "
            "model with bert fill-mask / score / finetune",
        )
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
    if read_bertcli_manifest(directory) is None:
        raise ArtifactError(
            f"{path} was not written by bertcli (it lacks 'format_version', 'stage' and 'bertcli_version')",
            hint=_hint_for(stages) if stages else "point at a directory a bert stage wrote",
        )
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


def check_tokenizer_matches(manifest: dict, loaded: LoadedTokenizer, what: str,
                            fix: str = "rebuild it with `bert pairs --tokenizer` pointing at the tokenizer you train "
                                       "with") -> None:
    """Refuse an artifact made with another tokenizer than `loaded`: recorded tokenizer hash, vocabulary size and
    special-token ids must all agree. fix: the hint when the hashes differ."""
    made_with = (manifest.get("inputs") or {}).get("tokenizer") or {}
    if made_with.get("hash") and made_with["hash"] != loaded.hash:
        raise ArtifactError(
            f"{what} was made with another tokenizer ({made_with.get('path')}, hash {made_with['hash'][:12]}) "
            f"than '{loaded.path}' (hash {loaded.hash[:12]})",
            hint=fix,
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
# Artifacts up to this size have every file's sha256 recomputed when opened (sizes are always checked); sha256
# reads about 1 GB/s here, so this costs at most a few seconds. BERTCLI_VERIFY_MAX_BYTES changes it (0: sizes only).
VERIFY_HASH_MAX_BYTES = 4 << 30


def verify_files(path: Path, manifest: dict) -> None:
    """Every file the manifest lists exists with its recorded size, and (below VERIFY_HASH_MAX_BYTES) its sha256."""
    listed = manifest.get("files")
    if listed is None:
        return  # written before manifests listed their files
    if not isinstance(listed, dict) or not all(isinstance(m, dict) for m in listed.values()):
        raise ArtifactError(f"{path / MANIFEST}: 'files' is not a mapping of file names to sizes and hashes",
                            hint=f"the manifest is damaged; rebuild the artifact ({_hint_for((manifest['stage'],))})")
    limit_text = os.environ.get("BERTCLI_VERIFY_MAX_BYTES", str(VERIFY_HASH_MAX_BYTES))
    if not limit_text.isdigit():
        raise ArtifactError(f"BERTCLI_VERIFY_MAX_BYTES={limit_text!r} is not a number of bytes",
                            hint="set it to a whole number (0: check sizes only), or unset it")
    limit = int(limit_text)
    total = sum(int(meta.get("bytes", 0)) for meta in listed.values())
    remedy = _hint_for((manifest["stage"],))
    rebuild = f"the artifact was changed or damaged after it was written; rebuild it ({remedy})"
    for rel, meta in sorted(listed.items()):
        file = path / rel
        if not file.is_file():
            raise ArtifactError(f"'{file}' is missing (listed in {path / MANIFEST})", hint=rebuild)
        if file.stat().st_size != meta.get("bytes"):
            raise ArtifactError(
                f"'{file}' has {file.stat().st_size} bytes, its manifest says {meta.get('bytes')}", hint=rebuild
            )
    if total > limit:
        return
    for rel, meta in sorted(listed.items()):
        if file_sha256(path / rel) != meta.get("sha256"):
            raise ArtifactError(f"'{path / rel}' does not match the sha256 in its manifest", hint=rebuild)


def check_arrays(path: Path, arrays: ShardedArrays, vocab_size: int, max_seq_length: int) -> None:
    """Per shard, on the memory maps: offsets consistent, sequences no longer than max_seq_length, every id below
    vocab_size, masked positions inside their sequence. A bad shard is refused here, not in the middle of training."""
    import numpy as np

    for name, shard in zip(arrays.shard_names, arrays.shards):
        where = f"'{path / name}.*.npy'"
        for field in arrays.ragged_fields:
            offsets = shard[f"{field}.offsets"]
            if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(shard[field]) or (np.diff(offsets) < 0).any():
                raise ArtifactError(
                    f"{where}: the offsets of '{field}' do not fit its values", hint="rebuild the artifact"
                )
        lengths = np.diff(shard["input_ids.offsets"])
        if len(lengths) and int(lengths.max()) > max_seq_length:
            raise ArtifactError(
                f"{where}: a sequence of {int(lengths.max())} tokens, above the manifest's max_seq_length "
                f"{max_seq_length}",
                hint="rebuild the artifact",
            )
        for field in ("input_ids", "masked_labels"):
            if field in shard and len(shard[field]) and int(shard[field].max()) >= vocab_size:
                raise ArtifactError(
                    f"{where}: token id {int(shard[field].max())} in '{field}' is not below vocab_size {vocab_size}",
                    hint="the data was made with another tokenizer, or damaged; rebuild it",
                )
        if "masked_positions" in shard and len(shard["masked_positions"]):
            counts = np.diff(shard["masked_positions.offsets"])
            if int(shard["masked_positions"].max()) >= max_seq_length or (
                np.repeat(lengths, counts) <= shard["masked_positions"]
            ).any():
                raise ArtifactError(
                    f"{where}: a masked position lies outside its sequence", hint="rebuild the artifact"
                )
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
    damaged = f"the manifest is damaged; rebuild the artifact ({_hint_for((kind,))})"
    for key, kind_of in (("max_seq_length", int), ("token_dtype", str)):
        if not isinstance(manifest.get(key), kind_of) or isinstance(manifest.get(key), bool):
            raise ArtifactError(
                f"{path / MANIFEST}: '{key}' is missing or not a{'n integer' if kind_of is int else ' string'}",
                hint=damaged,
            )
    # Keys read below only when present (older manifests lack some): when present, of their type, or a damaged
    # manifest ends in a TypeError deep inside a check instead of a line naming the key.
    optional = {"vocab_size": int, "inputs": dict, "special_token_ids": dict, "nsp": bool, "format_version": int}
    for key, kind_of in optional.items():
        value = manifest.get(key)
        if value is not None and (not isinstance(value, kind_of) or (kind_of is int and isinstance(value, bool))):
            raise ArtifactError(f"{path / MANIFEST}: '{key}' is {json.dumps(value)[:40]}, expected {kind_of.__name__}",
                                hint=damaged)
    if manifest.get("format_version", 1) != 1:
        raise ArtifactError(f"{path / MANIFEST}: format_version {manifest['format_version']}, this bertcli reads 1",
                            hint="use the bertcli version that wrote it, or rebuild the artifact with this one")
    if not (path / TOKENIZER_DIR).is_dir():
        raise ArtifactError(f"'{path}' has no {TOKENIZER_DIR}/ directory", hint=f"rebuild it ({_hint_for((kind,))})")
    loaded = load_tokenizer(path / TOKENIZER_DIR)
    check_tokenizer_matches(manifest, loaded, what)
    verify_files(path, manifest)
    arrays = ShardedArrays(path)
    missing = _DATA_FIELDS[kind] - set(arrays.fields)
    if missing:
        raise ArtifactError(
            f"'{path}': the {kind} artifact lacks the fields {', '.join(sorted(missing))}",
            hint="rebuild it with the current `bert pairs` / `bert mask`",
        )
    check_arrays(path, arrays, loaded.vocab_size, int(manifest["max_seq_length"]))
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
