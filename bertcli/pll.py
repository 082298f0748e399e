"""Pseudo-log-likelihood (PLL) of sentences under a masked LM, batched, and minimal-pair accuracy.

PLL (Salazar et al. 2020, "Masked Language Model Scoring"): mask each token of a sentence in turn ([CLS] and [SEP]
stay) and sum log p(token | the rest). Every masked copy of every sentence goes through one length-sorted stream of
batches, and only the one masked position of each copy is carried through the work that ends at it: the vocabulary
projection (for a small model, over all T positions it costs more than the encoder itself) and, in the last layer,
the query, attention output and feed-forward (keys and values still see every token).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import torch

VARIANTS = ("original", "word_l2r")

# One masked copy: (sentence index, the position scored, the positions replaced by the mask token).
MaskedCopy = tuple[int, int, tuple[int, ...]]


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


def _batches(stream: Iterator[MaskedCopy], batch_size: int) -> Iterator[list[MaskedCopy]]:
    batch: list[MaskedCopy] = []
    for item in stream:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def masked_hidden(
    bert: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """The last hidden state of a BertModel at one position per row: (B, T) ids → (B, H).

    Equal to bert(...).last_hidden_state[arange(B), position], but the last layer runs its query, attention output,
    feed-forward and LayerNorms on that one row only: the other T − 1 rows of its output would be thrown away.
    """
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    config = bert.config
    if config.is_decoder or config.add_cross_attention or config.chunk_size_feed_forward:
        # Layers that differ from BERT's encoder layer: run the model as it is.
        return bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[rows, position]
    from transformers.masking_utils import create_bidirectional_mask

    b, t = input_ids.shape
    hidden = bert.embeddings(input_ids=input_ids)  # (B, T, H); token types all 0: one segment
    mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
    layers = bert.encoder.layer
    for layer in layers[:-1]:
        hidden = layer(hidden, mask)
    last = layers[-1]
    sa = last.attention.self
    heads, head_size = sa.num_attention_heads, sa.attention_head_size
    h = hidden.shape[-1]
    q_in = hidden[rows, position][:, None, :]  # (B, 1, H)
    q = sa.query(q_in).view(b, 1, heads, head_size).transpose(1, 2)  # (B, h, 1, d)
    k = sa.key(hidden).view(b, t, heads, head_size).transpose(1, 2)  # (B, h, T, d)
    v = sa.value(hidden).view(b, t, heads, head_size).transpose(1, 2)  # (B, h, T, d)
    key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = attend
    context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=sa.scaling)
    context = context.transpose(1, 2).reshape(b, 1, h)  # (B, 1, H)
    attn_out = last.attention.output(context, q_in)  # (B, 1, H)
    return last.output(last.intermediate(attn_out), attn_out)[:, 0]  # (B, H)


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
        for batch in _batches(_copy_stream(sentences, plans), batch_size):
            width = max(len(sentences[i]) for i, _, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
            mask_rows: list[int] = []
            mask_cols: list[int] = []
            for b, (i, _, masked) in enumerate(batch):
                row = sentences[i]
                input_ids[b, : len(row)] = torch.as_tensor(row, dtype=torch.long)
                attention_mask[b, : len(row)] = 1
                mask_rows.extend([b] * len(masked))
                mask_cols.extend(masked)
            input_ids[mask_rows, mask_cols] = mask_id
            which = torch.tensor([i for i, _, _ in batch])  # (B,) sentence of each copy
            position = torch.tensor([t for _, t, _ in batch], device=device)  # (B,)
            target = torch.tensor([sentences[i][t] for i, t, _ in batch], device=device)  # (B,)
            rows = masked_hidden(encoder, input_ids.to(device), attention_mask.to(device), position)  # (B, H)
            log_probs = torch.log_softmax(head(rows).float(), dim=-1)  # (B, V)
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
