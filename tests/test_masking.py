"""Pure masking logic, seeded statistics over ≥ 100k tokens: exact counts, 80/10/10, specials, whole words."""

from __future__ import annotations

import numpy as np
import pytest

from bertcli import masking

VOCAB = 3000
# Deliberately not bert-base-uncased's 0/100/101/102/103: specials scattered through the vocabulary.
PAD, UNK, CLS, SEP, MASK = 7, 1500, 42, 2999, 600
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
CONTINUATION = np.arange(2000, 2900)  # the "##" pieces


def _spec(**kw) -> masking.MaskingSpec:
    return masking.build_masking_spec(VOCAB, SPECIALS, MASK, CONTINUATION, **kw)


def _batch(rng: np.random.Generator, rows: int = 2500, width: int = 128):
    """(rows, width) sequences [CLS] … [SEP] … [SEP] [PAD]…, with a sprinkle of [UNK] in the text."""
    lengths = rng.integers(40, width + 1, size=rows)
    ordinary = np.setdiff1d(np.arange(VOCAB), SPECIALS)
    ids = rng.choice(ordinary, size=(rows, width))
    ids[rng.random((rows, width)) < 0.01] = UNK
    ids[:, 0] = CLS
    ids[np.arange(rows), lengths - 1] = SEP
    ids[np.arange(rows), lengths // 2] = SEP
    ids[np.arange(width)[None, :] >= lengths[:, None]] = PAD
    return ids, lengths


@pytest.fixture(scope="module")
def masked():
    rng = np.random.default_rng(0)
    ids, lengths = _batch(rng)
    spec = _spec()
    return ids, lengths, spec, masking.mask_batch(ids, lengths, np.random.default_rng(1), spec)


def test_exact_count_and_selection_rate(masked):
    ids, lengths, spec, result = masked
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    n = (spec.is_candidate[ids] & valid).sum(axis=1)
    assert n.sum() >= 100_000
    expected = np.minimum(spec.max_predictions_per_seq, np.maximum(1, np.array([round(x * 0.15) for x in n])))
    assert np.array_equal(result.selected.sum(axis=1), expected)
    uncapped = expected < spec.max_predictions_per_seq
    rate = result.selected[uncapped].sum() / n[uncapped].sum()
    assert abs(rate - 0.15) <= 0.005, rate


def test_no_special_selected_or_drawn_and_padding_untouched(masked):
    ids, lengths, spec, result = masked
    assert not np.isin(ids[result.selected], SPECIALS).any()
    random_ids = result.input_ids[result.action == masking.TO_RANDOM]
    assert len(random_ids) > 1000 and not np.isin(random_ids, SPECIALS).any()
    unselected = ~result.selected
    assert np.array_equal(result.input_ids[unselected], ids[unselected])
    assert (result.labels[unselected] == masking.IGNORE_INDEX).all()
    assert np.array_equal(result.labels[result.selected], ids[result.selected])


def test_80_10_10(masked):
    _, _, _, result = masked
    sel = result.selected.sum()
    shares = [(result.action == a).sum() / sel for a in (masking.TO_MASK, masking.TO_RANDOM, masking.KEPT)]
    assert abs(shares[0] - 0.8) <= 0.01 and abs(shares[1] - 0.1) <= 0.01 and abs(shares[2] - 0.1) <= 0.01, shares
    assert (result.input_ids[result.action == masking.TO_MASK] == MASK).all()


def test_max_predictions_cap_and_tiny_rows():
    spec = _spec(max_predictions_per_seq=5)
    ids = np.full((3, 100), 50)
    ids[1, 1:] = PAD  # one candidate: max(1, round(0.15)) = 1
    ids[2, :] = PAD  # none: nothing selected
    result = masking.mask_batch(ids, None, np.random.default_rng(0), spec)
    assert result.selected.sum(axis=1).tolist() == [5, 1, 0]


def test_mask_sequence_agrees_with_mask_batch():
    rng = np.random.default_rng(4)
    ids, _ = _batch(rng, rows=1, width=96)
    spec = _spec()
    masked_ids, positions, labels = masking.mask_sequence(ids[0], np.random.default_rng(9), spec)
    batch = masking.mask_batch(ids, None, np.random.default_rng(9), spec)
    assert np.array_equal(masked_ids, batch.input_ids[0])
    assert np.array_equal(positions, np.flatnonzero(batch.selected[0])) and np.all(np.diff(positions) > 0)
    assert np.array_equal(labels, ids[0][positions])


def _words(row: np.ndarray, spec: masking.MaskingSpec) -> list[range]:
    words, start = [], None
    for i, t in enumerate(row.tolist()):
        cand = spec.is_candidate[t]
        cont = cand and spec.is_continuation[t] and start is not None
        if not cont:
            if start is not None:
                words.append(range(start, i))
            start = i if cand else None
    if start is not None:
        words.append(range(start, len(row)))
    return words


def test_whole_word_masking_never_splits_a_word_and_keeps_80_10_10():
    rng = np.random.default_rng(5)
    ids, lengths = _batch(rng)
    # Make a third of the pieces continuations, so words of 1-4 pieces are common.
    cont = rng.random(ids.shape) < 0.35
    ids = np.where(cont & np.isin(ids, SPECIALS, invert=True), rng.choice(CONTINUATION, size=ids.shape), ids)
    spec = _spec(whole_word_mask=True)
    result = masking.mask_batch(ids, lengths, np.random.default_rng(6), spec)
    multi = 0
    for r in range(ids.shape[0]):
        k = result.selected[r].sum()
        n = (spec.is_candidate[ids[r]] & (np.arange(ids.shape[1]) < lengths[r])).sum()
        assert k <= min(spec.max_predictions_per_seq, max(1, round(n * 0.15)))
        for word in _words(ids[r, : lengths[r]], spec):
            picked = result.selected[r, word.start : word.stop]
            assert picked.all() or not picked.any(), (r, word)
            multi += len(word) > 1 and picked.all()
    assert multi > 1000
    sel = result.selected.sum()
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    assert sel >= 25_000 and abs(sel / (spec.is_candidate[ids] & valid).sum() - 0.15) < 0.01
    mask_share = (result.action == masking.TO_MASK).sum() / sel
    random_share = (result.action == masking.TO_RANDOM).sum() / sel
    assert abs(mask_share - 0.8) <= 0.01 and abs(random_share - 0.1) <= 0.01


def test_spec_from_a_real_tokenizer_reads_specials_and_prefix(tiny_tokenizer):
    from bertcli.vocab import load_tokenizer

    loaded = load_tokenizer(tiny_tokenizer)
    spec = loaded.masking_spec(whole_word_mask=True)
    for token_id in loaded.special_ids.values():
        assert not spec.is_candidate[token_id] and token_id not in spec.replacement_ids
    vocab = loaded.tokenizer.get_vocab()
    cont = [i for t, i in vocab.items() if t.startswith(loaded.continuing_subword_prefix) and len(t) > 2]
    assert cont and spec.is_continuation[cont].all()
    assert spec.is_continuation.sum() == len(cont)
