"""What a pretraining run directory is, read without torch: `bert run` plans with it before any stage starts, and
`bert pretrain` checks its --output with the same rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from bertcli.artifacts import CHECKPOINT_MARKER, MANIFEST, RUN_MARKER, read_bertcli_manifest

STEP_PREFIX = "step-"  # step-00001000/: a checkpoint of a run, by its step
FINAL = "final"  # the finished run's model


def is_run_dir(path: Path) -> bool:
    """A directory that `bert pretrain` wrote: it holds the run marker, or (runs begun before the marker existed)
    a pretrain manifest or a finished bertcli checkpoint."""
    if not path.is_dir():
        return False
    if (path / RUN_MARKER).is_file():
        return True
    manifest = read_bertcli_manifest(path)
    if manifest is not None:  # another stage's artifact is no run: --overwrite must not clear it
        return manifest.get("stage") == "pretrain"
    return any(is_bertcli_checkpoint(p) for p in path.iterdir() if p.name == FINAL or p.name.startswith(STEP_PREFIX))


def is_bertcli_checkpoint(path: Path) -> bool:
    try:
        marker = json.loads((path / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and "bertcli_version" in marker and "files" in marker


class RunDirProblem(NamedTuple):
    what: str  # after "output 'DIR' "
    hint: str
    kind: str  # "data": the data's directory or nested with it; "file": a file; "users": holds files not bertcli's


def run_dir_problem(out: Path, data: Path) -> RunDirProblem | None:
    """Why `bert pretrain` may not write its run into `out` (None when it may): `out` is its data or nested with
    it, is a file, or holds files that are not a run. `bert run` asks this before any stage runs."""
    data_real, real = data.resolve(), out.resolve()
    if real == data_real or data_real in real.parents or real in data_real.parents:
        return RunDirProblem(f"is the data '{data}', lies inside it or holds it",
                             "choose an --output outside the data: bertcli never writes into its inputs", "data")
    if out.exists() and not out.is_dir():
        return RunDirProblem("is a file", "choose another --output", "file")
    if out.is_dir() and not is_run_dir(out):
        names = sorted(p.name for p in out.iterdir())
        if names:
            shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
            return RunDirProblem(f"exists and holds files that are not a bertcli run ({shown})",
                                 "choose another --output; bertcli never deletes files it did not write", "users")
    return None


def interrupted_note(output: str | None) -> str:
    """What an interruption (Ctrl-C) leaves in a command's --output: for a pretraining run, the checkpoint that
    --resume continues from, or that the run had finished before the interruption."""
    out = Path(output) if output else None
    if out is not None and (out / MANIFEST).is_file() and (out / FINAL).is_dir():
        return f"the run in '{out}' had finished: its model is {out / FINAL}"
    if out is not None and out.is_dir():
        steps = sorted(p.name for p in out.glob(f"{STEP_PREFIX}*") if (p / CHECKPOINT_MARKER).is_file())
        if steps:
            return f"the run in '{out}' can continue from {steps[-1]}: rerun with --resume"
    return "no finished output was written for this run"
