"""`bert mask`: pairs artifact → statically masked artifact (the same masking code pretrain uses dynamically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bertcli import masking
from bertcli.artifacts import atomic_output_dir, check_output, write_manifest
from bertcli.schemas import MaskConfig
from bertcli.shards import ShardedArrays
from bertcli.stages.pairs import TOKENIZER_DIR, BlockShardWriter, load_pairs, ordered_map
from bertcli.vocab import LoadedTokenizer, copy_tokenizer_files, load_tokenizer

BLOCK_SEQUENCES = 4096
"""Sequences per unit of work; the RNG is seeded per (seed, copy, block), so output never depends on workers."""

MASK_STAT_KEYS = (
    "sequences",
    "tokens",
    "candidates",
    "selected",
    "selected_special",
    "replaced_mask",
    "replaced_random",
    "random_special",
    "kept",
    "is_next",
    "is_random_next",
    "capped_sequences",
)


def build_spec(
    loaded: LoadedTokenizer,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    whole_word_mask: bool = False,
) -> masking.MaskingSpec:
    """The MaskingSpec for a loaded tokenizer: specials from the tokenizer, ## prefix from its model config.

    `bert pretrain` calls this (with its own probabilities) for dynamic masking, so both paths mask alike.
    """
    return masking.spec_from_tokenizer(
        loaded.tokenizer,
        loaded.all_special_ids,
        loaded.special_ids["mask"],
        prefix=loaded.continuing_subword_prefix,
        masked_lm_prob=masked_lm_prob,
        max_predictions_per_seq=max_predictions_per_seq,
        mask_token_prob=mask_token_prob,
        random_token_prob=random_token_prob,
        whole_word_mask=whole_word_mask,
    )


def read_range(arrays: ShardedArrays, start: int, stop: int, field: str = "input_ids") -> dict[str, np.ndarray]:
    """Sequences [start, stop) across shards: flat ragged field + offsets (n+1,), and the scalar fields."""
    flats, lengths, scalars = [], [], {}
    scalar_fields = [f for f in arrays.fields if f not in arrays.ragged_fields]
    parts: dict[str, list[np.ndarray]] = {f: [] for f in scalar_fields}
    for s, shard in enumerate(arrays.shards):
        lo, hi = int(arrays.starts[s]), int(arrays.starts[s + 1])
        a, b = max(start, lo) - lo, min(stop, hi) - lo
        if a >= b:
            continue
        off = np.asarray(shard[f"{field}.offsets"][a : b + 1])
        flats.append(np.asarray(shard[field][off[0] : off[-1]]))
        lengths.append(np.diff(off))
        for f in scalar_fields:
            parts[f].append(np.asarray(shard[f][a:b]))
    lengths_all = np.concatenate(lengths)
    offsets = np.zeros(len(lengths_all) + 1, np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    scalars = {f: np.concatenate(v) for f, v in parts.items()}
    return {field: np.concatenate(flats), "offsets": offsets, **scalars}


_WORKER: dict[str, Any] = {}


def _init_masker(context: dict) -> None:
    _WORKER.clear()
    _WORKER.update(context)
    _WORKER["arrays"] = ShardedArrays(context["input"])
    loaded = load_tokenizer(Path(context["input"]) / TOKENIZER_DIR)
    _WORKER["spec"] = build_spec(loaded, **context["probs"])
    _WORKER["pad_id"] = loaded.special_ids["pad"]
    special = np.zeros(loaded.vocab_size, bool)
    special[loaded.all_special_ids] = True
    special |= ~_WORKER["spec"].is_candidate
    _WORKER["special"] = special


def _mask_block(task: tuple[int, int]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    block, copy = task
    ctx = _WORKER
    arrays: ShardedArrays = ctx["arrays"]
    spec: masking.MaskingSpec = ctx["spec"]
    start = block * BLOCK_SEQUENCES
    data = read_range(arrays, start, min(start + BLOCK_SEQUENCES, arrays.num_sequences))
    padded, lengths = masking.pad_ragged(data["input_ids"], data["offsets"], ctx["pad_id"])  # (B, L)
    rng = np.random.default_rng([ctx["seed"], copy, block])
    result = masking.mask_batch(padded, lengths, rng, spec)
    valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    counts, cols = result.positions()
    rows = np.repeat(np.arange(len(lengths)), counts)
    labels = padded[rows, cols]
    special = ctx["special"]
    action = result.action
    candidates = (spec.is_candidate[padded] & valid).sum(axis=1)
    nsl = data["next_sentence_label"]
    stats = {
        "sequences": len(lengths),
        "tokens": int(lengths.sum()),
        "candidates": int(candidates.sum()),
        "selected": int(counts.sum()),
        "selected_special": int(special[labels].sum()),
        "replaced_mask": int((action == masking.TO_MASK).sum()),
        "replaced_random": int((action == masking.TO_RANDOM).sum()),
        "random_special": int(special[result.input_ids[action == masking.TO_RANDOM]].sum()),
        "kept": int((action == masking.KEPT).sum()),
        "is_next": int((nsl == 0).sum()),
        "is_random_next": int((nsl == 1).sum()),
        "capped_sequences": int((counts >= spec.max_predictions_per_seq).sum()),
    }
    out = {
        "input_ids": result.input_ids[valid],
        "lengths": lengths,
        "masked_positions": cols.astype(ctx["position_dtype"]),
        "masked_counts": counts,
        "masked_labels": labels,
        "type_boundary": data["type_boundary"],
        "next_sentence_label": nsl,
    }
    return out, stats


def _write(writer: BlockShardWriter, out: dict[str, np.ndarray]) -> None:
    writer.add_block(
        {
            "input_ids": (out["input_ids"], out["lengths"]),
            "masked_positions": (out["masked_positions"], out["masked_counts"]),
            "masked_labels": (out["masked_labels"], out["masked_counts"]),
        },
        {"type_boundary": out["type_boundary"], "next_sentence_label": out["next_sentence_label"]},
    )


def run(cfg: MaskConfig, overwrite: bool = False) -> dict:
    """Mask every sequence of the pairs artifact dupe_factor times; returns the manifest."""
    pairs_manifest, arrays, loaded = load_pairs(cfg.input)
    check_output(cfg.output, overwrite)
    dtype = np.dtype(pairs_manifest["token_dtype"])
    max_len = int(pairs_manifest["max_seq_length"])
    position_dtype = np.dtype(np.int16 if max_len <= np.iinfo(np.int16).max else np.int32)
    probs = {
        "masked_lm_prob": cfg.masked_lm_prob,
        "max_predictions_per_seq": cfg.max_predictions_per_seq,
        "mask_token_prob": cfg.mask_token_prob,
        "random_token_prob": cfg.random_token_prob,
        "whole_word_mask": cfg.whole_word_mask,
    }
    context = {"input": str(Path(cfg.input)), "seed": cfg.seed, "probs": probs, "position_dtype": position_dtype}
    num_blocks = -(-arrays.num_sequences // BLOCK_SEQUENCES)
    tasks = [(b, c) for b in range(num_blocks) for c in range(cfg.dupe_factor)]  # block-major, as pairs
    totals = dict.fromkeys(MASK_STAT_KEYS, 0)
    with atomic_output_dir(cfg.output, overwrite) as tmp:
        writer = BlockShardWriter(
            tmp,
            ragged={"input_ids": dtype, "masked_positions": position_dtype, "masked_labels": dtype},
            scalar={"type_boundary": np.int32, "next_sentence_label": np.int8},
            sequences_per_shard=int(pairs_manifest.get("sequences_per_shard", 65536)),
        )
        bar = tqdm(desc="masking", unit="tok", unit_scale=True, dynamic_ncols=True)
        for out, stats in ordered_map(_mask_block, tasks, cfg.num_workers, _init_masker, (context,), threads=True):
            _write(writer, out)
            for key, value in stats.items():
                totals[key] += value
            bar.update(stats["tokens"])
        bar.close()
        writer.close()
        copy_tokenizer_files(Path(cfg.input) / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
        selected = totals["selected"]
        stats_out: dict[str, Any] = dict(totals)
        stats_out.update(
            selection_rate=round(selected / totals["candidates"], 6) if totals["candidates"] else 0.0,
            mask_share=round(totals["replaced_mask"] / selected, 6) if selected else 0.0,
            random_share=round(totals["replaced_random"] / selected, 6) if selected else 0.0,
            kept_share=round(totals["kept"] / selected, 6) if selected else 0.0,
            mean_selected_per_sequence=round(selected / totals["sequences"], 3) if totals["sequences"] else 0.0,
        )
        extra = {k: pairs_manifest[k] for k in ("special_token_ids", "vocab_size", "max_seq_length", "token_dtype", "nsp")}
        extra.update(
            dupe_factor=cfg.dupe_factor,
            masking=probs,
            fields={
                "input_ids": "ragged, the sequence after masking",
                "masked_positions": f"ragged {position_dtype.name}, selected positions, ascending",
                "masked_labels": "ragged, the original id at each selected position (labels are -100 elsewhere)",
                "type_boundary": "int32, index of B's first token; token_type_ids = 0 before it, 1 from it",
                "next_sentence_label": "int8, 0 = IsNext, 1 = random next, -1 = no pair (nsp: false)",
            },
            reproducible=True,
        )
        manifest = write_manifest(
            tmp,
            "masked",
            cfg,
            stats=stats_out,
            inputs={
                "pairs": {"path": str(cfg.input), "content_hash": pairs_manifest["content_hash"]},
                "tokenizer": pairs_manifest["inputs"]["tokenizer"],
            },
            extra=extra,
        )
    return manifest


def load_masked(directory: str | Path) -> tuple[dict, ShardedArrays, LoadedTokenizer]:
    """A finished masked artifact: manifest, arrays and its tokenizer (checked against the manifest)."""
    from bertcli.artifacts import load_manifest
    from bertcli.stages.pairs import check_tokenizer_matches

    directory = Path(directory)
    manifest = load_manifest(directory, ("masked",))
    loaded = load_tokenizer(directory / TOKENIZER_DIR)
    check_tokenizer_matches(manifest, loaded, f"masked artifact '{directory}'")
    return manifest, ShardedArrays(directory), loaded

