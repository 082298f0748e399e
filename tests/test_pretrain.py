"""Tests of the `bert pretrain` stage end to end on tiny models (hidden 32, 2 layers) and tiny artifacts."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForPreTraining, BertForMaskedLM, BertForPreTraining, pipeline
from typer.testing import CliRunner

from bertcli import devices
from bertcli.artifacts import load_data
from bertcli.batching import EpochPlan, target_token_counts, unigram_log_prior
from bertcli.checkpoints import MARKER, list_checkpoints, newest_valid_checkpoint, verify_checkpoint
from bertcli.cli import app
from bertcli.config import load_config
from bertcli.errors import ArtifactError, BertcliError, ConfigError
from bertcli.metrics import plot_run
from bertcli.model import pretraining_loss
from bertcli.schemas import MaskConfig, ModelConfig, PairsConfig, PretrainConfig
from bertcli.stages import mask, pairs, pretrain
from pretrain_fixtures import (
    TINY_MODEL,
    assert_same_weights,
    interrupted_copy,
    make_artifact,
    run_data_path,
    tiny_cfg,
    weights,
)

pytestmark = pytest.mark.usefixtures("one_thread_no_plot")


# ------------------------------------------------------------------------------------------ the run directory

def test_run_directory_metrics_and_checkpoints(reference_run):
    names = sorted(p.name for p in reference_run.iterdir())
    assert "final" in names and "metrics.jsonl" in names and "config.yaml" in names and "manifest.json" in names
    assert [p.name for _, p in list_checkpoints(reference_run)] == ["step-00000002", "step-00000004"]
    records = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        for key in ("step", "loss", "mlm_loss", "nsp_loss", "lr", "tokens_per_s"):
            assert isinstance(r[key], (int, float)), key
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r["nsp_loss"])
        assert r["tokens_per_s"] > 0
    evals = [r for r in records if "eval_mlm_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r["eval_mlm_accuracy"] <= 1 and 0 <= r["eval_nsp_accuracy"] <= 1 for r in evals)
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["stats"]["steps"] == 6
    assert manifest["stats"]["tokens"] > 0
    # the final checkpoint carries model, tokenizer and the training state, and its marker lists them all
    marker = json.loads((reference_run / "final" / MARKER).read_text())
    assert {"model.safetensors", "config.json", "vocab.txt", "tokenizer.json", "training_state/optimizer.pt",
            "training_state/state.json"} <= set(marker["files"])
    assert verify_checkpoint(reference_run / "final") is None
    assert not list(reference_run.glob(".*tmp*"))


def test_final_loads_as_stock_bert_offline(reference_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForPreTraining.from_pretrained(reference_run / "final")
    assert type(model) is BertForPreTraining
    assert_same_weights({k: v for k, v in model.state_dict().items() if k in weights(reference_run)},
                        weights(reference_run))
    fill = pipeline("fill-mask", model=str(reference_run / "final"))
    out = fill(f"the {fill.tokenizer.mask_token} is here .")
    assert len(out) == 5 and all("token_str" in o for o in out)


# ------------------------------------------------------------------------------------------ resume

def test_resume_is_bit_identical(reference_run, tmp_path, capsys):
    run = interrupted_copy(reference_run, tmp_path / "run")
    # lines for step 6 exist in metrics.jsonl; resuming from step 4 must drop them and write them again
    capsys.readouterr()
    pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    # The checkpoint brings its own output bias: the unigram counts are neither read nor announced.
    assert "MLM output bias" not in capsys.readouterr().err
    assert_same_weights(weights(run), weights(reference_run))
    a = torch.load(run / "final/training_state/optimizer.pt", weights_only=True)
    b = torch.load(reference_run / "final/training_state/optimizer.pt", weights_only=True)
    for i in a["state"]:
        assert torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"])
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [2, 4, 6]
    state = json.loads((run / "final/training_state/state.json").read_text())["state"]
    ref_state = json.loads((reference_run / "final/training_state/state.json").read_text())["state"]
    assert {k: v for k, v in state.items() if k != "elapsed_s"} == {
        k: v for k, v in ref_state.items() if k != "elapsed_s"}


def test_resume_before_the_first_checkpoint_starts_as_a_fresh_run_does(reference_run, tmp_path, capsys):
    run = interrupted_copy(reference_run, tmp_path / "run")
    for checkpoint in run.glob("step-*"):
        shutil.rmtree(checkpoint)  # killed before its first checkpoint
    capsys.readouterr()
    pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    err = capsys.readouterr().err
    assert "has no checkpoint yet; starting from step 0" in err and "MLM output bias: log unigram" in err
    assert_same_weights(weights(run), weights(reference_run))  # the unigram bias included


def test_finished_run_resume_is_a_no_op(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = (run / "final" / "model.safetensors").stat().st_mtime_ns
    manifest = pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    assert manifest["stats"]["steps"] == 6
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_finished_run_says_which_limit_stopped_it(reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    capsys.readouterr()
    pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    assert "nothing to do: it reached max_steps (6); raise max_steps to continue it" in capsys.readouterr().err
    # a run that ended on its clock: a higher max_steps alone would change nothing, and the note says so
    pretrain.run(tiny_cfg(run_data_path(reference_run), run, max_steps=100, time_budget_s=1e-3), resume=True)
    err = capsys.readouterr().err
    assert "it trained its time budget" in err and "raise time_budget_s (or set it to null)" in err


def test_resume_without_its_data_names_the_data_the_run_was_started_on(reference_run, tmp_path):
    run = interrupted_copy(reference_run, tmp_path / "run")
    with pytest.raises(ArtifactError, match=r"the data 'runs/masked' does not exist; the run was started on") as err:
        pretrain.run(tiny_cfg("runs/masked", run), resume=True)  # --data left out: the config's default
    assert err.value.hint == f"pass --data {run_data_path(reference_run)}"


def test_finished_run_resume_refuses_a_changed_recipe(reference_run, tmp_path):
    """--resume on a finished run with a key that may not change is refused as on an unfinished one, not met with
    "nothing to do" (which would leave the user thinking the new learning rate was taken)."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = (run / "final" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"learning_rate: 0\.002 → 0\.001"):
        pretrain.run(tiny_cfg(run_data_path(reference_run), run, learning_rate=1e-3), resume=True)
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_loader_workers_give_the_same_run(reference_run, tmp_path):
    """DataLoader worker processes change where batches are built, not which: same weights as in-process."""
    pretrain.run(tiny_cfg(run_data_path(reference_run), tmp_path / "workers", num_workers=2))
    assert_same_weights(weights(tmp_path / "workers"), weights(reference_run))


# ------------------------------------------------------------------------------------------ bad input

def test_bad_data_and_model_are_errors_before_any_step(masked_data, pairs_data, tmp_path, tiny_bert):
    with pytest.raises(ArtifactError, match="does not exist"):
        pretrain.run(tiny_cfg(tmp_path / "nothing", tmp_path / "a"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(masked_data, unfinished)
    (unfinished / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        pretrain.run(tiny_cfg(unfinished, tmp_path / "b"))
    small = ModelConfig(**{**TINY_MODEL, "max_position_embeddings": 16})
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        pretrain.run(tiny_cfg(masked_data, tmp_path / "c", model=small))
    with pytest.raises(ArtifactError, match="vocabulary|vocab_size"):
        pretrain.run(tiny_cfg(masked_data, tmp_path / "e", init_from=str(tiny_bert)))
    with pytest.raises(ArtifactError, match="fewer than batch_size"):
        pretrain.run(tiny_cfg(masked_data, tmp_path / "f", batch_size=4096, micro_batch_size=4))
    for key in ("max_steps", "batch_size"):
        with pytest.raises(ConfigError, match=key):
            load_config(PretrainConfig, None, [f"{key}=0"])
    assert not any((tmp_path / n).exists() and any((tmp_path / n).iterdir()) for n in "abcdef")


def test_cli_pretrain_and_plot(masked_data, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(pretrain, "plot_run", plot_run)  # one_thread_no_plot turned it off
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(masked_data), "--output", str(out)]
    sets = ["--set", "model.preset=null", "--set", "model.hidden_size=32", "--set", "model.num_hidden_layers=1",
            "--set", "model.num_attention_heads=2", "--set", "max_steps=2", "--set", "batch_size=4",
            "--set", "micro_batch_size=4", "--set", "eval_batches=1", "--set", "eval_fraction=0.1"]
    result = runner.invoke(app, args + sets)
    assert result.exit_code == 0, result.output
    assert (out / "final" / "model.safetensors").is_file() and (out / "metrics.png").stat().st_size > 1000
    again = runner.invoke(app, args + sets)
    assert again.exit_code == 2 and "holds another run" in again.output and "--resume" in again.output
    (out / "metrics.png").unlink()
    assert runner.invoke(app, ["plot", str(out)]).exit_code == 0 and (out / "metrics.png").is_file()
    bad = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
    assert runner.invoke(app, ["plot", str(tmp_path / "x")]).exit_code == 2


# ------------------------------------------------------------------------------------------ data kinds

def test_dynamic_masking_from_pairs(pairs_data, tmp_path):
    """A pairs artifact trains with dynamic masking (the collator's masks: test_batching)."""
    cfg = tiny_cfg(pairs_data, tmp_path / "run", max_steps=3, save_every=0, eval_every=0)
    manifest = pretrain.run(cfg)
    assert manifest["inputs"]["data"]["kind"] == "pairs" and manifest["stats"]["steps"] == 3


def test_num_threads_is_applied_and_recorded(masked_data, tmp_path):
    before = torch.get_num_threads()
    try:
        manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=1, save_every=0, eval_every=0,
                                         num_threads=1))
        assert manifest["stats"]["num_threads"] == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_mlm_only_data_trains_without_nsp(tmp_path, tiny_tokenizer, tiny_corpus):
    data = make_artifact(tmp_path / "mlm", tiny_tokenizer, tiny_corpus, kind="masked", num_sequences=60, nsp=False)
    manifest = pretrain.run(tiny_cfg(data, tmp_path / "run", max_steps=2, save_every=0, eval_every=0,
                                     eval_fraction=0.2))
    assert "eval_nsp_accuracy" not in manifest["stats"] and manifest["stats"]["eval_mlm_accuracy"] >= 0


# ------------------------------------------------------------------------------------------ training behaviour

def test_training_learns(masked_data, tmp_path):
    manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=40, learning_rate=5e-3, save_every=0,
                                     eval_every=0, log_every=10, warmup_steps=4, batch_size=16, micro_batch_size=16,
                                     mlm_bias_init="zero"))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["mlm_loss"] for r in records if "mlm_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    assert manifest["stats"]["eval_mlm_accuracy"] > 0.02


def test_unigram_bias_starts_lower_and_is_not_applied_to_init_from(masked_data, reference_run, tmp_path):
    first_loss = {}
    for init in ("unigram", "zero"):
        pretrain.run(tiny_cfg(masked_data, tmp_path / init, max_steps=1, log_every=1, eval_every=0, save_every=0,
                              warmup_steps=0, mlm_bias_init=init))
        first_loss[init] = json.loads((tmp_path / init / "metrics.jsonl").read_text().splitlines()[0])["mlm_loss"]
    # the frequency guess is far better than uniform over the vocabulary, which a zero bias starts from
    assert first_loss["unigram"] < first_loss["zero"] - 0.5
    data = load_data(masked_data)
    plan = EpochPlan(data.arrays, 3, 8, 0.1)
    model = pretrain.build_pretraining_model(tiny_cfg(masked_data, tmp_path / "x"), data, plan, None, None)
    pretrain.set_unigram_output_bias(model, data, plan, None, None)
    counts = target_token_counts(data, plan)
    assert torch.equal(model.cls.predictions.bias.detach(), torch.from_numpy(unigram_log_prior(counts)))
    src = weights(reference_run)["cls.predictions.bias"]
    from_run = tiny_cfg(masked_data, tmp_path / "y", init_from=str(reference_run / "final"))
    loaded = pretrain.build_pretraining_model(from_run, data, plan, None, None)
    assert torch.equal(loaded.cls.predictions.bias.detach(), src)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_run_on_cpu(masked_data, tmp_path, precision):
    manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=2, save_every=0, eval_every=0,
                                     precision=precision))
    assert manifest["stats"]["precision"] == precision
    w = weights(tmp_path / "run")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in w.values())  # master weights fp32
    if precision == "fp16":
        state = json.loads((tmp_path / "run/final/training_state/state.json").read_text())
        assert state["scaler"]["scale"] > 0


def test_precision_auto_is_fp32_on_cpu():
    assert devices.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert devices.resolve_precision("bf16", torch.device("cpu")).autocast_dtype == torch.bfloat16


def test_time_budget_stops_and_fits_schedule(masked_data, tmp_path, capsys):
    manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=100000, time_budget_s=2.0, save_every=0,
                                     eval_every=0, log_every=1, warmup_steps=1))
    steps = manifest["stats"]["steps"]
    assert 1 < steps < 100000
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    assert records[-1]["lr"] < 0.5 * 2e-3  # the decay followed the clock, not max_steps
    # The progress bar ends where the budget does, not at max_steps ("2%, 3:47:44 left" in a 6-minute demo).
    last_bar = capsys.readouterr().err.rsplit("pretrain:", 1)[-1]
    assert "/100000" not in last_bar and f"{steps}/" in last_bar


def test_wsd_run_holds_the_peak_then_cools_down(masked_data, tmp_path):
    pretrain.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=20, save_every=0, eval_every=0, log_every=1,
                          warmup_steps=2, learning_rate=2e-3, lr_schedule="wsd", lr_decay_fraction=0.25))
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    assert len(lrs) == 20
    assert lrs[2:16] == pytest.approx([2e-3] * 14)  # after warmup, the peak until the last quarter
    assert all(a > b for a, b in zip(lrs[15:], lrs[16:])) and lrs[-1] < 0.25 * 2e-3


def test_run_ending_on_an_evaluation_step_is_evaluated_once(masked_data, tmp_path):
    """A time budget often runs out during an evaluation step's evaluation: the final weights are the ones just
    evaluated, so the run reports those figures and metrics.jsonl holds one line for them, not two."""
    manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=100000, time_budget_s=1.0, save_every=0,
                                     eval_every=1, eval_batches=1, warmup_steps=1))
    steps = manifest["stats"]["steps"]
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"eval_' in x]
    assert [r["step"] for r in evals] == list(range(1, steps + 1))  # every step once, the last one included
    assert manifest["stats"]["eval_mlm_accuracy"] == evals[-1]["eval_mlm_accuracy"]


def _nan_after(monkeypatch, calls: set[int]):
    real = pretraining_loss
    counter = {"n": 0}

    def fake(model, batch, has_nsp=True, **kwargs):
        counter["n"] += 1
        loss, stats = real(model, batch, has_nsp, **kwargs)
        if counter["n"] in calls:
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr("bertcli.model.pretraining_loss", fake)  # what PretrainingModule calls
    return counter


def test_nonfinite_loss_rolls_back_and_skips_batch(masked_data, tmp_path, monkeypatch, capsys):
    # micro-batches are 2 per step: call 9 is in step 5 (after the checkpoint at step 4)
    _nan_after(monkeypatch, {9})
    manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "run", eval_every=0))
    assert manifest["stats"]["steps"] == 6 and manifest["stats"]["rollbacks"] == 1
    assert "rolled back" in capsys.readouterr().err
    state = json.loads((tmp_path / "run/final/training_state/state.json").read_text())["state"]
    assert state["skipped_batches"] == [[0, 4]]
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())
    assert any('"rollback"' in line for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines())


def test_nonfinite_loss_stop_keeps_last_checkpoint(masked_data, tmp_path, monkeypatch):
    _nan_after(monkeypatch, {9})
    with pytest.raises(BertcliError, match="non-finite loss at step 5"):
        pretrain.run(tiny_cfg(masked_data, tmp_path / "run", eval_every=0, on_nonfinite="stop"))
    assert newest_valid_checkpoint(tmp_path / "run").name == "step-00000004"
    assert not (tmp_path / "run" / "final").exists()


def test_init_from_a_run_and_from_masked_lm(reference_run, masked_data, tmp_path, capsys):
    capsys.readouterr()
    manifest = pretrain.run(tiny_cfg(masked_data, tmp_path / "again", max_steps=1, save_every=0, eval_every=0,
                                     init_from=str(reference_run / "final")))
    assert manifest["stats"]["steps"] == 1
    assert "MLM output bias" not in capsys.readouterr().err  # init_from's trained bias is kept, not replaced
    mlm_dir = tmp_path / "mlm"
    BertForMaskedLM.from_pretrained(reference_run / "final").save_pretrained(mlm_dir)
    shutil.copy(reference_run / "final" / "vocab.txt", mlm_dir / "vocab.txt")
    pretrain.run(tiny_cfg(masked_data, tmp_path / "from-mlm", max_steps=1, save_every=0, eval_every=0,
                          init_from=str(mlm_dir)))
    assert "cls.seq_relationship" in capsys.readouterr().err  # the NSP head was missing: initialised, and said so


# ------------------------------------------------------------------------- shipped configs, the whole pipeline

@pytest.mark.parametrize("name", ["tiny", "base", "phase1_128", "phase2_512"])
def test_shipped_configs_load_and_list_every_key(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / f"{name}.yaml"
    cfg = load_config(PretrainConfig, str(path))
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(PretrainConfig)}
    assert set(raw["model"]) == {f.name for f in dataclasses.fields(ModelConfig)}
    if name != "tiny":
        assert cfg.model.preset == "base" and cfg.batch_size == 256
    if name == "phase2_512":
        phase1 = load_config(PretrainConfig, str(path.with_name("phase1_128.yaml")))
        assert cfg.init_from == f"{phase1.output}/final"
        assert phase1.max_steps == 9 * cfg.max_steps  # 90% / 10%
        assert phase1.model.max_position_embeddings >= 512
        # dynamic masking at 512: ~15% of the tokens, as Google's phase 2 (80), not phase 1's 20
        assert cfg.max_predictions_per_seq >= 0.15 * 512 and phase1.max_predictions_per_seq == 20


def test_two_phase_recipe_in_miniature(tmp_path, tiny_tokenizer, tiny_corpus):
    """Phase 1 at length 32, phase 2 at length 64 from phase 1's final/ (as phase1_128 → phase2_512)."""
    short = make_artifact(tmp_path / "short", tiny_tokenizer, tiny_corpus, max_seq_length=32, num_sequences=40)
    long = make_artifact(tmp_path / "long", tiny_tokenizer, tiny_corpus, max_seq_length=64, num_sequences=40)
    pretrain.run(tiny_cfg(short, tmp_path / "phase1", max_steps=2, save_every=0, eval_every=0, eval_fraction=0.2))
    manifest = pretrain.run(tiny_cfg(long, tmp_path / "phase2", max_steps=2, save_every=0, eval_every=0,
                                     eval_fraction=0.2, init_from=str(tmp_path / "phase1" / "final")))
    assert manifest["max_seq_length"] == 64 and manifest["stats"]["steps"] == 2
    w1, w2 = weights(tmp_path / "phase1"), weights(tmp_path / "phase2")
    assert not torch.equal(w1["bert.embeddings.position_embeddings.weight"],
                           w2["bert.embeddings.position_embeddings.weight"])


def test_end_to_end_with_the_real_pairs_and_mask_stages(tmp_path, tiny_tokenizer, tiny_corpus, monkeypatch):
    """train-vocab (fixture) → pairs → mask → pretrain → fill-mask pipeline, all through the project's stages."""
    pairs.run(PairsConfig(input=[str(tiny_corpus)], tokenizer=str(tiny_tokenizer), output=str(tmp_path / "pairs"),
                          max_seq_length=48, num_workers=1))
    mask.run(MaskConfig(input=str(tmp_path / "pairs"), output=str(tmp_path / "masked"), num_workers=1))
    for kind in ("masked", "pairs"):
        manifest = pretrain.run(tiny_cfg(tmp_path / kind, tmp_path / f"run-{kind}", max_steps=3, save_every=0,
                                         eval_every=0, eval_fraction=0.05))
        assert manifest["inputs"]["data"]["kind"] == kind and manifest["max_seq_length"] == 48
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill = pipeline("fill-mask", model=str(tmp_path / "run-masked" / "final"))
    assert len(fill(f"the {fill.tokenizer.mask_token} .")) == 5


def test_micro_batches_follow_batch_size_and_process_count():
    # `--set batch_size=16` with the shipped micro_batch_size 32, and torchrun's 2 processes at batch 32, just work
    assert devices.micro_batching(16, 32, 1) == (16, 1)
    assert devices.micro_batching(32, 32, 2) == (16, 1)
    assert devices.micro_batching(256, 32, 1) == (32, 8)
    assert devices.micro_batching(96, 64, 1) == (48, 2)
    assert devices.micro_batching(10, 4, 1) == (2, 5)
    with pytest.raises(ConfigError, match="batch_size.*3 processes"):
        devices.micro_batching(32, 32, 3)
    # resuming a batch-33 run on 2 processes: batch_size cannot change then, the number of processes can
    with pytest.raises(ConfigError) as refused:
        devices.micro_batching(33, 32, 2)
    assert refused.value.hint == ("choose a batch_size that is a multiple of 2, or run 1, 3, 11, 33 processes "
                                  "(a run resumed keeps its batch_size)")
