"""A pretraining run's metrics: metrics.jsonl (and TensorBoard events) written by rank 0, read back, and plotted."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from bertcli.errors import ArtifactError, ConfigError, InputError, OutputExistsError

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
TRACKER_FILE = "tracker.json"  # the W&B run id of this run directory, so that --resume continues it
WANDB_DIR = "wandb"  # wandb.init(dir=RUN) writes its files under RUN/wandb
TENSORBOARD_DIR = "tensorboard"


# ---------------------------------------------------------------------------------------------- efficiency

# Dense (no sparsity) bf16 tensor-core peak per GPU in TFLOP/s, from NVIDIA's datasheets; fp16 for the GPUs without
# bf16 (V100, T4), which train in fp16 there. The denominator of MFU; `peak_tflops` in the config overrides it.
GPU_PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0,  # SXM
    "GH200": 989.0,
    "H100": 989.0,  # SXM
    "A100": 312.0,  # SXM and PCIe
    "A30": 165.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "V100": 125.0,  # SXM2, fp16
    "T4": 65.0,  # fp16
}
# Variants named by a second word of the device name.
_PEAK_VARIANTS: dict[tuple[str, str], float] = {
    ("H100", "PCIE"): 756.0,
    ("H100", "NVL"): 835.0,
    ("H200", "NVL"): 835.0,
    ("V100", "PCIE"): 112.0,
}


def gpu_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 (fp16 before Ampere) peak of a GPU named like torch.cuda.get_device_name() ("NVIDIA
    A100-SXM4-80GB", "Tesla T4", "NVIDIA H100 PCIe"), or None for a GPU not in GPU_PEAK_TFLOPS."""
    words = [w for w in re.split(r"[\s\-_]+", device_name.upper()) if w]
    for word in words:
        if word in GPU_PEAK_TFLOPS:
            for other in words:
                if (word, other) in _PEAK_VARIANTS:
                    return _PEAK_VARIANTS[(word, other)]
            return GPU_PEAK_TFLOPS[word]
    return None


def efficiency(flops: float, seconds: float, peak_tflops: float | None, world_size: int) -> dict[str, float | None]:
    """model_tflops_per_s (all processes together) and mfu = that / (peak_tflops × world_size), None without a peak."""
    tflops = flops / max(seconds, 1e-9) / 1e12
    return {"model_tflops_per_s": tflops, "mfu": tflops / (peak_tflops * world_size) if peak_tflops else None}


# Below this median MFU a CUDA run gets a hint: on an H200 BERT-tiny ran at 0.7% (batch 256), BERT-base at 17–21%
# (benchmarks.md, "On a GPU"); a small model's step there costs the same ~16 ms at batch 32 as at 256.
LOW_GPU_MFU = 0.05


def gpu_idle_hint(metrics_path: Path, device_type: str) -> str | None:
    """A hint when a CUDA run kept the GPU mostly idle (median `mfu` of its log intervals, the first two left out:
    start-up and compilation), else None. Runs whose MFU is unknown (a GPU not in the peak table) get none."""
    if device_type != "cuda" or not metrics_path.is_file():
        return None
    try:
        records = _read_records(metrics_path)
    except ArtifactError:  # a damaged line: no hint, rather than a failed run at its very end
        return None
    mfu = sorted([r["mfu"] for r in records if "tokens_per_s" in r and r.get("mfu") is not None][2:])
    if not mfu or mfu[len(mfu) // 2] >= LOW_GPU_MFU:
        return None
    return (f"the GPU ran at {mfu[len(mfu) // 2]:.1%} of its peak (median MFU): a model this small is bound by the "
            "per-step cost of Python and kernel launches, not by the GPU; raise batch_size and micro_batch_size "
            "together (docs/pretraining.md, \"Speed settings\")")


def short_warmup_hint(steps: int, warmup_steps: int) -> str | None:
    """A hint when training ended inside the warmup (a time budget or max_steps shorter than warmup_steps): the
    learning rate never reached the configured peak, so the run says nothing about that learning rate."""
    if steps >= warmup_steps:
        return None
    return (f"training ended at step {steps:,}, inside the {warmup_steps:,} warmup steps: the learning rate reached "
            f"{steps / warmup_steps:.0%} of learning_rate, never its peak; lower warmup_steps (or raise "
            "time_budget_s / max_steps) for the run to train at the rate you chose")


def end_of_run_hints(metrics_path: Path, device_type: str, steps: int, warmup_steps: int) -> list[str]:
    """What a finished pretraining run tells its user beside its figures: the hints above that apply."""
    hints = (gpu_idle_hint(metrics_path, device_type), short_warmup_hint(steps, warmup_steps))
    return [hint for hint in hints if hint is not None]


# ---------------------------------------------------------------------------------------------- writing

class MetricsWriter:
    """metrics.jsonl (one JSON object per line), always; and the trackers of `report_to` (rank 0): TensorBoard event
    files when tensorboard is installed, a Weights & Biases run (WANDB_MODE=offline works without network)."""

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        resume_step: int | None,
        report_to: tuple[str, ...] | list[str] = ("tensorboard",),
        run_config: dict | None = None,
        wandb_project: str = "bertcli",
    ):
        self.enabled = enabled
        self.path = out_dir / METRICS_FILE
        self.tb = None
        self.wandb_run = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # lines past the checkpoint belong to steps that are about to be recomputed
            kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and _line_step(ln) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if "tensorboard" in report_to:
            try:
                # tensorboard: optional, and importing it costs seconds
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides the logged steps after the checkpoint, which the resumed run writes again
                purge = resume_step + 1 if resume_step is not None else None
                self.tb = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR), purge_step=purge)
            except ImportError:  # tensorboard is optional
                self.tb = None
        if "wandb" in report_to:
            self.wandb_run = _start_wandb(out_dir, wandb_project, run_config or {}, resumed=resume_step is not None)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        # NaN and infinity are not JSON: they are written as null, so every line stays readable by any JSON reader
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean, allow_nan=False) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, record["step"])
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=int(record["step"]))

    def summarize(self, values: dict) -> None:
        """The run's outcome (final evaluation, data hashes) as the trackers' summary."""
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb_run is not None:
                self.wandb_run.finish()


def _start_wandb(out_dir: Path, project: str, run_config: dict, resumed: bool) -> Any:
    """A W&B run for this run directory: its id is kept in the directory, so a --resume continues the same run."""
    try:
        import wandb  # optional (pip install 'bertcli[wandb]'); heavy
    except ImportError as exc:
        raise ConfigError(
            "key 'report_to': wandb is not installed", hint="install the extra: pip install 'bertcli[wandb]'"
        ) from exc
    id_file = out_dir / TRACKER_FILE
    run_id = None
    if resumed and id_file.is_file():
        run_id = json.loads(id_file.read_text(encoding="utf-8")).get("wandb_id")
    run = wandb.init(project=project, dir=str(out_dir), config=run_config, id=run_id, resume="allow",
                     name=out_dir.name)
    id_file.write_text(json.dumps({"wandb_id": run.id}) + "\n", encoding="utf-8")
    return run


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, ValueError):
        return 1 << 62


# ---------------------------------------------------------------------------------------------- reading

def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN/metrics.jsonl (a truncated last line, from a killed run, is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ArtifactError(
            f"'{run_dir}' has no {METRICS_FILE}", hint="give the output directory of `bert pretrain`"
        )
    return _read_records(path)


def _read_records(path: Path) -> list[dict]:
    records = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the last line of a killed run
            raise ArtifactError(f"{path}:{number}: not a JSON object", hint="remove or fix that line") from None
        except (RecursionError, ValueError):  # brackets nested thousands deep; a number of 5,000 digits
            raise ArtifactError(f"{path}:{number}: JSON too deeply nested or with a number too long to read",
                                hint="remove or fix that line") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ArtifactError(f"{path}:{number}: 'step' is missing or not an integer", hint="remove or fix that line")
        records.append(record)
    return records


_PLOTTED = ("mlm_loss", "nsp_loss", "eval_mlm_loss", "mlm_accuracy", "eval_mlm_accuracy")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


# ---------------------------------------------------------------------------------------------- plotting

def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write RUN/metrics.png (or `output`): training/eval losses on the left, accuracies on the right.

    Raises ImportError when matplotlib is missing (it is the optional `plot` extra).
    """
    # matplotlib: optional (the `plot` extra), and importing it costs seconds
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not any(isinstance(r.get(key), (int, float)) for r in records for key in _PLOTTED):
        # a fine-tuned model's metrics.jsonl, or a run killed before its first log line: an empty chart says nothing
        raise ArtifactError(f"{Path(run_dir) / METRICS_FILE}: no pretraining metrics to plot (none of "
                            f"{', '.join(_PLOTTED)})", hint="give the output directory of `bert pretrain`, after its "
                            "first log line")
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
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)  # a failed save or rename leaves nothing behind
    return out


def run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """`bert plot RUN [--output FILE]`: plot_run, with a clear error when matplotlib is missing. An existing file is
    replaced only when it is the run's own plot: bert plot has no --overwrite, and never writes over anything else."""
    target = Path(output) if output is not None else Path(run_dir) / PLOT_FILE
    if target.exists() and target.resolve() != (Path(run_dir) / PLOT_FILE).resolve():
        raise OutputExistsError(f"'{target}' already exists", hint="choose another --output (a new .png file)")
    if output is not None and (target.suffix.lower() != ".png" or str(output).endswith(("/", "\\"))):
        raise InputError(f"--output '{output}': bert plot writes a PNG; name the file .png",
                         hint="e.g. --output curves.png")
    if output is not None and not target.parent.is_dir():
        raise InputError(f"--output '{target}': its folder '{target.parent}' does not exist",
                                hint="create the folder first, or choose a .png file in an existing one")
    try:
        return plot_run(run_dir, output)
    except ImportError as exc:
        raise ArtifactError(
            "matplotlib is not installed, so no plot can be drawn", hint="pip install 'bertcli[plot]'"
        ) from exc
