"""Tests of bertcli.metrics: metrics.jsonl on resume, TensorBoard events mirroring it, reading back, the plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertcli.errors import ArtifactError, ConfigError
from bertcli.metrics import METRICS_FILE, MetricsWriter, read_metrics
from bertcli.metrics import run as plot_command
from bertcli.stages import pretrain
from pretrain_fixtures import interrupted_copy, run_data_path, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread_no_plot")


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    # tensorboard is optional (its tests skip without it)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))  # purge_orphaned_data: honours a resumed run's purge_step
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_mirror_metrics_and_survive_resume(reference_run, tmp_path):
    pytest.importorskip("tensorboard")
    records = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    scalars = _tensorboard_scalars(reference_run)
    for key in ("loss", "mlm_loss", "nsp_loss", "lr", "tokens_per_s", "eval_mlm_accuracy", "eval_nsp_accuracy"):
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [s for s, _ in scalars[key]] == [s for s, _ in expected], key
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6), key
    # a resumed run rewrites the steps after its checkpoint: TensorBoard must show each step once
    run = interrupted_copy(reference_run, tmp_path / "run")
    pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    assert [s for s, _ in _tensorboard_scalars(run)["loss"]] == [2, 4, 6]


def test_resumed_writer_drops_the_steps_after_its_checkpoint(tmp_path):
    lines = [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0}, {"step": 4, "eval_mlm_accuracy": 0.1},
             {"step": 6, "loss": 1.0}]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 8, "lo')
    writer = MetricsWriter(tmp_path, enabled=True, resume_step=4)
    writer.write({"step": 5, "loss": 1.5})
    writer.close()
    assert read_metrics(tmp_path) == lines[:3] + [{"step": 5, "loss": 1.5}]  # step 6 and the torn line are gone
    MetricsWriter(tmp_path, enabled=True, resume_step=None).close()  # a fresh run starts an empty file
    assert read_metrics(tmp_path) == []
    MetricsWriter(tmp_path / "elsewhere", enabled=False, resume_step=None).write({"step": 1})  # ranks > 0: nothing
    assert not (tmp_path / "elsewhere").exists()


def test_read_metrics_ignores_a_torn_last_line_and_names_a_missing_file(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    with pytest.raises(ArtifactError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="no metrics.jsonl"):
        plot_command(tmp_path / "missing")


class _FakeWandbRun:
    def __init__(self, **init):
        self.init, self.id, self.logged, self.summary, self.finished = init, "run-1", [], {}, False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_wandb_gets_metrics_config_and_summary(masked_data, tmp_path, monkeypatch):
    import sys
    import types

    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(_FakeWandbRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    cfg = tiny_cfg(masked_data, run, report_to=["tensorboard", "wandb"], wandb_project="bertcli-test")
    pretrain.run(cfg)
    (tracked,) = runs
    assert tracked.init["project"] == "bertcli-test" and tracked.init["name"] == "run"
    assert tracked.init["config"]["learning_rate"] == cfg.learning_rate and tracked.init["config"]["data_content_hash"]
    assert [step for step, _ in tracked.logged] == [r["step"] for r in read_metrics(run)]
    assert tracked.summary["steps"] == cfg.max_steps and "eval_mlm_accuracy" in tracked.summary
    assert tracked.finished and json.loads((run / "tracker.json").read_text()) == {"wandb_id": "run-1"}
    (run / "manifest.json").unlink()  # as if killed after its last step checkpoint
    shutil.rmtree(run / "final")
    pretrain.run(cfg, resume=True)
    assert len(runs) == 2 and runs[-1].init["id"] == "run-1"  # --resume continues the same W&B run


def test_wandb_offline_writes_its_run(masked_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    pretrain.run(tiny_cfg(masked_data, run, report_to=["wandb"]))
    (offline,) = sorted((run / "wandb").glob("offline-run-*"))
    assert list(offline.glob("run-*.wandb")) and not (run / "tensorboard").exists()


def test_report_to_without_wandb_names_the_extra(masked_data, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match="wandb is not installed") as refused:
        pretrain.run(tiny_cfg(masked_data, tmp_path / "run", report_to=["wandb"]))
    assert "bertcli[wandb]" in refused.value.hint


def test_gpu_idle_hint_names_the_median_mfu_on_cuda_only(tmp_path):
    """A CUDA run whose median MFU (log intervals after the first two) is below LOW_GPU_MFU gets a hint; a busy GPU,
    a CPU run, an unknown peak or a missing file get none."""
    from bertcli.metrics import LOW_GPU_MFU, gpu_idle_hint

    def run(mfus: list) -> Path:
        path = tmp_path / f"metrics-{len(list(tmp_path.iterdir()))}.jsonl"
        lines = [{"step": 10 * i, "tokens_per_s": 1.0, "mfu": m} for i, m in enumerate(mfus)]
        lines.append({"step": 5, "eval_mlm_accuracy": 0.1})  # evaluation lines carry no mfu
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return path

    idle = run([0.0001, 0.0002, 0.007, 0.006, 0.008])  # the first two (start-up) are left out
    hint = gpu_idle_hint(idle, "cuda")
    assert hint is not None and "0.7% of its peak" in hint and "micro_batch_size" in hint
    assert gpu_idle_hint(idle, "cpu") is None
    assert gpu_idle_hint(run([0.01, 0.01, 0.2, 0.21, 0.19]), "cuda") is None
    assert gpu_idle_hint(run([0.3, 0.3, 0.01, 0.02, 0.01]), "cuda") is not None  # by order, not the two smallest
    assert gpu_idle_hint(run([0.0, 0.0, LOW_GPU_MFU, LOW_GPU_MFU]), "cuda") is None  # at the line: no hint
    assert gpu_idle_hint(run([None, None, None, None]), "cuda") is None
    assert gpu_idle_hint(tmp_path / "absent.jsonl", "cuda") is None


def test_pretrain_ends_with_the_gpu_idle_hint_when_there_is_one(masked_data, tmp_path, monkeypatch, capsys):
    """The stage asks gpu_idle_hint about its own metrics.jsonl and device at the end and prints what it returns as a
    warning (the hint itself fires only on CUDA, so it is stood in for here)."""
    asked = []

    def stand_in(path, device_type):
        asked.append((path, device_type))
        return "the GPU ran at 0.7% of its peak"

    from bertcli import metrics

    monkeypatch.setattr(metrics, "gpu_idle_hint", stand_in)
    run = tmp_path / "run"
    pretrain.run(tiny_cfg(masked_data, run))
    assert asked == [(run / METRICS_FILE, "cpu")]
    err = capsys.readouterr().err
    assert "warning: the GPU ran at 0.7% of its peak" in err and "warmup" not in err  # warmup 2 of 6 steps


def test_a_run_that_ends_inside_its_warmup_says_so(masked_data, tmp_path, capsys):
    """A budget shorter than the warmup never trains at the chosen learning rate: the run says how far it got."""
    from bertcli.metrics import short_warmup_hint

    assert short_warmup_hint(100, 100) is None and short_warmup_hint(5_000, 100) is None
    pretrain.run(tiny_cfg(masked_data, tmp_path / "run", warmup_steps=10))  # 6 steps
    err = capsys.readouterr().err
    assert "warning: training ended at step 6, inside the 10 warmup steps: the learning rate reached 60%" in err
