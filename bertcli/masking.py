"""MLM masking (BERT's 80/10/10 with an exact selection count), shared by static `bert mask` and dynamic masking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

IGNORE_INDEX = -100
"""Label of positions that are not predicted (what torch's cross-entropy ignores)."""

# Action codes per position (MaskedBatch.action).
NOT_SELECTED, TO_MASK, TO_RANDOM, KEPT = 0, 1, 2, 3


@dataclass(frozen=True)
class MaskingSpec:
    """Everything masking needs to know about the vocabulary and the probabilities; build it once per run."""

    mask_id: int
    """Id of [MASK]."""
    is_candidate: np.ndarray
    """(vocab_size,) bool: ids that may be selected: every id but the special tokens."""
    replacement_ids: np.ndarray
    """(R,) int64: ids a random replacement is drawn from (non-special ids only)."""
    is_continuation: np.ndarray | None = None
    """(vocab_size,) bool: pieces that continue a word (start with the tokenizer's `##` prefix); whole-word masking."""
    masked_lm_prob: float = 0.15
    """Share of candidate tokens selected: exactly min(max_predictions_per_seq, max(1, round(n · p)))."""
    max_predictions_per_seq: int = 20
    """Cap on the selected tokens per sequence."""
    mask_token_prob: float = 0.8
    """Share of selected tokens replaced by [MASK]."""
    random_token_prob: float = 0.1
    """Share of selected tokens replaced by a random non-special token (the rest keep their id)."""
    whole_word_mask: bool = False
    """Select whole words (a piece and its following continuation pieces), 80/10/10 still per piece."""


def build_masking_spec(
    vocab_size: int,
    special_ids: Iterable[int],
    mask_id: int,
    continuation_ids: Iterable[int] | None = None,
    *,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    whole_word_mask: bool = False,
) -> MaskingSpec:
    """A MaskingSpec from ids: every special id ([PAD], [UNK], [CLS], [SEP], [MASK], …) is neither selected nor drawn.

    [UNK] is left out too: predicting it teaches nothing, and replacing a word by it would be a second [MASK].
    """
    special = np.zeros(vocab_size, dtype=bool)
    special[np.fromiter(special_ids, dtype=np.int64)] = True
    if not special[mask_id]:
        special[mask_id] = True
    is_continuation = None
    if continuation_ids is not None:
        is_continuation = np.zeros(vocab_size, dtype=bool)
        is_continuation[np.fromiter(continuation_ids, dtype=np.int64)] = True
        is_continuation &= ~special
    elif whole_word_mask:
        raise ValueError("whole_word_mask needs continuation_ids (the ids of the ## pieces)")
    return MaskingSpec(
        mask_id=int(mask_id),
        is_candidate=~special,
        replacement_ids=np.flatnonzero(~special).astype(np.int64),
        is_continuation=is_continuation,
        masked_lm_prob=masked_lm_prob,
        max_predictions_per_seq=max_predictions_per_seq,
        mask_token_prob=mask_token_prob,
        random_token_prob=random_token_prob,
        whole_word_mask=whole_word_mask,
    )


def continuation_ids(vocab: dict[str, int], prefix: str) -> list[int]:
    """Ids of the pieces that continue a word: tokens starting with `prefix` (and longer than it)."""
    return [i for token, i in vocab.items() if token.startswith(prefix) and len(token) > len(prefix)]


def spec_from_tokenizer(
    tokenizer, special_ids: Iterable[int], mask_id: int, prefix: str | None = None, **probs
) -> MaskingSpec:
    """A MaskingSpec from an in-memory `tokenizers.Tokenizer`; the ## prefix is read from its model or decoder."""
    if prefix is None:
        prefix = getattr(tokenizer.model, "continuing_subword_prefix", None) or getattr(
            tokenizer.decoder, "prefix", None
        ) or "##"
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    added_special = [i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special]
    return build_masking_spec(
        tokenizer.get_vocab_size(with_added_tokens=True),
        [*special_ids, *added_special],
        mask_id,
        continuation_ids(vocab, prefix),
        **probs,
    )


def num_to_select(num_candidates: np.ndarray, spec: MaskingSpec) -> np.ndarray:
    """min(max_predictions_per_seq, max(1, round(n · masked_lm_prob))), and never more than n (0 when n is 0)."""
    n = np.asarray(num_candidates, dtype=np.int64)
    k = np.maximum(1, np.rint(n * spec.masked_lm_prob).astype(np.int64))  # rint: half to even, as Python's round
    return np.minimum(np.minimum(k, spec.max_predictions_per_seq), n)


@dataclass
class MaskedBatch:
    """The result of masking a (B, L) batch."""

    input_ids: np.ndarray
    """(B, L) the ids after masking (same dtype as the input)."""
    original: np.ndarray
    """(B, L) the ids before masking."""
    selected: np.ndarray
    """(B, L) bool: positions chosen for prediction."""
    action: np.ndarray
    """(B, L) int8: NOT_SELECTED, TO_MASK, TO_RANDOM or KEPT."""

    @property
    def labels(self) -> np.ndarray:
        """(B, L) int64: the original id at selected positions, IGNORE_INDEX (-100) elsewhere."""
        return np.where(self.selected, self.original, IGNORE_INDEX).astype(np.int64)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts (B,), columns (S,)): selected positions row by row, sorted, as ragged arrays."""
        rows, cols = np.nonzero(self.selected)
        return np.bincount(rows, minlength=self.selected.shape[0]), cols


def mask_batch(
    input_ids: np.ndarray,
    lengths: np.ndarray | None,
    rng: np.random.Generator,
    spec: MaskingSpec,
) -> MaskedBatch:
    """Mask a right-padded batch; positions at or beyond a row's length are never touched.

    input_ids: (B, L) integer ids; lengths: (B,) valid lengths (None: all L). The draws made from `rng` depend on
    (B, L) only, not on the ids, so a given generator state always gives the same masks for the same shapes.
    """
    ids = np.asarray(input_ids)
    batch, width = ids.shape
    valid = np.ones((batch, width), dtype=bool)
    if lengths is not None:
        valid = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    candidate = spec.is_candidate[ids] & valid  # (B, L)
    keys = rng.random((batch, width), dtype=np.float32)  # selection order
    coin = rng.random((batch, width), dtype=np.float32)  # 80/10/10
    random_pick = rng.integers(0, len(spec.replacement_ids), size=(batch, width), dtype=np.int32)
    k = num_to_select(candidate.sum(axis=1), spec)  # (B,)
    if spec.whole_word_mask:
        selected = _select_whole_words(ids, candidate, keys, k, spec)
    else:
        # A uniform k-subset of the candidates: the k candidates with the smallest keys. Only the smallest
        # k_max per row matter, so partition (linear) and sort just those; ties fall to the lower position.
        keys[~candidate] = 2.0
        k_max = int(k.max()) if batch else 0
        selected = np.zeros((batch, width), dtype=bool)
        if k_max:
            if k_max < width:
                smallest = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max]  # (B, k_max), unordered
            else:
                smallest = np.broadcast_to(np.arange(width), (batch, width))
            order = np.take_along_axis(smallest, np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1,
                                                            kind="stable"), axis=1)  # (B, k_max) by key
            take = np.arange(order.shape[1])[None, :] < k[:, None]
            rows = np.broadcast_to(np.arange(batch)[:, None], order.shape)
            selected[rows[take], order[take]] = True
    to_mask = selected & (coin < spec.mask_token_prob)
    to_random = selected & ~to_mask & (coin < spec.mask_token_prob + spec.random_token_prob)
    out = ids.copy()
    out[to_mask] = spec.mask_id
    out[to_random] = spec.replacement_ids[random_pick[to_random]].astype(ids.dtype, copy=False)
    action = selected.astype(np.int8) * KEPT
    action[to_mask] = TO_MASK
    action[to_random] = TO_RANDOM
    return MaskedBatch(input_ids=out, original=ids, selected=selected, action=action)


def _select_whole_words(
    ids: np.ndarray, candidate: np.ndarray, keys: np.ndarray, k: np.ndarray, spec: MaskingSpec
) -> np.ndarray:
    """Google's whole-word selection: words in random order, each taken whole if it still fits under k.

    A word is a candidate piece that is not a continuation piece (or follows a non-candidate), plus the
    continuation pieces after it. A word longer than what is left is skipped, so a row can end below k.
    """
    batch, width = ids.shape
    assert spec.is_continuation is not None
    cont = spec.is_continuation[ids] & candidate
    prev_candidate = np.zeros_like(candidate)
    prev_candidate[:, 1:] = candidate[:, :-1]
    starts = candidate & ~(cont & prev_candidate)  # (B, L) word starts
    selected = np.zeros((batch, width), dtype=bool)
    for row in range(batch):
        start_cols = np.flatnonzero(starts[row])
        if not len(start_cols) or not k[row]:
            continue
        # A word runs from its start to the next start or the next non-candidate, whichever comes first.
        cand_row = candidate[row]
        ends = np.empty_like(start_cols)
        ends[:-1] = start_cols[1:]
        ends[-1] = width
        non_cand = np.flatnonzero(~cand_row)
        nxt = np.searchsorted(non_cand, start_cols, side="right")
        stop_at = np.where(nxt < len(non_cand), non_cand[np.minimum(nxt, len(non_cand) - 1)], width)
        ends = np.minimum(ends, stop_at)
        word_len = ends - start_cols
        budget = int(k[row])
        taken = 0
        for w in np.argsort(keys[row, start_cols], kind="stable").tolist():
            wl = int(word_len[w])
            if taken + wl > budget:
                continue
            selected[row, start_cols[w] : ends[w]] = True
            taken += wl
            if taken == budget:
                break
    return selected


def mask_sequence(
    input_ids: np.ndarray, rng: np.random.Generator, spec: MaskingSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one sequence (L,): returns (masked ids (L,), selected positions (S,) sorted, their original ids (S,))."""
    ids = np.asarray(input_ids)
    result = mask_batch(ids[None, :], None, rng, spec)
    positions = np.flatnonzero(result.selected[0])
    return result.input_ids[0], positions, ids[positions]


def pad_ragged(flat: np.ndarray, offsets: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged sequences (flat ids + offsets (n+1,)) to a right-padded (n, max_len) matrix and lengths (n,)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), width), pad_id, dtype=flat.dtype)
    valid = np.arange(width)[None, :] < lengths[:, None]
    index = (offsets[:-1, None] - offsets[0] + np.arange(width)[None, :])[valid]
    out[valid] = np.asarray(flat[offsets[0] : offsets[-1]])[index]
    return out, lengths
