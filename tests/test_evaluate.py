"""`bert evaluate` computes its numbers with the training code: on the sequences and masks that `bert pretrain`
evaluates, it reports what the trainer wrote to metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcli.cli import app
from pretrain_fixtures import make_artifact, write_rows

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two busy threads on a shared 2-core machine are slower than one
    yield
    torch.set_num_threads(threads)


def _held_out_artifact(data_dir: Path, out: Path, indices) -> Path:
    """A masked artifact holding exactly the given sequences of data_dir, in that order, masks included."""
    import numpy as np

    from bertcli.artifacts import load_data, write_manifest
    from bertcli.schemas import MaskConfig
    from bertcli.shards import ShardWriter
    from bertcli.vocab import copy_tokenizer_files

    data = load_data(data_dir)
    out.mkdir()
    dtype = np.dtype(data.token_dtype)
    writer = ShardWriter(out, ragged={"input_ids": dtype, "masked_positions": np.int16, "masked_labels": dtype},
                         scalar={"type_boundary": np.int32, "next_sentence_label": np.int8}, sequences_per_shard=1000)
    write_rows(writer, [data.arrays[int(i)] for i in indices])
    writer.close()
    copy_tokenizer_files(data.tokenizer_dir, out / "tokenizer")
    keys = ("vocab_size", "max_seq_length", "special_token_ids", "token_dtype", "nsp")
    write_manifest(out, "masked", MaskConfig(input=str(data_dir), output=str(out)), stats={},
                   inputs=data.manifest["inputs"], extra={k: data.manifest[k] for k in keys})
    return out


def test_evaluate_reports_what_training_evaluated(tmp_path: Path, tiny_tokenizer: Path, tiny_corpus: Path) -> None:
    from bertcli.batching import EpochPlan

    masked = make_artifact(tmp_path / "masked", tiny_tokenizer, tiny_corpus, kind="masked", num_sequences=160,
                           sequences_per_shard=50)
    run = tmp_path / "run"
    sets = ["model.preset=null", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
            "model.intermediate_size=64", "model.max_position_embeddings=64", "max_steps=4", "batch_size=8",
            "micro_batch_size=4", "learning_rate=2e-3", "warmup_steps=1", "eval_fraction=0.2", "eval_every=0",
            "eval_batches=100", "save_every=0", "log_every=2", "device=cpu", "seed=5"]
    result = runner.invoke(app, ["pretrain", "--data", str(masked), "--output", str(run),
                                 *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    trained = [r for r in records if "eval_mlm_loss" in r][-1]  # the final evaluation, of final/'s weights

    # The sequences the trainer held out (all of them: eval_batches × micro_batch_size exceeds their number).
    from bertcli.artifacts import load_data

    plan = EpochPlan(load_data(masked).arrays, seed=5, batch_size=8, eval_fraction=0.2)
    held_out = plan.held_out_indices(100 * 4)
    assert 10 < len(held_out) < 100 * 4
    data = _held_out_artifact(masked, tmp_path / "held-out", held_out)

    result = runner.invoke(app, ["evaluate", "--model", str(run), "--data", str(data), "--json",
                                 "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["sequences"] == len(held_out) and metrics["masking"].startswith("static")
    for key in ("mlm_loss", "mlm_accuracy", "nsp_accuracy"):
        assert metrics[key] == pytest.approx(trained[f"eval_{key}"], abs=1e-6), key


def test_evaluate_on_pairs_masks_like_training_and_ignores_batch_size(
    tmp_path: Path, tiny_tokenizer: Path, tiny_corpus: Path
) -> None:
    """Dynamic masking: the spec pretrain builds by default, one seed per chunk, so --batch-size changes nothing."""
    import numpy as np

    from bertcli import model as M
    from bertcli.artifacts import load_data
    from bertcli.masking import num_to_select
    from bertcli.schemas import PretrainConfig

    pairs = make_artifact(tmp_path / "pairs", tiny_tokenizer, tiny_corpus, kind="pairs", num_sequences=60)
    data = load_data(pairs)
    config = M.build_bert_config(None, {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 64, "max_position_embeddings": 64},
                                 data.vocab_size, data.special_ids["pad"])
    model_dir = tmp_path / "model"
    M.build_model(config, seed=0).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (data.tokenizer_dir / name).is_file():
            (model_dir / name).write_bytes((data.tokenizer_dir / name).read_bytes())
    runs = []
    for batch_size in ("3", "16"):
        result = runner.invoke(app, ["evaluate", "--model", str(model_dir), "--data", str(pairs), "--json",
                                     "--batch-size", batch_size, "--device", "cpu", "--seed", "2"])
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout))
    assert runs[0]["masking"] == "dynamic (seed 2)" and runs[0]["masked_tokens"] == runs[1]["masked_tokens"] > 0
    assert runs[0]["mlm_loss"] == pytest.approx(runs[1]["mlm_loss"], rel=1e-6)
    # As many targets per sequence as pretrain's default masking selects (masked_lm_prob, max_predictions_per_seq).
    defaults = PretrainConfig()
    spec = data.tokenizer.masking_spec(masked_lm_prob=defaults.masked_lm_prob,
                                       max_predictions_per_seq=defaults.max_predictions_per_seq)
    candidates = np.array([spec.is_candidate[np.asarray(data.arrays[i]["input_ids"])].sum() for i in range(60)])
    assert runs[0]["masked_tokens"] == int(num_to_select(candidates, spec).sum())
