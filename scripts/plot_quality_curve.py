"""Plot the quality curves of a `bench_pretrain.py --score-pairs … --curve-points N` report (its JSON on stdout).

    python scripts/plot_quality_curve.py report.json docs/img/quality-curve.png

Two panels against training seconds, ours and the plain transformers loop: held-out MLM accuracy (15% static masks)
and minimal-pair accuracy (mean over BLiMP paradigms); the suspects' end points (runs of ours with one key changed)
are marked on both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(Path(sys.argv[1]).read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for side, style in (("ours", "o-"), ("baseline", "s--")):
        curve = report[side].get("curve") or []
        t = [p["elapsed_s"] for p in curve]
        label = "bertcli" if side == "ours" else "plain transformers loop"
        axes[0].plot(t, [100 * p["mlm_accuracy"] for p in curve], style, label=label)
        axes[1].plot(t, [100 * p["pairs_accuracy"] for p in curve], style, label=label)
    for name, run in report.get("suspects", {}).items():
        end = (run.get("curve") or [])[-1:]
        for p in end:
            axes[0].plot(p["elapsed_s"], 100 * p["mlm_accuracy"], "x")
            axes[1].plot(p["elapsed_s"], 100 * p["pairs_accuracy"], "x")
            axes[1].annotate(name, (p["elapsed_s"], 100 * p["pairs_accuracy"]), fontsize=7)
    axes[0].set(xlabel="training seconds", ylabel="held-out MLM accuracy, %", title="MLM (15% masks)")
    axes[1].set(xlabel="training seconds", ylabel="minimal-pair accuracy, %", title="BLiMP dev (670 pairs)")
    axes[1].axhline(50, color="grey", lw=0.5)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
