"""Pseudo-log-likelihood (PLL) of sentences under a masked LM, batched, and minimal-pair accuracy.

PLL (Salazar et al. 2020, "Masked Language Model Scoring"): mask each token of a sentence in turn ([CLS] and [SEP]
stay) and sum log p(token | the rest). Every masked copy of every sentence goes through one length-sorted stream of
batches, and only the one masked position of each copy is carried through the work that ends at it: the vocabulary
projection (for a small model, over all T positions it costs more than the encoder itself) and, in the last layer,
the query, attention output and feed-forward (keys and values still see every token). In the first layer the
query, key and value projections of the positions a copy leaves unmasked are its sentence's, computed once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch

VARIANTS = ("original", "word_l2r")

# One masked copy: (sentence index, the position scored, the positions replaced by the mask token).
MaskedCopy = tuple[int, int, tuple[int, ...]]

Item = TypeVar("Item")


def masking_plan(
    scored: Sequence[bool], word_ids: Sequence[int | None] | None = None, variant: str = "original"
) -> list[tuple[int, tuple[int, ...]]]:
    """For each scored position t of one sentence: (t, the positions masked in its copy).

    original (Salazar et al. 2020): t alone. word_l2r (Kauf & Ivanova 2023, "A Better Way to Do Masked Language
    Model Scoring"): t and the later pieces of t's word, so that "##vl ##aki" cannot give "sou" away and a
    multi-piece word is not scored as nearly certain; word_ids (one per position, None for special tokens) say
    which word each piece belongs to.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown PLL variant {variant!r}; expected one of {VARIANTS}")
    positions = [t for t, s in enumerate(scored) if s]
    if variant == "original":
        return [(t, (t,)) for t in positions]
    if word_ids is None or len(word_ids) != len(scored):
        raise ValueError("the word_l2r variant needs one word id per position")
    plan = []
    for t in positions:
        word = word_ids[t]
        later = tuple(u for u in positions if u > t and word is not None and word_ids[u] == word)
        plan.append((t, (t, *later)))
    return plan


def _copy_stream(
    sentences: Sequence[Sequence[int]], plans: Sequence[Sequence[tuple[int, tuple[int, ...]]]]
) -> Iterator[MaskedCopy]:
    # Shortest sentences first: neighbouring copies have similar lengths, so a batch carries little padding.
    for i in sorted(range(len(sentences)), key=lambda k: len(sentences[k])):
        for position, masked in plans[i]:
            yield i, position, masked


def batched(stream: Iterable[Item], batch_size: int) -> Iterator[list[Item]]:
    """Consecutive lists of batch_size items (the last may be shorter); itertools.batched needs Python 3.12."""
    batch: list[Item] = []
    for item in stream:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def masked_hidden(
    bert: Any,
    sentence_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    copy_of: torch.Tensor,
    mask_rows: torch.Tensor,
    mask_cols: torch.Tensor,
    mask_id: int,
    position: torch.Tensor,
) -> torch.Tensor:
    """The last hidden state of a BertModel at one position of each masked copy: (B, H).

    sentence_ids, attention_mask: (U, T), the batch's distinct sentences, right-padded. Copy b is sentence
    copy_of[b] with the ids at (mask_rows, mask_cols) replaced by mask_id, read at position[b]. The result equals
    bert(copies).last_hidden_state[arange(B), position], computed with two shortcuts:
    - first layer: the query, key and value of a position that no copy masks are its sentence's, projected once
      per sentence rather than once per copy (attention and all after it differ per copy: every position sees the
      masked ones);
    - last layer: query, attention output, feed-forward and LayerNorms only at `position` (keys and values still
      cover every token); the other T − 1 rows of its output would be thrown away.
    """
    b = copy_of.shape[0]
    input_ids = sentence_ids[copy_of]  # (B, T)
    input_ids[mask_rows, mask_cols] = mask_id
    copy_mask = attention_mask[copy_of]  # (B, T)
    config = bert.config
    if config.is_decoder or config.add_cross_attention or config.chunk_size_feed_forward:
        # Layers that differ from BERT's encoder layer: run the model as it is.
        hidden = bert(input_ids=input_ids, attention_mask=copy_mask).last_hidden_state  # (B, T, H)
        return hidden[torch.arange(b, device=hidden.device), position]
    from transformers.masking_utils import create_bidirectional_mask

    hidden = bert.embeddings(input_ids=input_ids)  # (B, T, H); token types all 0: one segment
    key_mask = copy_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = attend
    layers = bert.encoder.layer
    if len(layers) > 1:
        sentence_hidden = bert.embeddings(input_ids=sentence_ids)  # (U, T, H)
        hidden = _first_layer_shared(layers[0], sentence_hidden, hidden, copy_of, mask_rows, mask_cols, key_mask)
        mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=copy_mask)
        for layer in layers[1:-1]:
            hidden = layer(hidden, mask)
    return _last_layer_at(layers[-1], hidden, position, key_mask)


def _split_heads(x: torch.Tensor, sa: Any) -> torch.Tensor:
    """(N, T, H) → (N, heads, T, head_size)."""
    return x.view(x.shape[0], x.shape[1], sa.num_attention_heads, sa.attention_head_size).transpose(1, 2)


def _first_layer_shared(
    layer: Any,
    sentence_hidden: torch.Tensor,
    hidden: torch.Tensor,
    copy_of: torch.Tensor,
    mask_rows: torch.Tensor,
    mask_cols: torch.Tensor,
    key_mask: torch.Tensor,
) -> torch.Tensor:
    """A BertLayer on the copies (B, T, H) whose q/k/v projections come from their sentences (U, T, H), but for
    the masked rows, projected per copy."""
    sa = layer.attention.self
    masked_in = hidden[mask_rows, mask_cols]  # (M, H)
    qkv = []
    for projection in (sa.query, sa.key, sa.value):
        x = projection(sentence_hidden)[copy_of]  # (B, T, H)
        x[mask_rows, mask_cols] = projection(masked_in)
        qkv.append(_split_heads(x, sa))  # (B, h, T, d)
    context = torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=key_mask, scale=sa.scaling)
    context = context.transpose(1, 2).reshape(hidden.shape)  # (B, T, H)
    attn_out = layer.attention.output(context, hidden)  # (B, T, H)
    return layer.output(layer.intermediate(attn_out), attn_out)


def _last_layer_at(layer: Any, hidden: torch.Tensor, position: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """A BertLayer's output at one position per row: (B, T, H) → (B, H)."""
    sa = layer.attention.self
    q_in = hidden[torch.arange(hidden.shape[0], device=hidden.device), position][:, None, :]  # (B, 1, H)
    q = _split_heads(sa.query(q_in), sa)  # (B, h, 1, d)
    k = _split_heads(sa.key(hidden), sa)  # (B, h, T, d)
    v = _split_heads(sa.value(hidden), sa)  # (B, h, T, d)
    context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=sa.scaling)
    context = context.transpose(1, 2).reshape(q_in.shape)  # (B, 1, H)
    attn_out = layer.attention.output(context, q_in)  # (B, 1, H)
    return layer.output(layer.intermediate(attn_out), attn_out)[:, 0]  # (B, H)


def pseudo_log_likelihoods(
    encoder: Any,
    head: Any,
    sentences: Sequence[Sequence[int]],
    plans: Sequence[Sequence[tuple[int, tuple[int, ...]]]],
    mask_id: int,
    pad_id: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """The PLL (natural log) of each sentence: sum over its plan of log p(token at t | copy with `masked` masked).

    encoder: a BertModel (`model.bert` of BertForMaskedLM or BertForPreTraining); head: its MLM prediction head
    (`model.cls.predictions`: transform + decoder). sentences: token ids with [CLS]/[SEP]; plans: from
    masking_plan. batch_size counts masked copies. on_batch(copies) is called after each batch (progress bars).
    """
    totals = torch.zeros(len(sentences), dtype=torch.float64)
    with torch.inference_mode():
        for batch in batched(_copy_stream(sentences, plans), batch_size):
            distinct = list(dict.fromkeys(i for i, _, _ in batch))  # the batch's sentences, in order
            slot = {i: u for u, i in enumerate(distinct)}
            width = max(len(sentences[i]) for i in distinct)
            sentence_ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)  # (U, T)
            attention_mask = torch.zeros((len(distinct), width), dtype=torch.long)  # (U, T)
            for u, i in enumerate(distinct):
                sentence_ids[u, : len(sentences[i])] = torch.as_tensor(sentences[i], dtype=torch.long)
                attention_mask[u, : len(sentences[i])] = 1
            mask_rows = [b for b, (_, _, masked) in enumerate(batch) for _ in masked]
            mask_cols = [c for _, _, masked in batch for c in masked]
            which = torch.tensor([i for i, _, _ in batch])  # (B,) sentence of each copy
            hidden = masked_hidden(
                encoder,
                sentence_ids.to(device),
                attention_mask.to(device),
                copy_of=torch.tensor([slot[i] for i, _, _ in batch], device=device),
                mask_rows=torch.tensor(mask_rows, device=device),
                mask_cols=torch.tensor(mask_cols, device=device),
                mask_id=mask_id,
                position=torch.tensor([t for _, t, _ in batch], device=device),
            )  # (B, H)
            log_probs = torch.log_softmax(head(hidden).float(), dim=-1)  # (B, V)
            target = torch.tensor([sentences[i][t] for i, t, _ in batch], device=device)  # (B,)
            picked = log_probs.gather(1, target[:, None]).squeeze(1)  # (B,)
            totals.index_add_(0, which, picked.double().cpu())
            if on_batch is not None:
                on_batch(len(batch))
    return totals.tolist()


def pseudo_perplexity(pll: float, tokens: int) -> float:
    """exp(−PLL / tokens): the per-token pseudo-perplexity of a sentence (Salazar et al. 2020)."""
    return math.exp(-pll / tokens) if tokens else float("nan")


def minimal_pair_accuracy(good: Sequence[float], bad: Sequence[float], groups: Sequence[str]) -> dict[str, Any]:
    """Share of pairs whose good sentence scores higher (a tie counts one half), per group and overall.

    The overall accuracy is the mean over groups, BLiMP's convention: every paradigm weighs the same whatever its
    number of pairs. Returns {"accuracy", "pairs", "groups", "per_group": {group: {"accuracy", "pairs"}}}.
    """
    if not len(good) == len(bad) == len(groups):
        raise ValueError(f"{len(good)} good, {len(bad)} bad scores, {len(groups)} groups: expected one each per pair")
    wins: dict[str, float] = {}
    counts: dict[str, int] = {}
    for g, b, group in zip(good, bad, groups):
        wins[group] = wins.get(group, 0.0) + (1.0 if g > b else 0.5 if g == b else 0.0)
        counts[group] = counts.get(group, 0) + 1
    per_group = {group: {"accuracy": wins[group] / counts[group], "pairs": counts[group]} for group in counts}
    mean = sum(v["accuracy"] for v in per_group.values()) / len(per_group) if per_group else float("nan")
    return {"accuracy": mean, "pairs": len(good), "groups": len(per_group), "per_group": per_group}
