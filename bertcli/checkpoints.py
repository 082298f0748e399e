"""A pretraining run's directory: atomic, verified step and final checkpoints, the training state they carry, and the
checks that decide whether an output is a new run, a run to resume, or something not to touch."""

from __future__ import annotations

import contextlib
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
    CHECKPOINT_MARKER,
    RUN_MARKER,
    DataArtifact,
    file_sha256,
    move_into_place,
    read_bertcli_manifest,
    remove_stale_temps,
    temp_dir_for,
    write_json_atomic,
)
from bertcli.config import config_changes, describe_changes, keys_with_role, load_config
from bertcli.errors import ArtifactError, ConfigError, OutputExistsError
from bertcli.metrics import METRICS_FILE, PLOT_FILE, TENSORBOARD_DIR, TRACKER_FILE, WANDB_DIR
from bertcli.run_dir import FINAL, STEP_PREFIX, is_run_dir, run_dir_problem
from bertcli.schemas import PretrainConfig
from bertcli.vocab import TOKENIZER_FILES, copy_tokenizer_files

# What save_pretrained and save_checkpoint write at the top of a checkpoint (besides training_state/).
_CHECKPOINT_NAMES = {CHECKPOINT_MARKER, "config.json", "generation_config.json", "model.safetensors",
                     "model.safetensors.index.json", *TOKENIZER_FILES}
MARKER = CHECKPOINT_MARKER  # written last inside a checkpoint: lists every file with size and sha256
STATE_DIR = "training_state"
_STATE_FILES = {"optimizer.pt", "rng.pt", "state.json"}  # what save_checkpoint writes into STATE_DIR
RUN_CONFIG = "config.yaml"
RUN_MANIFEST = "manifest.json"
# RUN_MARKER, written first into a run directory, is what makes it recognisably bertcli's (a config.yaml or a
# manifest.json alone is not: many projects have one), so that --overwrite and --resume never take a user's folder
# for a run.
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
    rng_states: list[dict] | None = None,
) -> Path:
    """Write a checkpoint to a temporary directory, marker last, then rename it into place (atomic).

    rng_states: every rank's RNG states (rng_state() on each, gathered), saved per rank; None: this process's.

    A reader treats a directory as a checkpoint only if the marker exists and every file it lists has the
    recorded size and sha256, so a kill at any moment never leaves a checkpoint that --resume would load. The
    temporary names are artifacts' (`.NAME.tmp-PID`, `.NAME.old-PID`), so artifacts.remove_stale_temps cleans them.
    """
    final_path = out_dir / name
    tmp = temp_dir_for(final_path)
    try:
        with _quiet_hf_progress():  # its "Writing model shards" bar, each checkpoint, inside the training bar
            model.save_pretrained(tmp)
        copy_tokenizer_files(tokenizer_dir, tmp, max_positions=getattr(model.config, "max_position_embeddings", None))
        state_dir = tmp / STATE_DIR
        state_dir.mkdir()
        torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
        per_rank = rng_states if rng_states is not None else [rng_state()]
        torch.save({**per_rank[0], "per_rank": per_rank}, state_dir / "rng.pt")
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
        for kept in users_files(final_path) if final_path.is_dir() else []:  # a model card in final/: carried over,
            dest = tmp / kept.relative_to(final_path)  # unlisted, so still the user's (copied: a kill loses nothing)
            if not dest.exists():  # never over a file of the new checkpoint
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(kept, dest, follow_symlinks=False)
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
    """Step checkpoint directories (complete or not), oldest first. A step-N folder that holds nothing bertcli
    writes (only files of the user's, left by --overwrite or rotation) is no checkpoint."""
    found = []
    for p in out_dir.glob(f"{STEP_PREFIX}*"):
        suffix = p.name[len(STEP_PREFIX):]
        if p.is_dir() and suffix.isdigit() and any(_named_as_ours(q.relative_to(p)) for q in p.rglob("*")
                                                   if q.is_file()):
            found.append((int(suffix), p))
    return sorted(found)


def _named_as_ours(rel: Path) -> bool:
    """A file's path in a checkpoint that bertcli's checkpoints have: the marker, the weights and config, the
    tokenizer files, training_state/'s three (a note of the user's in training_state/ is the user's)."""
    if rel.parts[0] == STATE_DIR:
        return len(rel.parts) == 2 and rel.parts[1] in _STATE_FILES
    top = rel.parts[0]
    return len(rel.parts) == 1 and (top in _CHECKPOINT_NAMES or (top.startswith("model-")
                                                                  and top.endswith(".safetensors")))


@contextlib.contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states: the CPU generator's and, on a GPU machine, its current device's."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents in CPU memory: model weights (safetensors only), optimizer state and RNG states
    (torch.load with weights_only=True: a pickle planted in a checkpoint is refused, never run), and state.json."""
    return {
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": torch.load(path / STATE_DIR / "optimizer.pt", weights_only=True, map_location="cpu"),
        "payload": json.loads((path / STATE_DIR / "state.json").read_text(encoding="utf-8")),
        "rng": torch.load(path / STATE_DIR / "rng.pt", weights_only=True, map_location="cpu"),
    }


def apply_checkpoint(
    contents: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, rank: int = 0
) -> tuple[TrainState, dict]:
    """Restore model, optimizer, scaler and this rank's RNG states from read_checkpoint's contents.

    Returns the training state and the run information saved with it (config and data hashes)."""
    missing, unexpected = model.load_state_dict(contents["model"], strict=False)
    if unexpected or set(missing) - _TIED_KEYS:
        raise ValueError(f"weights do not fit the model (missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})")
    optimizer.load_state_dict(contents["optimizer"])
    payload = contents["payload"]
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    rng = contents["rng"]
    per_rank = rng.get("per_rank") or [rng]
    mine = per_rank[rank] if rank < len(per_rank) else per_rank[0]
    torch.set_rng_state(mine["torch_cpu"])
    cuda = mine.get("torch_cuda")
    if cuda is not None and torch.cuda.is_available():
        if cuda.dim() == 2:  # written before per-rank states: one row per device of rank 0's machine
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
    return TrainState.from_dict(payload["state"]), payload["run"]


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any
) -> tuple[TrainState, dict]:
    """read_checkpoint + apply_checkpoint in one process."""
    return apply_checkpoint(read_checkpoint(path), model, optimizer, scaler)


def _checkpoint_step(path: Path) -> int:
    """The step a checkpoint directory holds: from its name (step-N) or its marker (final/); -1 if unknown."""
    suffix = path.name[len(STEP_PREFIX):]
    if path.name.startswith(STEP_PREFIX) and suffix.isdigit():
        return int(suffix)
    try:
        return int(json.loads((path / MARKER).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def checkpoint_candidates(out_dir: Path) -> list[Path]:
    """The run's checkpoints to resume or roll back from, newest first: the step-* directories, and final/ of a
    finished run (continued with a raised max_steps) where it is the newest."""
    found = [p for _, p in list_checkpoints(out_dir)]
    if (out_dir / FINAL).is_dir():
        found.append(out_dir / FINAL)
    return sorted(found, key=lambda p: (_checkpoint_step(p), p.name == FINAL), reverse=True)


def _saved_state(checkpoint: Path, part: str) -> dict:
    """One part of a checkpoint's training_state/state.json, unverified: "state" (step, elapsed_s, …) or "run"
    (data and tokenizer hashes, …); {} when it cannot be read."""
    try:
        value = json.loads((checkpoint / STATE_DIR / "state.json").read_text(encoding="utf-8"))[part]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _run_record(checkpoint: Path) -> dict:
    """What a checkpoint records of its run (data and tokenizer hashes, …); {} when unreadable."""
    return _saved_state(checkpoint, "run")


def newest_run_record(out_dir: Path) -> dict | None:
    """The newest checkpoint's run record, read without verifying it: for `bert run` to plan with (--resume
    verifies). None when no checkpoint has a readable record."""
    return next((r for r in map(_run_record, checkpoint_candidates(out_dir)) if r), None)


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
        remove_checkpoint(path)


def users_files(checkpoint: Path) -> list[Path]:
    """Files in a checkpoint directory that its marker does not list: the user's (a model card, notes). Without a
    readable marker (damaged, or never written), the files named as bertcli's checkpoints name theirs count as
    bertcli's, so that a broken checkpoint's weights do not stay on disk for ever."""
    try:
        listed = set(json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    def ours(rel: Path) -> bool:
        return rel.as_posix() in listed if listed is not None else _named_as_ours(rel)

    found = (p for p in checkpoint.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(p for p in found if not ours(p.relative_to(checkpoint)))


def remove_checkpoint(checkpoint: Path) -> None:
    """Remove what bertcli wrote in a checkpoint directory; files of the user's stay, with the folders holding them."""
    keep = set(users_files(checkpoint))
    if not keep:
        shutil.rmtree(checkpoint, ignore_errors=True)
        return
    for p in sorted(checkpoint.rglob("*"), key=lambda q: len(q.parts), reverse=True):  # deepest first
        if (p.is_file() or p.is_symlink()) and p not in keep:
            p.unlink()
        elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()


def restore_newest(
    out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, ctx: dist.DistContext,
    data: DataArtifact | None = None,
) -> tuple[TrainState, Path] | None:
    """Restore the newest checkpoint that verifies and loads, on every rank, from rank 0's files alone.

    Rank 0 verifies the candidates (marker, sizes, sha256), reads the newest good one and checks it against `data`
    (when given: --resume); every rank then receives its contents from rank 0 (model, optimizer, scaler, training
    state, its own RNG state), so only rank 0 needs to see the run directory: a node without the shared filesystem
    resumes and rolls back like the others. Damaged checkpoints are skipped with a warning. Returns None when the run
    has no checkpoint at all. Raises ArtifactError when it has some but none can be used (a restart from step 0
    would silently throw the run away, and its old step directories would make pruning delete every new
    checkpoint), or when the chosen one was trained on other data or another tokenizer."""
    contents: dict[str, Any] = {}

    def choose() -> str | None:
        candidates = checkpoint_candidates(out_dir)
        problems = []
        for path in candidates:
            problem = verify_checkpoint(path)
            if problem is None and data is not None:  # other data first: another vocabulary also changes the
                check_resume_inputs(_run_record(path), data)  # weights' shapes, which read as a damaged checkpoint
            if problem is None:
                try:
                    contents.update(read_checkpoint(path))
                    expected = {k: v.shape for k, v in model.state_dict().items()}
                    got = contents["model"]
                    if (set(got) - set(expected) or set(expected) - set(got) - _TIED_KEYS
                            or any(expected[k] != t.shape for k, t in got.items() if k in expected)):
                        raise ValueError("its weights do not fit the model")
                except Exception as exc:  # a pickle refused by weights_only, wrong shapes, damaged files…
                    problem = f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            if problem is not None:
                dist.warn_main(ctx, f"skipping checkpoint '{path}': {problem}")
                problems.append(f"{path.name}: {problem}")
                contents.clear()
                continue
            return str(path)
        if candidates:
            raise ArtifactError(
                f"none of the {len(candidates)} checkpoint(s) in '{out_dir}' can be used ({problems[0]}); "
                "refusing to start over from step 0",
                hint="move the damaged step-*/ directories away to continue from an older one, or start over with "
                "--overwrite",
            )
        return None

    chosen = dist.main_decides(ctx, choose)
    if chosen is None:
        return None
    received = dist.broadcast_tensors(ctx, contents if ctx.is_main else None)
    state, _ = apply_checkpoint(received, model, optimizer, scaler, ctx.rank)
    return state, Path(chosen)


def finished_note(out_dir: Path, cfg: PretrainConfig, manifest: dict) -> str:
    """What --resume says of a finished run it leaves alone: which limit stopped it, so the user raises that one."""
    steps = manifest.get("stats", {}).get("steps")
    head = f"'{out_dir}' is a finished run (final/ and manifest.json exist, step {steps}); nothing to do"
    try:
        elapsed = float(_saved_state(out_dir / FINAL, "state")["elapsed_s"])
    except (KeyError, TypeError, ValueError):
        return head + " (raise max_steps or time_budget_s to continue it)"
    if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
        return (head + f": it trained its time budget ({elapsed:.0f} of time_budget_s {cfg.time_budget_s:g} s), so "
                "a higher max_steps changes nothing; raise time_budget_s (or set it to null) to continue it")
    return head + f": it reached max_steps ({cfg.max_steps:,}); raise max_steps to continue it"


def finished_run(out_dir: Path, cfg: PretrainConfig) -> dict | None:
    """For --resume: the manifest of a finished run in out_dir that has nothing left to do, else None. A finished run
    is continued (from final/) when max_steps was raised above its steps, or time_budget_s above its training time."""
    final = out_dir / FINAL
    manifest = read_bertcli_manifest(out_dir) if final.is_dir() else None
    if manifest is None or manifest.get("stage") != "pretrain":
        return None  # not a finished bertcli run (a folder's own manifest.json is not one)
    check_resume_config(out_dir, cfg)  # a changed learning rate is refused here too, not met with "nothing to do"
    state = _saved_state(final, "state")
    try:
        steps, elapsed = int(state["step"]), float(state["elapsed_s"])
    except (KeyError, TypeError, ValueError):
        return manifest  # no training state to continue from: the run stays as it is
    budget_left = cfg.time_budget_s is None or elapsed < cfg.time_budget_s
    if steps < cfg.max_steps and budget_left:
        return None
    return manifest


def check_resume_inputs(run_info: dict, data: DataArtifact) -> None:
    """Refuse to continue a run on other data or another tokenizer than its checkpoint recorded."""
    if run_info.get("tokenizer_hash", data.tokenizer_hash) != data.tokenizer_hash:
        raise ArtifactError(
            f"--resume: the data '{data.path}' was made with another tokenizer than the run's checkpoints",
            hint="resume with the data the run was started with",
        )
    if run_info.get("data_content_hash", data.content_hash) != data.content_hash:
        raise ArtifactError(
            f"--resume: the data '{data.path}' differs from the data the run was started with",
            hint="resume with the same data artifact (its data position would be meaningless otherwise)",
        )


def prepare_output(cfg: PretrainConfig, resume: bool, overwrite: bool, ctx: dist.DistContext) -> bool:
    """Check the run directory (all ranks, read only) and decide whether this is a resumption.

    Returns True when an existing run is to be continued.
    """
    out = Path(cfg.output)
    problem = run_dir_problem(out, Path(cfg.data))
    if problem is not None:
        raise OutputExistsError(f"output '{out}' {problem.what}", hint=problem.hint)
    has_run = is_run_dir(out)
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
    check_resume_config(out, cfg)
    return True


def check_resume_config(out_dir: Path, cfg: PretrainConfig) -> None:
    """Refuse --resume with a config that differs from the run's saved one in a key that may not change."""
    saved = out_dir / RUN_CONFIG
    if saved.is_file():
        previous = load_config(PretrainConfig, str(saved))
        changes = config_changes(previous, cfg, ignore_role="resumable")
        if changes:
            raise ConfigError(
                f"--resume: the config differs from the run's {saved} in {describe_changes(changes)}",
                hint=f"use the same config to continue the run (only {', '.join(RESUMABLE_KEYS)} may change), "
                "or start a new run with another --output",
            )
        if not Path(cfg.data).exists() and Path(previous.data).exists():  # --data left out: the config file's
            raise ArtifactError(f"--resume: the data '{cfg.data}' does not exist; the run was started on "
                                f"'{previous.data}'", hint=f"pass --data {previous.data}")


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
    """--overwrite: remove what an earlier run wrote; files of the user's own are kept, at the top of the directory
    and inside final/, the step checkpoints and tensorboard/ alike, and so are the temporaries of a live writer
    (remove_stale_temps removes those of dead ones)."""
    checkpoints = {path for _, path in list_checkpoints(out_dir)}
    for p in out_dir.iterdir():
        if p in checkpoints or (p.name == FINAL and p.is_dir()):
            remove_checkpoint(p)
        elif p.name == TENSORBOARD_DIR and p.is_dir():  # the event files are the run's; anything else the user's
            for events in p.glob("events.out.tfevents.*"):
                events.unlink()
            if not any(p.iterdir()):
                p.rmdir()
        elif p.name in RUN_ENTRIES and p.is_dir():
            shutil.rmtree(p)  # wandb/: the tracker's own files
        elif p.name in RUN_ENTRIES:
            p.unlink()
