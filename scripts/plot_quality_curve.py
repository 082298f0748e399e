"""Plot the quality curves of a `bench_pretrain.py --score-pairs … --curve-points N` report (its JSON on stdout).

    python scripts/plot_quality_curve.py report.json docs/img/quality-curve.png

Three panels against training seconds, ours and the plain transformers loop (a report of one side, e.g. a `--role
ours` child's JSON wrapped as {"ours": …}, plots that side alone): held-out MLM accuracy (15% static masks),
held-out NSP accuracy, and minimal-pair accuracy (mean over BLiMP paradigms); the suspects' end points (runs of
ours with one key changed) are marked on each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PANELS = (  # (curve key, y label, title)
    ("mlm_accuracy", "held-out MLM accuracy, %", "MLM (15% masks)"),
    ("nsp_accuracy", "held-out NSP accuracy, %", "NSP"),
    ("pairs_accuracy", "minimal-pair accuracy, %", "BLiMP dev (670 pairs)"),
)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(Path(sys.argv[1]).read_text())
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    for side, style in (("ours", "o-"), ("baseline", "s--")):
        curve = (report.get(side) or {}).get("curve") or []
        if not curve:
            continue
        t = [p["elapsed_s"] for p in curve]
        label = "bertcli" if side == "ours" else "plain transformers loop"
        for ax, (key, _, _) in zip(axes, PANELS):
            ax.plot(t, [100 * p[key] for p in curve], style, label=label)
    for name, run in report.get("suspects", {}).items():
        for p in (run.get("curve") or [])[-1:]:
            for ax, (key, _, _) in zip(axes, PANELS):
                ax.plot(p["elapsed_s"], 100 * p[key], "x")
            axes[-1].annotate(name, (p["elapsed_s"], 100 * p["pairs_accuracy"]), fontsize=7)
    for ax, (_, ylabel, title) in zip(axes, PANELS):
        ax.set(xlabel="training seconds", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[1:]:
        ax.axhline(50, color="grey", lw=0.5)  # chance for NSP and for a pair
    fig.tight_layout()
    Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
