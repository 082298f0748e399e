"""Tests of bertcli.checkpoints: verified checkpoints (skipped when damaged, never unpickled), keep-last-k, and the
run-directory checks (another run, a changed config, --overwrite, temporaries of dead and live writers)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertcli.artifacts import file_sha256
from bertcli.checkpoints import (
    MARKER,
    RUN_MARKER,
    TrainState,
    list_checkpoints,
    newest_valid_checkpoint,
    prune_checkpoints,
    remove_checkpoint,
    start_run_dir,
    verify_checkpoint,
)
from bertcli.errors import BertcliError, ConfigError, OutputExistsError
from bertcli.stages import pretrain
from pretrain_fixtures import assert_same_weights, interrupted_copy, run_data_path, tiny_cfg, weights

pytestmark = pytest.mark.usefixtures("one_thread_no_plot")


def test_keep_last_k_checkpoints(masked_data, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_cfg(masked_data, out, max_steps=7, save_every=1, keep_checkpoints=2, eval_every=0))
    assert [s for s, _ in list_checkpoints(out)] == [5, 6]


def test_corrupt_and_unfinished_checkpoints_are_skipped(reference_run, tmp_path, capsys):
    run = interrupted_copy(reference_run, tmp_path / "run")
    # step 4 damaged after it was written (truncated weights), an unfinished step 5 (no marker), a temp dir
    weights_file = run / "step-00000004" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    shutil.copytree(run / "step-00000002", run / "step-00000005")
    (run / "step-00000005" / MARKER).unlink()
    shutil.copytree(run / "step-00000002", run / ".step-00000006.tmp-999999")
    pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-00000005" in err and "step-00000004" in err
    assert "resuming from" in err and "step-00000002" in err
    assert_same_weights(weights(run), weights(reference_run))  # from step 2 it still ends bit-identical
    assert not (run / ".step-00000006.tmp-999999").exists()


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


def test_pickled_state_is_never_unpickled(reference_run, tmp_path, capsys):
    run = interrupted_copy(reference_run, tmp_path / "run")
    _Exploit.target = str(tmp_path / "pwned")
    ckpt = run / "step-00000004"
    with open(ckpt / "training_state" / "optimizer.pt", "wb") as f:
        pickle.dump({"state": _Exploit()}, f)
    # make the marker agree, so only the weights_only loader stands between the pickle and execution
    marker = json.loads((ckpt / MARKER).read_text())
    path = ckpt / "training_state" / "optimizer.pt"
    marker["files"]["training_state/optimizer.pt"] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    (ckpt / MARKER).write_text(json.dumps(marker))
    pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    assert not (tmp_path / "pwned").exists()
    assert "step-00000004" in capsys.readouterr().err
    assert_same_weights(weights(run), weights(reference_run))


def test_checkpoint_without_safetensors_is_not_loaded(reference_run, tmp_path):
    ckpt = tmp_path / "step-00000009"
    shutil.copytree(reference_run / "step-00000004", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    marker = json.loads((ckpt / MARKER).read_text())
    marker["files"].pop("model.safetensors")
    (ckpt / MARKER).write_text(json.dumps(marker))
    assert "safetensors" in verify_checkpoint(ckpt)


def test_output_with_another_run_is_refused(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    with pytest.raises(OutputExistsError, match="holds another run"):
        pretrain.run(tiny_cfg(run_data_path(reference_run), run))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"not a bertcli run \(notes\.txt\)"):  # names what is in the way
        pretrain.run(tiny_cfg(run_data_path(reference_run), foreign), overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_resume_with_changed_config_is_refused(reference_run, tmp_path):
    run = interrupted_copy(reference_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="learning_rate"):
        pretrain.run(tiny_cfg(run_data_path(reference_run), run, learning_rate=1e-2), resume=True)


def test_overwrite_replaces_the_run_but_keeps_other_files(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    # files of the user's beside the run and inside its folders (they were deleted with final/, tensorboard/ and
    # anything named step-*): a model card before an upload, notes, a plan
    mine = {"notes.txt": "mine", "step-by-step-plan.md": "plan", "final/README.md": "card",
            "tensorboard/mynote.txt": "tb", "step-00000004/why.txt": "why",
            # in training_state/ too, of a folder the new run writes again (final/) or not (step 4): they were
            # taken for bertcli's once the clear had removed the marker that lists what is
            "final/training_state/u.txt": "u", "step-00000004/training_state/v.txt": "v"}
    for name, text in mine.items():
        (run / name).write_text(text)
    old_events = set((run / "tensorboard").glob("events.out.tfevents.*"))
    assert old_events
    pretrain.run(tiny_cfg(run_data_path(reference_run), run, max_steps=2, save_every=0, eval_every=0), overwrite=True)
    assert {name: (run / name).read_text() for name in mine} == mine
    assert not (run / "step-00000004" / MARKER).is_file()  # the old run's checkpoints are gone
    assert sorted(p.relative_to(run / "step-00000004").as_posix() for p in (run / "step-00000004").rglob("*")) == [
        "training_state", "training_state/v.txt", "why.txt"]
    assert list_checkpoints(run) == []  # a folder of the user's notes is no (unfinished) checkpoint to skip
    assert not old_events & set((run / "tensorboard").glob("events.out.tfevents.*"))  # the old run's events went
    assert json.loads((run / "manifest.json").read_text())["stats"]["steps"] == 2
    assert verify_checkpoint(run / "final") is None  # the new final/, with the card carried over, unlisted


def test_saving_a_checkpoint_draws_no_bar_of_transformers(reference_run, tmp_path, capfd):
    # transformers' "Writing model shards" bar, one per checkpoint, broke the training bar's line ("[A" codes)
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh process (the model tools run before turn it off for theirs)
    pretrain.run(tiny_cfg(run_data_path(reference_run), tmp_path / "run", max_steps=2, save_every=1, eval_every=0))
    assert "Writing model shards" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # left as it was, for the user's own transformers code


def test_checkpoint_rotation_keeps_the_users_files(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "step-00000002" / "notes.txt").write_text("mine")
    prune_checkpoints(run, keep=1)
    assert sorted(p.name for p in (run / "step-00000002").iterdir()) == ["notes.txt"]
    assert verify_checkpoint(run / "step-00000004") is None
    # the folder left holding only the user's file is no checkpoint: --resume neither stops on it nor warns
    assert [p.name for _, p in list_checkpoints(run)] == ["step-00000004"]
    killed = interrupted_copy(run, tmp_path / "killed")
    shutil.rmtree(killed / "step-00000004")  # killed before its first checkpoint
    pretrain.run(tiny_cfg(run_data_path(reference_run), killed, max_steps=2, save_every=0, eval_every=0),
                 resume=True)
    assert (killed / "step-00000002" / "notes.txt").read_text() == "mine"


def test_a_checkpoint_with_a_damaged_marker_is_still_removed_but_the_users_files_stay(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "step-00000002" / MARKER).write_text("{trunc")
    (run / "step-00000002" / "notes.txt").write_text("mine")
    remove_checkpoint(run / "step-00000002")  # its weights must not stay on disk for ever
    assert sorted(p.name for p in (run / "step-00000002").iterdir()) == ["notes.txt"]


def test_start_run_dir_clears_a_run_and_only_dead_writers_temporaries(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "notes.txt").write_text("mine")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid in (live.pid, dead.pid):
            shutil.copytree(run / "step-00000002", run / f".step-00000006.tmp-{pid}")
        (run / f".final.old-{dead.pid}").mkdir()
        start_run_dir(run, fresh=False)  # a resumption keeps the run, and a live writer's temporaries
        assert list_checkpoints(run) and (run / "metrics.jsonl").is_file()
        assert (run / f".step-00000006.tmp-{live.pid}").is_dir()
        assert not (run / f".step-00000006.tmp-{dead.pid}").exists() and not (run / f".final.old-{dead.pid}").exists()
        start_run_dir(run, fresh=True)  # --overwrite: what the run wrote goes, the user's files stay
        left = sorted(p.name for p in run.iterdir())
        assert left == sorted([".step-00000006.tmp-" + str(live.pid), "notes.txt", RUN_MARKER])
    finally:
        live.kill()
        live.wait()


def test_newest_valid_checkpoint_and_train_state_round_trip(reference_run, tmp_path, capsys):
    run = interrupted_copy(reference_run, tmp_path / "run")
    assert newest_valid_checkpoint(run).name == "step-00000004"
    (run / "step-00000004" / MARKER).unlink()
    assert newest_valid_checkpoint(run).name == "step-00000002"
    assert "step-00000004" in capsys.readouterr().err
    state = TrainState(step=3, epoch=1, batch_in_epoch=2, skipped_batches=[[0, 1]])
    assert TrainState.from_dict({**state.to_dict(), "from_a_newer_version": 1}) == state


def test_a_folder_with_a_config_yaml_or_manifest_is_not_taken_for_a_run(masked_data, tmp_path):
    # --overwrite once deleted any config.yaml, manifest.json, metrics.jsonl or final/ in the output
    project = tmp_path / "project"
    (project / "final").mkdir(parents=True)
    for name, text in (("config.yaml", "lr: 1\n"), ("manifest.json", '{"manifest_version": 3}'),
                       ("metrics.jsonl", '{"my": 1}\n'), ("final/thesis.tex", "precious")):
        (project / name).write_text(text)
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    for resume, overwrite in ((False, True), (True, False)):
        with pytest.raises(OutputExistsError, match="not a bertcli run"):
            pretrain.run(tiny_cfg(masked_data, project), resume=resume, overwrite=overwrite)
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


def test_resume_with_data_of_another_vocabulary_refuses_and_keeps_the_run(reference_run, tmp_path, tiny_corpus):
    # it once took every checkpoint for corrupt and trained from step 0 over the old run, exit 0
    from typer.testing import CliRunner

    from bertcli.cli import app
    from pretrain_fixtures import make_artifact

    other_tok = tmp_path / "tok300"
    assert CliRunner().invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(other_tok),
                                    "--set", "vocab_size=300"]).exit_code == 0
    other_data = make_artifact(tmp_path / "masked300", other_tok, tiny_corpus, kind="masked", num_sequences=64)
    run = interrupted_copy(reference_run, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # and says why: the data's tokenizer, not a "damaged" checkpoint (another vocabulary changes the weights' shapes)
    with pytest.raises(BertcliError, match=r"--resume: the data '.*masked300' was made with another tokenizer than "
                       r"the run's checkpoints"):
        pretrain.run(tiny_cfg(other_data, run), resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_model_command_on_an_unfinished_run_names_its_newest_checkpoint(reference_run, tmp_path):
    """An unfinished run has no manifest.json yet (it is written last): its run marker says what it is, so the
    hint names the newest step checkpoint instead of asking for run/final, which does not exist."""
    from cli_helpers import refused_with_hint

    run = interrupted_copy(reference_run, tmp_path / "run")
    _, hint = refused_with_hint(["fill-mask", "--model", str(run), "a [MASK] ."], "has no final/ checkpoint yet")
    assert hint == f"hint: pass --model {run / 'step-00000004'} to use the newest checkpoint"
