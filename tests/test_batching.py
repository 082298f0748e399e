"""Tests of bertcli.batching: the held-out split, the epoch plan, micro-batches for any world size, the collator and
the unigram prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertcli.artifacts import load_data
from bertcli.batching import (
    Collator,
    EpochPlan,
    MicroBatches,
    held_out_micro_batches,
    target_token_counts,
    to_model_batch,
    unigram_log_prior,
)
from bertcli.shards import ShardedArrays
from bertcli.vocab import load_tokenizer


def test_epoch_plan_covers_training_data_once_and_buckets_lengths(masked_data):
    arrays = ShardedArrays(masked_data)
    plan = EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    held = set(plan.held_out_indices(10_000).tolist())
    assert 0 < len(held) < 40  # ~10% of 160
    n = plan.batches_per_epoch(0)
    assert n == plan.num_train_sequences // 8
    seen = np.concatenate([plan.batch(0, b) for b in range(n)])
    assert len(set(seen.tolist())) == len(seen) == n * 8  # no repeats within an epoch
    assert not held & set(seen.tolist())  # held-out never trained on
    # the same (epoch, batch) is computed directly, identically; another epoch has another order
    again = EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    assert np.array_equal(again.batch(0, n - 1), plan.batch(0, n - 1))
    assert not np.array_equal(np.concatenate([plan.batch(1, b) for b in range(n)]), seen)
    # length-aware: padding within batches is well below random batching
    lengths = arrays.lengths("input_ids")

    def waste(batches):
        padding = sum((lengths[b].max() - lengths[b]).sum() for b in batches)
        return padding / sum(lengths[b].max() * len(b) for b in batches)

    ours = [plan.batch(0, b) for b in range(n)]
    shuffled = np.random.default_rng(0).permutation(seen).reshape(n, 8)
    assert waste(ours) < 0.5 * waste(shuffled)



def test_micro_batches_split_the_same_way_for_any_world_size(masked_data):
    arrays = ShardedArrays(masked_data)
    plan = EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    collate = Collator(pad_id=0, has_nsp=True, dynamic=False)
    single = MicroBatches(plan, collate, 0, micro_batch_size=2, accum=4, rank=0, world_size=1, seed=1)
    ranks = [MicroBatches(plan, collate, 0, micro_batch_size=2, accum=2, rank=r, world_size=2, seed=1)
             for r in (0, 1)]
    one = [single[k]["input_ids"] for k in range(4)]  # micro-batches j = 0..3 of batch 0
    two = [ranks[r][a]["input_ids"] for a in range(2) for r in range(2)]  # j = a·2 + r
    for x, y in zip(one, two):
        assert torch.equal(x, y)



def test_collator_pads_and_flattens_positions(masked_data):
    arrays = ShardedArrays(masked_data)
    pad = load_tokenizer(masked_data / "tokenizer").special_ids["pad"]
    rows = [arrays[i] for i in range(3)]
    batch = Collator(pad_id=pad, has_nsp=True, dynamic=False)(rows)
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
    labels = np.concatenate([r["masked_labels"] for r in rows]).astype(np.int64)
    assert torch.equal(batch["masked_labels"], torch.from_numpy(labels))
    assert batch["num_tokens"] == sum(len(r["input_ids"]) for r in rows)
    assert flat.dtype == torch.int64



def test_dynamic_masking_collator(pairs_data):
    data = load_data(pairs_data)
    assert data.kind == "pairs" and data.has_nsp
    spec = data.tokenizer.masking_spec(masked_lm_prob=0.15, max_predictions_per_seq=20)
    tok = load_tokenizer(pairs_data / "tokenizer")
    collate = Collator(pad_id=tok.special_ids["pad"], has_nsp=True, dynamic=True, masking=spec)
    arrays = ShardedArrays(pairs_data)
    rows = [arrays[i] for i in range(16)]
    a, b, c = collate(rows, 7), collate(rows, 7), collate(rows, 8)
    assert torch.equal(a["masked_positions"], b["masked_positions"])  # seeded by data position: reproducible
    assert not torch.equal(a["masked_positions"], c["masked_positions"])  # another position, other masks
    width = a["input_ids"].shape[1]
    padded = [np.pad(np.asarray(r["input_ids"], dtype=np.int64), (0, width - len(r["input_ids"])),
                     constant_values=tok.special_ids["pad"]) for r in rows]
    flat_orig = torch.from_numpy(np.concatenate(padded))
    assert torch.equal(a["masked_labels"], flat_orig[a["masked_positions"]])
    specials = torch.tensor(sorted(set(tok.special_ids.values())))
    assert not torch.isin(a["masked_labels"], specials).any()


def test_to_model_batch_carries_every_tensor(masked_data):
    arrays = ShardedArrays(masked_data)
    collated = Collator(pad_id=0, has_nsp=True, dynamic=False)([arrays[i] for i in range(3)])
    batch = to_model_batch(collated, torch.device("cpu"))
    for name in ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_labels",
                 "next_sentence_label"):
        assert torch.equal(getattr(batch, name), collated[name]), name
    assert to_model_batch(Collator(pad_id=0, has_nsp=False, dynamic=False)([arrays[0]]),
                          torch.device("cpu")).next_sentence_label is None


def test_held_out_micro_batches_are_split_over_ranks_and_the_same_every_time(pairs_data):
    data = load_data(pairs_data)
    plan = EpochPlan(data.arrays, seed=0, batch_size=8, eval_fraction=0.2)
    collate = Collator(pad_id=data.special_ids["pad"], has_nsp=True, dynamic=True,
                       masking=data.tokenizer.masking_spec())
    indices = plan.held_out_indices(12)
    assert len(indices) == 12
    one = list(held_out_micro_batches(plan, collate, indices, 4))
    assert len(one) == 3 and sum(int(b["attention_mask"].shape[0]) for b in one) == 12
    lengths = [int(n) for b in one for n in b["attention_mask"].sum(1)]
    assert lengths == sorted(lengths)  # sorted by length: little padding
    again = list(held_out_micro_batches(plan, collate, indices, 4))
    two = [list(held_out_micro_batches(plan, collate, indices, 4, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(x) for x in two] == [2, 1]
    for x, y, z in zip(one, again, [two[0][0], two[1][0], two[0][1]]):  # micro-batch i on rank i % 2
        assert torch.equal(x["masked_positions"], y["masked_positions"])  # the same masks at every evaluation
        assert torch.equal(x["input_ids"], z["input_ids"])


@pytest.mark.parametrize("kind", ["masked", "pairs"])
def test_unigram_bias_counts_training_targets_only(kind, masked_data, pairs_data):
    data = load_data(masked_data if kind == "masked" else pairs_data)
    plan = EpochPlan(data.arrays, seed=0, batch_size=8, eval_fraction=0.1)
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
    counts = target_token_counts(data, plan, masking)
    assert np.array_equal(counts, expected)
    # a cap keeps the count bounded: each shard gives only its first sequences, and never nothing
    capped = target_token_counts(data, plan, masking, max_tokens=60)
    assert 0 < capped.sum() < counts.sum() and np.all(capped <= counts)
    prior = unigram_log_prior(counts)
    assert np.isfinite(prior).all() and np.exp(prior.astype(np.float64)).sum() == pytest.approx(1.0, rel=1e-5)

