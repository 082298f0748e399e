"""`bert plot RUN`: loss and accuracy curves of a pretraining run's metrics.jsonl as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bertcli.errors import ArtifactError

PLOT_FILE = "metrics.png"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN/metrics.jsonl (a truncated last line, from a killed run, is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ArtifactError(
            f"'{run_dir}' has no metrics.jsonl", hint="give the output directory of `bert pretrain`"
        )
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write RUN/metrics.png (or `output`): training/eval losses on the left, accuracies on the right.

    Raises ImportError when matplotlib is missing (it is the optional `plot` extra).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = Path(output) if output else Path(run_dir) / PLOT_FILE
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in (("mlm_loss", "train MLM loss"), ("nsp_loss", "train NSP loss"),
                       ("eval_mlm_loss", "eval MLM loss"), ("eval_nsp_loss", "eval NSP loss")):
        xs, ys = _series(records, key)
        if xs:
            ax_loss.plot(xs, ys, label=label, marker="o" if key.startswith("eval") else None, markersize=3)
    for key, label in (("mlm_accuracy", "train MLM accuracy"), ("eval_mlm_accuracy", "eval MLM accuracy"),
                       ("nsp_accuracy", "train NSP accuracy"), ("eval_nsp_accuracy", "eval NSP accuracy")):
        xs, ys = _series(records, key)
        if xs:
            ax_acc.plot(xs, ys, label=label, marker="o" if key.startswith("eval") else None, markersize=3)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("accuracy (MLM on masked positions)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{Path(run_dir).name}: {len(records)} records")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """`bert plot RUN [--output FILE]`: a clear error when matplotlib is missing."""
    try:
        return plot_run(run_dir, output)
    except ImportError as exc:
        raise ArtifactError(
            "matplotlib is not installed, so no plot can be drawn", hint="pip install 'bertcli[plot]'"
        ) from exc
