"""A pretraining run's directory: atomic, verified step and final checkpoints, the training state they carry, and the
checks that decide whether an output is a new run, a run to resume, or something not to touch."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file

from bertcli import __version__, dist
from bertcli.artifacts import (
    DataArtifact,
    file_sha256,
    move_into_place,
    read_bertcli_manifest,
    remove_stale_temps,
    temp_dir_for,
    write_json_atomic,
)
from bertcli.config import config_to_dict, keys_with_role, load_config
from bertcli.errors import ArtifactError, ConfigError, OutputExistsError
from bertcli.metrics import METRICS_FILE, PLOT_FILE, TENSORBOARD_DIR, TRACKER_FILE, WANDB_DIR
from bertcli.schemas import PretrainConfig
from bertcli.vocab import copy_tokenizer_files

STEP_PREFIX = "step-"
FINAL = "final"
MARKER = "checkpoint.json"  # written last inside a checkpoint: lists every file with size and sha256
STATE_DIR = "training_state"
RUN_CONFIG = "config.yaml"
RUN_MANIFEST = "manifest.json"
# Written first into a run directory: what makes it recognisably bertcli's (a config.yaml or a manifest.json alone
# is not: many projects have one), so that --overwrite and --resume never take a user's folder for a run.
RUN_MARKER = "bertcli-run.json"
# What a run writes at the top of its directory (besides step-* and temporaries): --overwrite removes these only.
RUN_ENTRIES = {
    RUN_MARKER, RUN_CONFIG, METRICS_FILE, RUN_MANIFEST, FINAL, PLOT_FILE, TENSORBOARD_DIR, METRICS_FILE + ".tmp",
    TRACKER_FILE, WANDB_DIR,
}
RESUMABLE_KEYS = keys_with_role(PretrainConfig, "resumable")  # may change between a run and its --resume
# Tied to the word embeddings: save_pretrained leaves them out, and loading rebuilds them.
_TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


# ---------------------------------------------------------------------------------------------- training state

@dataclass
class TrainState:
    """Everything besides model and optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # next global batch of `epoch` to train on
    sequences: int = 0
    tokens: int = 0  # non-padding tokens trained on
    elapsed_s: float = 0.0  # training wall time so far (over all resumptions)
    warmup_progress: float | None = None  # training progress at the end of warmup (fixes the decay span)
    skipped_batches: list[list[int]] = field(default_factory=list)  # [epoch, batch] dropped after a non-finite loss
    rollbacks: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# ---------------------------------------------------------------------------------------------- checkpoints

def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    out_dir: Path,
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    state: TrainState,
    run_info: dict,
    tokenizer_dir: Path,
) -> Path:
    """Write a checkpoint to a temporary directory, marker last, then rename it into place (atomic).

    A reader treats a directory as a checkpoint only if the marker exists and every file it lists has the
    recorded size and sha256, so a kill at any moment never leaves a checkpoint that --resume would load. The
    temporary names are artifacts' (`.NAME.tmp-PID`, `.NAME.old-PID`), so artifacts.remove_stale_temps cleans them.
    """
    final_path = out_dir / name
    tmp = temp_dir_for(final_path)
    try:
        model.save_pretrained(tmp)
        copy_tokenizer_files(tokenizer_dir, tmp)
        state_dir = tmp / STATE_DIR
        state_dir.mkdir()
        torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["torch_cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()])
        torch.save(rng, state_dir / "rng.pt")
        payload = {
            "state": state.to_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "scheduler": {"kind": run_info["lr_schedule"], "step": state.step,
                          "warmup_progress": state.warmup_progress},
            "run": run_info,
        }
        (state_dir / "state.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(path)
            files[path.relative_to(tmp).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        marker = {"format_version": 1, "step": state.step, "bertcli_version": __version__, "files": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _fsync_file(tmp / MARKER)
        move_into_place(tmp, final_path, durable=True)
    except BaseException:  # a full disk or a kill: no partial checkpoint is left filling the disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_path


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else why not."""
    marker = path / MARKER
    if not marker.is_file():
        return "no checkpoint.json (written last): the checkpoint was never finished"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = info["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        return f"unreadable checkpoint.json ({exc})"
    if "model.safetensors" not in files:
        return "no model.safetensors listed (weights are only read from safetensors)"
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, expected {meta['size']}"
        if file_sha256(p) != meta["sha256"]:
            return f"{rel} does not match its recorded sha256"
    return None


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Step checkpoint directories (complete or not), oldest first."""
    found = []
    for p in out_dir.glob(f"{STEP_PREFIX}*"):
        suffix = p.name[len(STEP_PREFIX):]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any
) -> tuple[TrainState, dict]:
    """Restore model (safetensors only), optimizer (torch.load weights_only=True), scaler and RNG states.

    Returns the training state and the run information saved with it (config and data hashes)."""
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - _TIED_KEYS:
        raise ValueError(f"weights do not fit the model (missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})")
    optimizer.load_state_dict(torch.load(path / STATE_DIR / "optimizer.pt", weights_only=True, map_location="cpu"))
    payload = json.loads((path / STATE_DIR / "state.json").read_text(encoding="utf-8"))
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    rng = torch.load(path / STATE_DIR / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available() and len(rng["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(rng["torch_cuda"]))
    return TrainState.from_dict(payload["state"]), payload["run"]


def newest_valid_checkpoint(out_dir: Path, ctx: dist.DistContext | None = None) -> Path | None:
    """The newest complete step checkpoint; corrupt or unfinished ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(out_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        dist.warn_main(ctx, f"skipping checkpoint '{path}': {problem}")
    return None


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete the oldest complete step checkpoints beyond the newest `keep`."""
    complete = [(s, p) for s, p in list_checkpoints(out_dir) if (p / MARKER).is_file()]
    for _, path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def resume_from_newest(
    out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, data: DataArtifact,
    ctx: dist.DistContext,
) -> tuple[TrainState, Path] | None:
    """Load the newest checkpoint that is complete and loads on every rank; others are skipped with a warning.

    Raises ArtifactError when the chosen checkpoint was trained on other data or with another tokenizer."""
    candidates = [str(p) for _, p in reversed(list_checkpoints(out_dir))] if ctx.is_main else None
    for path in map(Path, dist.broadcast_object(ctx, candidates)):
        problem = verify_checkpoint(path) if ctx.is_main else None
        problem = dist.broadcast_object(ctx, problem)
        if problem is None:
            try:
                state, run_info = load_checkpoint(path, model, optimizer, scaler)
            except Exception as exc:  # a pickle refused by weights_only, wrong shapes, damaged files…
                problem = f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        if dist.any_rank(ctx, problem is not None):
            dist.warn_main(ctx, f"skipping checkpoint '{path}': {problem or 'another rank could not load it'}")
            continue
        check_resume_inputs(run_info, data)
        return state, path
    return None


def check_resume_inputs(run_info: dict, data: DataArtifact) -> None:
    """Refuse to continue a run on other data or another tokenizer than its checkpoint recorded."""
    if run_info["tokenizer_hash"] != data.tokenizer_hash:
        raise ArtifactError(
            f"--resume: the data '{data.path}' was made with another tokenizer than the run's checkpoints",
            hint="resume with the data the run was started with",
        )
    if run_info["data_content_hash"] != data.content_hash:
        raise ArtifactError(
            f"--resume: the data '{data.path}' differs from the data the run was started with",
            hint="resume with the same data artifact (its data position would be meaningless otherwise)",
        )


# ---------------------------------------------------------------------------------------------- run directory

def is_run_dir(path: Path) -> bool:
    """A directory that `bert pretrain` wrote: it holds the run marker, or (runs begun before the marker existed)
    a bertcli manifest or a finished bertcli checkpoint."""
    if not path.is_dir():
        return False
    if (path / RUN_MARKER).is_file() or read_bertcli_manifest(path) is not None:
        return True
    return any(_is_bertcli_checkpoint(p) for p in path.iterdir() if p.name == FINAL or p.name.startswith(STEP_PREFIX))


def _is_bertcli_checkpoint(path: Path) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and "bertcli_version" in marker and "files" in marker


def prepare_output(cfg: PretrainConfig, resume: bool, overwrite: bool, ctx: dist.DistContext) -> bool:
    """Check the run directory (all ranks, read only) and decide whether this is a resumption.

    Returns True when an existing run is to be continued.
    """
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' is a file", hint="choose another --output")
    has_run = is_run_dir(out)
    if out.is_dir() and any(out.iterdir()) and not has_run:
        raise OutputExistsError(
            f"output '{out}' exists and holds files that are not a bertcli run",
            hint="choose another --output; bertcli never deletes files it did not write",
        )
    if not has_run:
        if resume:
            dist.log_main(ctx, f"note: --resume given but '{out}' holds no run yet; starting from step 0")
        return False
    if overwrite and not resume:
        return False
    if not resume:
        raise OutputExistsError(
            f"output '{out}' holds another run",
            hint="pass --resume to continue it, --overwrite to start over, or choose another --output",
        )
    saved = out / RUN_CONFIG
    if saved.is_file():
        previous = load_config(PretrainConfig, str(saved))
        diffs = sorted(_dict_diff(config_to_dict(previous), config_to_dict(cfg), "", RESUMABLE_KEYS))
        if diffs:
            raise ConfigError(
                f"--resume: the config differs from the run's {saved} in {', '.join(diffs)}",
                hint=f"use the same config to continue the run (only {', '.join(RESUMABLE_KEYS)} may change), "
                "or start a new run with another --output",
            )
    return True


def _dict_diff(a: dict, b: dict, prefix: str, ignore: tuple[str, ...]) -> Iterator[str]:
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _dict_diff(va, vb, name + ".", ignore)
        elif va != vb:
            yield name


def start_run_dir(out_dir: Path, fresh: bool) -> None:
    """Rank 0, before training: create the run directory; for a fresh run (--overwrite) clear what an earlier run
    wrote, keeping the user's own files; remove the temporaries of writers that died (artifacts' policy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh and is_run_dir(out_dir):
        clear_run(out_dir)
    remove_stale_temps(out_dir)
    if not (out_dir / RUN_MARKER).is_file():
        write_json_atomic(out_dir / RUN_MARKER, {"bertcli_version": __version__, "stage": "pretrain"})


def clear_run(out_dir: Path) -> None:
    """--overwrite: remove what an earlier run wrote; files of the user's own in the directory are kept, and so are
    the temporaries of a live writer (remove_stale_temps removes those of dead ones)."""
    for p in out_dir.iterdir():
        if p.name in RUN_ENTRIES or p.name.startswith(STEP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
