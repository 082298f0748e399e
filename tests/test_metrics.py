"""Tests of bertcli.metrics: metrics.jsonl on resume, TensorBoard events mirroring it, reading back, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertcli.errors import ArtifactError
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
