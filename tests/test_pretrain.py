"""Tests of `bert pretrain` on tiny models (hidden 32, 2 layers) and tiny artifacts: the default suite."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertcli import model as M
from bertcli.artifacts import file_sha256, load_data
from bertcli.config import load_config
from bertcli.errors import ArtifactError, BertcliError, ConfigError, OutputExistsError
from bertcli.schemas import ModelConfig, PretrainConfig
from bertcli.stages import pretrain as P
from pretrain_fixtures import make_artifact

TINY_MODEL = dict(preset=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


@pytest.fixture(autouse=True)
def _one_thread_no_plot(monkeypatch):
    # One intra-op thread: tiny matrices run faster without threading overhead, and other tests share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(P, "_plot", lambda out: None)  # matplotlib costs seconds; tested once below
    yield
    torch.set_num_threads(threads)


def tiny_cfg(data: Path, output: Path, **overrides) -> PretrainConfig:
    values = dict(
        data=str(data), output=str(output), model=ModelConfig(**TINY_MODEL), max_steps=6, batch_size=8,
        micro_batch_size=4, learning_rate=2e-3, warmup_steps=2, eval_every=3, eval_batches=2, save_every=2,
        keep_checkpoints=3, log_every=2, eval_fraction=0.1, seed=3,
    )
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="module")
def masked_data(tmp_path_factory, tiny_tokenizer, tiny_corpus) -> Path:
    return make_artifact(tmp_path_factory.mktemp("data") / "masked", tiny_tokenizer, tiny_corpus,
                         kind="masked", num_sequences=160, sequences_per_shard=50)


@pytest.fixture(scope="module")
def pairs_data(tmp_path_factory, tiny_tokenizer, tiny_corpus) -> Path:
    return make_artifact(tmp_path_factory.mktemp("data") / "pairs", tiny_tokenizer, tiny_corpus, kind="pairs",
                         num_sequences=120, sequences_per_shard=50)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, masked_data) -> Path:
    """An uninterrupted 6-step run with checkpoints at steps 2 and 4 (read-only: copy it to modify)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "reference"
    P.run(tiny_cfg(masked_data, out))
    return out


def weights(run: Path, name: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def interrupted_copy(reference: Path, dest: Path) -> Path:
    """The reference run as a kill after step 5 would leave it: no final/, no manifest, metrics beyond step 4."""
    shutil.copytree(reference, dest)
    shutil.rmtree(dest / "final")
    (dest / "manifest.json").unlink()
    return dest


# ------------------------------------------------------------------------------------------ the run directory

def test_run_directory_metrics_and_checkpoints(reference_run):
    names = sorted(p.name for p in reference_run.iterdir())
    assert "final" in names and "metrics.jsonl" in names and "config.yaml" in names and "manifest.json" in names
    assert [p.name for _, p in P.list_checkpoints(reference_run)] == ["step-00000002", "step-00000004"]
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
    marker = json.loads((reference_run / "final" / P.MARKER).read_text())
    assert {"model.safetensors", "config.json", "vocab.txt", "tokenizer.json", "training_state/optimizer.pt",
            "training_state/state.json"} <= set(marker["files"])
    assert P.verify_checkpoint(reference_run / "final") is None
    assert not list(reference_run.glob(".*tmp*"))


def test_final_loads_as_stock_bert_offline(reference_run, monkeypatch):
    from transformers import AutoModelForPreTraining, BertForPreTraining, pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForPreTraining.from_pretrained(reference_run / "final")
    assert type(model) is BertForPreTraining
    assert_same_weights({k: v for k, v in model.state_dict().items() if k in weights(reference_run)},
                        weights(reference_run))
    fill = pipeline("fill-mask", model=str(reference_run / "final"))
    out = fill(f"the {fill.tokenizer.mask_token} is here .")
    assert len(out) == 5 and all("token_str" in o for o in out)


def test_keep_last_k_checkpoints(masked_data, tmp_path):
    out = tmp_path / "run"
    P.run(tiny_cfg(masked_data, out, max_steps=7, save_every=1, keep_checkpoints=2, eval_every=0))
    assert [s for s, _ in P.list_checkpoints(out)] == [5, 6]


# ------------------------------------------------------------------------------------------ exact resume

def test_resume_is_bit_identical(reference_run, tmp_path):
    run = interrupted_copy(reference_run, tmp_path / "run")
    # lines for step 6 exist in metrics.jsonl; resuming from step 4 must drop them and write them again
    P.run(tiny_cfg(masked_data_path(reference_run), run), resume=True)
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


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
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
    P.run(tiny_cfg(masked_data_path(reference_run), run), resume=True)
    assert [s for s, _ in _tensorboard_scalars(run)["loss"]] == [2, 4, 6]


def masked_data_path(run: Path) -> Path:
    import yaml

    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"])


def test_corrupt_and_unfinished_checkpoints_are_skipped(reference_run, tmp_path, capsys):
    run = interrupted_copy(reference_run, tmp_path / "run")
    # step 4 damaged after it was written (truncated weights), an unfinished step 5 (no marker), a temp dir
    weights_file = run / "step-00000004" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    shutil.copytree(run / "step-00000002", run / "step-00000005")
    (run / "step-00000005" / P.MARKER).unlink()
    shutil.copytree(run / "step-00000002", run / ".step-00000006.tmp-999999")
    P.run(tiny_cfg(masked_data_path(reference_run), run), resume=True)
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
    marker = json.loads((ckpt / P.MARKER).read_text())
    path = ckpt / "training_state" / "optimizer.pt"
    marker["files"]["training_state/optimizer.pt"] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    (ckpt / P.MARKER).write_text(json.dumps(marker))
    P.run(tiny_cfg(masked_data_path(reference_run), run), resume=True)
    assert not (tmp_path / "pwned").exists()
    assert "step-00000004" in capsys.readouterr().err
    assert_same_weights(weights(run), weights(reference_run))


def test_checkpoint_without_safetensors_is_not_loaded(reference_run, tmp_path):
    ckpt = tmp_path / "step-00000009"
    shutil.copytree(reference_run / "step-00000004", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    marker = json.loads((ckpt / P.MARKER).read_text())
    marker["files"].pop("model.safetensors")
    (ckpt / P.MARKER).write_text(json.dumps(marker))
    assert "safetensors" in P.verify_checkpoint(ckpt)


def test_finished_run_resume_is_a_no_op(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = (run / "final" / "model.safetensors").stat().st_mtime_ns
    manifest = P.run(tiny_cfg(masked_data_path(reference_run), run), resume=True)
    assert manifest["stats"]["steps"] == 6
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == before


# ------------------------------------------------------------------------------------------ bad input

def test_output_with_another_run_is_refused(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    with pytest.raises(OutputExistsError, match="holds another run"):
        P.run(tiny_cfg(masked_data_path(reference_run), run))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a bertcli run"):
        P.run(tiny_cfg(masked_data_path(reference_run), foreign), overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_resume_with_changed_config_is_refused(reference_run, tmp_path):
    run = interrupted_copy(reference_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="learning_rate"):
        P.run(tiny_cfg(masked_data_path(reference_run), run, learning_rate=1e-2), resume=True)


def test_bad_data_and_model_are_errors_before_any_step(masked_data, pairs_data, tmp_path, tiny_bert):
    with pytest.raises(ArtifactError, match="does not exist"):
        P.run(tiny_cfg(tmp_path / "nothing", tmp_path / "a"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(masked_data, unfinished)
    (unfinished / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        P.run(tiny_cfg(unfinished, tmp_path / "b"))
    small = ModelConfig(**{**TINY_MODEL, "max_position_embeddings": 16})
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        P.run(tiny_cfg(masked_data, tmp_path / "c", model=small))
    with pytest.raises(ConfigError, match="batch_size"):
        P.run(tiny_cfg(masked_data, tmp_path / "d", batch_size=10, micro_batch_size=4))
    with pytest.raises(ArtifactError, match="vocabulary|vocab_size"):
        P.run(tiny_cfg(masked_data, tmp_path / "e", init_from=str(tiny_bert)))
    with pytest.raises(ArtifactError, match="fewer than batch_size"):
        P.run(tiny_cfg(masked_data, tmp_path / "f", batch_size=4096, micro_batch_size=4))
    for key in ("max_steps", "batch_size"):
        with pytest.raises(ConfigError, match=key):
            load_config(PretrainConfig, None, [f"{key}=0"])
    assert not any((tmp_path / n).exists() and any((tmp_path / n).iterdir()) for n in "abcdef")


def test_cli_pretrain_and_plot(masked_data, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from bertcli.cli import app
    from bertcli.stages import plot as plot_stage

    monkeypatch.setattr(P, "_plot", lambda out: plot_stage.plot_run(out))
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


# ------------------------------------------------------------------------------------------ data pipeline

def test_epoch_plan_covers_training_data_once_and_buckets_lengths(masked_data):
    from bertcli.shards import ShardedArrays

    arrays = ShardedArrays(masked_data)
    plan = P.EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    held = set(plan.held_out_indices(10_000).tolist())
    assert 0 < len(held) < 40  # ~10% of 160
    n = plan.batches_per_epoch(0)
    assert n == plan.num_train_sequences // 8
    seen = np.concatenate([plan.batch(0, b) for b in range(n)])
    assert len(set(seen.tolist())) == len(seen) == n * 8  # no repeats within an epoch
    assert not held & set(seen.tolist())  # held-out never trained on
    # the same (epoch, batch) is computed directly, identically; another epoch has another order
    again = P.EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    assert np.array_equal(again.batch(0, n - 1), plan.batch(0, n - 1))
    assert not np.array_equal(np.concatenate([plan.batch(1, b) for b in range(n)]), seen)
    # length-aware: padding within batches is well below random batching
    lengths = arrays.lengths("input_ids")

    def waste(batches):
        return sum((lengths[b].max() - lengths[b]).sum() for b in batches) / sum(lengths[b].max() * len(b) for b in batches)

    ours = [plan.batch(0, b) for b in range(n)]
    shuffled = np.random.default_rng(0).permutation(seen).reshape(n, 8)
    assert waste(ours) < 0.5 * waste(shuffled)


def test_micro_batches_split_the_same_way_for_any_world_size(masked_data):
    from bertcli.shards import ShardedArrays

    arrays = ShardedArrays(masked_data)
    plan = P.EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    collate = P.Collator(pad_id=0, special_ids={}, vocab_size=1000, has_nsp=True, dynamic=False)
    single = P.MicroBatches(plan, collate, 0, micro_batch_size=2, accum=4, rank=0, world_size=1, seed=1)
    ranks = [P.MicroBatches(plan, collate, 0, micro_batch_size=2, accum=2, rank=r, world_size=2, seed=1)
             for r in (0, 1)]
    one = [single[k]["input_ids"] for k in range(4)]  # micro-batches j = 0..3 of batch 0
    two = [ranks[r][a]["input_ids"] for a in range(2) for r in range(2)]  # j = a·2 + r
    for x, y in zip(one, two):
        assert torch.equal(x, y)


def test_collator_pads_and_flattens_positions(masked_data):
    from bertcli.shards import ShardedArrays
    from bertcli.vocab import load_tokenizer

    arrays = ShardedArrays(masked_data)
    pad = load_tokenizer(masked_data / "tokenizer").special_ids["pad"]
    rows = [arrays[i] for i in range(3)]
    batch = P.Collator(pad_id=pad, special_ids={}, vocab_size=1000, has_nsp=True, dynamic=False)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (3, width)
    flat = batch["input_ids"].reshape(-1)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["attention_mask"][i].sum() == n and (batch["input_ids"][i, n:] == pad).all()
        assert (batch["token_type_ids"][i, : int(r["type_boundary"])] == 0).all()
        assert (batch["token_type_ids"][i, int(r["type_boundary"]) : n] == 1).all()
    expected = np.concatenate([np.asarray(r["masked_positions"]) + i * width for i, r in enumerate(rows)])
    assert torch.equal(batch["masked_positions"], torch.from_numpy(expected))
    assert torch.equal(batch["masked_labels"], torch.from_numpy(np.concatenate([r["masked_labels"] for r in rows]).astype(np.int64)))
    assert batch["num_tokens"] == sum(len(r["input_ids"]) for r in rows)
    assert flat.dtype == torch.int64


def test_dynamic_masking_from_pairs(pairs_data, tmp_path):
    from bertcli.shards import ShardedArrays
    from bertcli.vocab import load_tokenizer

    cfg = tiny_cfg(pairs_data, tmp_path / "run", max_steps=3, save_every=0, eval_every=0)
    data = load_data(pairs_data)
    assert data.kind == "pairs" and data.has_nsp
    spec = data.tokenizer.masking_spec(masked_lm_prob=cfg.masked_lm_prob, max_predictions_per_seq=cfg.max_predictions_per_seq)
    tok = load_tokenizer(pairs_data / "tokenizer")
    collate = P.Collator(pad_id=tok.special_ids["pad"], special_ids=tok.special_ids, vocab_size=tok.vocab_size,
                         has_nsp=True, dynamic=True, masking=spec)
    arrays = ShardedArrays(pairs_data)
    rows = [arrays[i] for i in range(16)]
    a, b, c = collate(rows, 7), collate(rows, 7), collate(rows, 8)
    assert torch.equal(a["masked_positions"], b["masked_positions"])  # seeded by data position: reproducible
    assert not torch.equal(a["masked_positions"], c["masked_positions"])  # another position, other masks
    flat_orig = torch.from_numpy(np.concatenate([np.pad(np.asarray(r["input_ids"], dtype=np.int64),
                (0, a["input_ids"].shape[1] - len(r["input_ids"])), constant_values=tok.special_ids["pad"]) for r in rows]))
    assert torch.equal(a["masked_labels"], flat_orig[a["masked_positions"]])
    specials = torch.tensor(sorted(set(tok.special_ids.values())))
    assert not torch.isin(a["masked_labels"], specials).any()
    manifest = P.run(cfg)
    assert manifest["inputs"]["data"]["kind"] == "pairs" and manifest["stats"]["steps"] == 3


def test_mlm_only_data_trains_without_nsp(tmp_path, tiny_tokenizer, tiny_corpus):
    data = make_artifact(tmp_path / "mlm", tiny_tokenizer, tiny_corpus, kind="masked", num_sequences=60, nsp=False)
    manifest = P.run(tiny_cfg(data, tmp_path / "run", max_steps=2, save_every=0, eval_every=0, eval_fraction=0.2))
    assert "eval_nsp_accuracy" not in manifest["stats"] and manifest["stats"]["eval_mlm_accuracy"] >= 0


# ------------------------------------------------------------------------------------------ training behaviour

def test_training_learns(masked_data, tmp_path):
    manifest = P.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=40, learning_rate=5e-3, save_every=0,
                              eval_every=0, log_every=10, warmup_steps=4, batch_size=16, micro_batch_size=16,
                              mlm_bias_init="zero"))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["mlm_loss"] for r in records if "mlm_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    assert manifest["stats"]["eval_mlm_accuracy"] > 0.02


@pytest.mark.parametrize("kind", ["masked", "pairs"])
def test_unigram_bias_counts_training_targets_only(kind, masked_data, pairs_data):
    data = load_data(masked_data if kind == "masked" else pairs_data)
    plan = P.EpochPlan(data.arrays, seed=0, batch_size=8, eval_fraction=0.1)
    held_out = set(plan.held_out_indices(10**9).tolist())
    assert held_out
    expected = np.zeros(data.vocab_size, dtype=np.int64)
    field = "masked_labels" if kind == "masked" else "input_ids"
    for i in range(data.arrays.num_sequences):
        if i not in held_out:
            np.add.at(expected, np.asarray(data.arrays[i][field], dtype=np.int64), 1)
    # pairs data: exactly the ids dynamic masking may select (no [CLS], [SEP], [PAD], [MASK], [UNK], …)
    masking = data.tokenizer.masking_spec() if kind == "pairs" else None
    if masking is not None:
        expected[~masking.is_candidate] = 0
        assert expected[data.special_ids["cls"]] == 0 and expected[data.special_ids["sep"]] == 0
    counts = P.target_token_counts(data, plan, masking)
    assert np.array_equal(counts, expected)
    # a cap keeps the count bounded: each shard gives only its first sequences, and never nothing
    capped = P.target_token_counts(data, plan, masking, max_tokens=60)
    assert 0 < capped.sum() < counts.sum() and np.all(capped <= counts)
    prior = P.unigram_log_prior(counts)
    assert np.isfinite(prior).all() and np.exp(prior.astype(np.float64)).sum() == pytest.approx(1.0, rel=1e-5)


def test_unigram_bias_starts_lower_and_is_not_applied_to_init_from(masked_data, reference_run, tmp_path):
    first_loss = {}
    for init in ("unigram", "zero"):
        P.run(tiny_cfg(masked_data, tmp_path / init, max_steps=1, log_every=1, eval_every=0, save_every=0,
                       warmup_steps=0, mlm_bias_init=init))
        first_loss[init] = json.loads((tmp_path / init / "metrics.jsonl").read_text().splitlines()[0])["mlm_loss"]
    # the frequency guess is far better than uniform over the vocabulary, which a zero bias starts from
    assert first_loss["unigram"] < first_loss["zero"] - 0.5
    data = load_data(masked_data)
    plan = P.EpochPlan(data.arrays, 3, 8, 0.1)
    model = P._build_model(tiny_cfg(masked_data, tmp_path / "x"), data, plan, None, None)
    counts = P.target_token_counts(data, plan)
    assert torch.equal(model.cls.predictions.bias.detach(), torch.from_numpy(P.unigram_log_prior(counts)))
    src = weights(reference_run)["cls.predictions.bias"]
    loaded = P._build_model(tiny_cfg(masked_data, tmp_path / "y", init_from=str(reference_run / "final")), data,
                            plan, None, None)
    assert torch.equal(loaded.cls.predictions.bias.detach(), src)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_run_on_cpu(masked_data, tmp_path, precision):
    manifest = P.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=2, save_every=0, eval_every=0,
                              precision=precision))
    assert manifest["stats"]["precision"] == precision
    w = weights(tmp_path / "run")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in w.values())  # master weights fp32
    if precision == "fp16":
        state = json.loads((tmp_path / "run/final/training_state/state.json").read_text())
        assert state["scaler"]["scale"] > 0


def test_precision_auto_is_fp32_on_cpu():
    assert P.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert P.resolve_precision("bf16", torch.device("cpu")).autocast_dtype == torch.bfloat16


def test_time_budget_stops_and_fits_schedule(masked_data, tmp_path):
    manifest = P.run(tiny_cfg(masked_data, tmp_path / "run", max_steps=100000, time_budget_s=2.0, save_every=0,
                              eval_every=0, log_every=1, warmup_steps=1))
    steps = manifest["stats"]["steps"]
    assert 1 < steps < 100000
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    assert records[-1]["lr"] < 0.5 * 2e-3  # the decay followed the clock, not max_steps


def _nan_after(monkeypatch, calls: set[int]):
    real = M.pretraining_loss
    counter = {"n": 0}

    def fake(model, batch, has_nsp=True):
        counter["n"] += 1
        loss, stats = real(model, batch, has_nsp)
        if counter["n"] in calls:
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(M, "pretraining_loss", fake)
    return counter


def test_nonfinite_loss_rolls_back_and_skips_batch(masked_data, tmp_path, monkeypatch, capsys):
    # micro-batches are 2 per step: call 9 is in step 5 (after the checkpoint at step 4)
    _nan_after(monkeypatch, {9})
    manifest = P.run(tiny_cfg(masked_data, tmp_path / "run", eval_every=0))
    assert manifest["stats"]["steps"] == 6 and manifest["stats"]["rollbacks"] == 1
    assert "rolled back" in capsys.readouterr().err
    state = json.loads((tmp_path / "run/final/training_state/state.json").read_text())["state"]
    assert state["skipped_batches"] == [[0, 4]]
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())
    assert any('"rollback"' in line for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines())


def test_nonfinite_loss_stop_keeps_last_checkpoint(masked_data, tmp_path, monkeypatch):
    _nan_after(monkeypatch, {9})
    with pytest.raises(BertcliError, match="non-finite loss at step 5"):
        P.run(tiny_cfg(masked_data, tmp_path / "run", eval_every=0, on_nonfinite="stop"))
    assert P.newest_valid_checkpoint(tmp_path / "run").name == "step-00000004"
    assert not (tmp_path / "run" / "final").exists()


def test_init_from_a_run_and_from_masked_lm(reference_run, masked_data, tmp_path, capsys):
    from transformers import BertForMaskedLM

    manifest = P.run(tiny_cfg(masked_data, tmp_path / "again", max_steps=1, save_every=0, eval_every=0,
                              init_from=str(reference_run / "final")))
    assert manifest["stats"]["steps"] == 1
    mlm_dir = tmp_path / "mlm"
    BertForMaskedLM.from_pretrained(reference_run / "final").save_pretrained(mlm_dir)
    shutil.copy(reference_run / "final" / "vocab.txt", mlm_dir / "vocab.txt")
    P.run(tiny_cfg(masked_data, tmp_path / "from-mlm", max_steps=1, save_every=0, eval_every=0,
                   init_from=str(mlm_dir)))
    assert "cls.seq_relationship" in capsys.readouterr().err  # the NSP head was missing: initialised, and said so


# ------------------------------------------------------------------------------------------ shipped configs

@pytest.mark.parametrize("name", ["tiny", "base", "phase1_128", "phase2_512"])
def test_shipped_configs_load_and_list_every_key(name):
    import dataclasses

    import yaml

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


def test_two_phase_recipe_in_miniature(tmp_path, tiny_tokenizer, tiny_corpus):
    """Phase 1 at length 32, phase 2 at length 64 from phase 1's final/ (as phase1_128 → phase2_512)."""
    short = make_artifact(tmp_path / "short", tiny_tokenizer, tiny_corpus, max_seq_length=32, num_sequences=40)
    long = make_artifact(tmp_path / "long", tiny_tokenizer, tiny_corpus, max_seq_length=64, num_sequences=40)
    P.run(tiny_cfg(short, tmp_path / "phase1", max_steps=2, save_every=0, eval_every=0, eval_fraction=0.2))
    manifest = P.run(tiny_cfg(long, tmp_path / "phase2", max_steps=2, save_every=0, eval_every=0, eval_fraction=0.2,
                              init_from=str(tmp_path / "phase1" / "final")))
    assert manifest["max_seq_length"] == 64 and manifest["stats"]["steps"] == 2
    w1, w2 = weights(tmp_path / "phase1"), weights(tmp_path / "phase2")
    assert not torch.equal(w1["bert.embeddings.position_embeddings.weight"],
                           w2["bert.embeddings.position_embeddings.weight"])


def test_end_to_end_with_the_real_pairs_and_mask_stages(tmp_path, tiny_tokenizer, tiny_corpus, monkeypatch):
    """train-vocab (fixture) → pairs → mask → pretrain → fill-mask pipeline, all through the project's stages."""
    from transformers import pipeline

    from bertcli.schemas import MaskConfig, PairsConfig
    from bertcli.stages import mask, pairs

    pairs.run(PairsConfig(input=[str(tiny_corpus)], tokenizer=str(tiny_tokenizer), output=str(tmp_path / "pairs"),
                          max_seq_length=48, num_workers=1))
    mask.run(MaskConfig(input=str(tmp_path / "pairs"), output=str(tmp_path / "masked"), num_workers=1))
    for kind in ("masked", "pairs"):
        manifest = P.run(tiny_cfg(tmp_path / kind, tmp_path / f"run-{kind}", max_steps=3, save_every=0,
                                  eval_every=0, eval_fraction=0.05))
        assert manifest["inputs"]["data"]["kind"] == kind and manifest["max_seq_length"] == 48
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill = pipeline("fill-mask", model=str(tmp_path / "run-masked" / "final"))
    assert len(fill(f"the {fill.tokenizer.mask_token} .")) == 5


def test_loader_workers_give_the_same_run(reference_run, tmp_path):
    """DataLoader worker processes change where batches are built, not which: same weights as in-process."""
    P.run(tiny_cfg(masked_data_path(reference_run), tmp_path / "workers", num_workers=2))
    assert_same_weights(weights(tmp_path / "workers"), weights(reference_run))


def test_overwrite_replaces_the_run_but_keeps_other_files(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "notes.txt").write_text("mine")
    P.run(tiny_cfg(masked_data_path(reference_run), run, max_steps=2, save_every=0, eval_every=0), overwrite=True)
    assert (run / "notes.txt").read_text() == "mine"
    assert not P.list_checkpoints(run)  # the old run's step-* are gone
    assert json.loads((run / "manifest.json").read_text())["stats"]["steps"] == 2
