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
    length_buckets,
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
    single = MicroBatches(plan, collate, micro_batch_size=2, accum=4, rank=0, world_size=1, seed=1)
    ranks = [MicroBatches(plan, collate, micro_batch_size=2, accum=2, rank=r, world_size=2, seed=1) for r in (0, 1)]
    for b in range(3):
        one = {single[0, b, a]["micro_batch"]: single[0, b, a] for a in range(4)}  # j = a for one process
        assert sorted(one) == [0, 1, 2, 3]
        two = [ranks[r][0, b, a] for a in range(2) for r in range(2)]
        assert sorted(x["micro_batch"] for x in two) == [0, 1, 2, 3]  # the ranks share the same four
        for x in two:
            y = one[x["micro_batch"]]
            for key in ("input_ids", "query_positions", "masked_labels", "masked_index"):
                assert torch.equal(x[key], y[key]), key


def test_micro_batches_rotate_the_longest_sequences_between_ranks(masked_data):
    """Micro-batches are sorted by length; the rank taking the last (longest) one changes from batch to batch."""
    arrays = ShardedArrays(masked_data)
    plan = EpochPlan(arrays, seed=1, batch_size=8, eval_fraction=0.1)
    ranks = [MicroBatches(plan, None, micro_batch_size=2, accum=2, rank=r, world_size=2, seed=1) for r in (0, 1)]
    longest = [next(r for r in (0, 1) if 3 in (ranks[r].micro_batch_of(b, a) for a in range(2))) for b in range(10)]
    assert longest.count(0) == longest.count(1) == 5
    for b in range(10):  # every step, the two ranks cover j = 0..3 once
        assert sorted(ranks[r].micro_batch_of(b, a) for r in (0, 1) for a in range(2)) == [0, 1, 2, 3]


def test_collator_pads_and_lays_out_the_predictions(masked_data):
    arrays = ShardedArrays(masked_data)
    pad = load_tokenizer(masked_data / "tokenizer").special_ids["pad"]
    rows = [arrays[i] for i in range(3)]
    batch = Collator(pad_id=pad, has_nsp=True, dynamic=False, max_predictions=20, fixed_width=True)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (3, width)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["attention_mask"][i].sum() == n and (batch["input_ids"][i, n:] == pad).all()
        assert (batch["token_type_ids"][i, : int(r["type_boundary"])] == 0).all()
        assert (batch["token_type_ids"][i, int(r["type_boundary"]) : n] == 1).all()
    # fixed width: slot 0 is [CLS], then the row's masked positions; labels padded with -100 to max_predictions
    assert batch["query_positions"].shape == (3, 21) and batch["masked_labels"].shape == (3, 20)
    for i, r in enumerate(rows):
        k = len(r["masked_positions"])
        assert batch["query_positions"][i, 0] == 0
        assert batch["query_positions"][i, 1 : k + 1].tolist() == np.asarray(r["masked_positions"]).tolist()
        assert batch["masked_labels"][i, :k].tolist() == np.asarray(r["masked_labels"]).tolist()
        assert (batch["masked_labels"][i, k:] == -100).all() and (batch["query_positions"][i, k + 1 :] == 0).all()
    flat_labels = batch["masked_labels"].reshape(-1)[batch["masked_index"]]
    expected = np.concatenate([r["masked_labels"] for r in rows]).astype(np.int64)
    assert torch.equal(flat_labels, torch.from_numpy(expected))
    assert batch["num_tokens"] == sum(len(r["input_ids"]) for r in rows)
    work = batch["work"]
    assert work.predictions == len(flat_labels) and work.squared_lengths == sum(len(r["input_ids"]) ** 2 for r in rows)
    with pytest.raises(ValueError, match="more than max_predictions"):
        Collator(pad_id=pad, has_nsp=True, dynamic=False, max_predictions=1)(rows)
    # eager micro-batches take their own width: the most predictions of a row
    trimmed = Collator(pad_id=pad, has_nsp=True, dynamic=False, max_predictions=20)(rows)
    most = max(len(r["masked_positions"]) for r in rows)
    assert trimmed["query_positions"].shape == (3, most + 1) and trimmed["masked_labels"].shape == (3, most)
    assert torch.equal(trimmed["masked_labels"].reshape(-1)[trimmed["masked_index"]], flat_labels)


def test_collator_pads_to_length_buckets_and_caps_at_max_width(masked_data):
    assert length_buckets(128) == (64, 128) and length_buckets(512) == (128, 256, 384, 512)
    assert length_buckets(32) == (32,) and length_buckets(100) == (64, 100)
    arrays = ShardedArrays(masked_data)
    rows = [arrays[i] for i in range(3)]
    longest = max(len(r["input_ids"]) for r in rows)
    bucketed = Collator(pad_id=0, has_nsp=True, dynamic=False, length_buckets=(longest + 3, 64))(rows)
    assert bucketed["input_ids"].shape[1] == longest + 3
    capped = Collator(pad_id=0, has_nsp=True, dynamic=False, pad_to_multiple_of=64, max_width=longest + 1)(rows)
    assert capped["input_ids"].shape[1] == longest + 1  # never beyond the model's positions


def test_dynamic_masking_collator(pairs_data):
    data = load_data(pairs_data)
    assert data.kind == "pairs" and data.has_nsp
    spec = data.tokenizer.masking_spec(masked_lm_prob=0.15, max_predictions_per_seq=20)
    tok = load_tokenizer(pairs_data / "tokenizer")
    collate = Collator(pad_id=tok.special_ids["pad"], has_nsp=True, dynamic=True, masking=spec, max_predictions=20,
                       fixed_width=True)
    arrays = ShardedArrays(pairs_data)
    rows = [arrays[i] for i in range(16)]
    a, b, c = collate(rows, 7), collate(rows, 7), collate(rows, 8)
    assert torch.equal(a["query_positions"], b["query_positions"])  # seeded by data position: reproducible
    assert not torch.equal(a["query_positions"], c["query_positions"])  # another position, other masks
    width = a["input_ids"].shape[1]
    original = torch.from_numpy(np.stack([np.pad(np.asarray(r["input_ids"], dtype=np.int64),
                (0, width - len(r["input_ids"])), constant_values=tok.special_ids["pad"]) for r in rows]))
    labels = a["masked_labels"]
    real = labels != -100
    assert torch.equal(labels[real], original.gather(1, a["query_positions"][:, 1:])[real])
    assert a["query_positions"].shape[1] == 21  # max_predictions_per_seq + [CLS]
    specials = torch.tensor(sorted(set(tok.special_ids.values())))
    assert not torch.isin(labels[real], specials).any()
    # padding (buckets, multiples of 8) does not change the masks: they are drawn at the longest row's width
    padded = Collator(pad_id=tok.special_ids["pad"], has_nsp=True, dynamic=True, masking=spec,
                      max_predictions=20, fixed_width=True, pad_to_multiple_of=64)(rows, 7)
    assert padded["input_ids"].shape[1] == 64
    assert torch.equal(padded["query_positions"], a["query_positions"])
    assert torch.equal(padded["input_ids"][:, :width], a["input_ids"])


def test_to_model_batch_carries_every_tensor(masked_data):
    arrays = ShardedArrays(masked_data)
    collated = Collator(pad_id=0, has_nsp=True, dynamic=False)([arrays[i] for i in range(3)])
    batch = to_model_batch(collated, torch.device("cpu"))
    for name in ("input_ids", "token_type_ids", "attention_mask", "query_positions", "masked_labels", "masked_index",
                 "next_sentence_label"):
        assert torch.equal(getattr(batch, name), collated[name]), name
    assert to_model_batch(collated, torch.device("cpu"), fixed_width=True).masked_index is None
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
        assert torch.equal(x["query_positions"], y["query_positions"])  # the same masks at every evaluation
        assert torch.equal(x["input_ids"], z["input_ids"])


def test_held_out_masks_are_drawn_at_15_percent_whatever_the_training_rate(pairs_data):
    data = load_data(pairs_data)
    plan = EpochPlan(data.arrays, seed=0, batch_size=8, eval_fraction=0.2)
    indices = plan.held_out_indices(12)

    def batches(rate: float) -> list[dict]:
        spec = data.tokenizer.masking_spec(masked_lm_prob=rate, max_predictions_per_seq=60)
        collate = Collator(pad_id=data.special_ids["pad"], has_nsp=True, dynamic=True, masking=spec)
        return list(held_out_micro_batches(plan, collate, indices, 4))

    for a, b in zip(batches(0.4), batches(0.15)):  # a run training at 40% is evaluated on the 15% run's masks
        assert torch.equal(a["query_positions"], b["query_positions"]) and torch.equal(a["input_ids"], b["input_ids"])
    predictions = sum(int((b["masked_labels"] >= 0).sum()) for b in batches(0.4))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches(0.4))
    assert 0.08 < predictions / tokens < 0.16  # ~15% of the tokens ([CLS]/[SEP] are never selected)


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

