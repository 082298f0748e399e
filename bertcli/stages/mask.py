"""`bert mask`: pairs artifact → statically masked artifact (the same masking code pretrain uses dynamically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bertcli import masking
from bertcli.artifacts import TOKENIZER_DIR, atomic_output_dir, check_output, load_data, write_manifest
from bertcli.errors import InputError
from bertcli.executors import open_executor
from bertcli.schemas import MaskConfig
from bertcli.shards import ShardedArrays, ShardWriter
from bertcli.vocab import copy_tokenizer_files

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


@dataclass(frozen=True)
class MaskContext:
    """What every masking worker is given."""

    input: str  # the pairs artifact
    seed: int
    probs: dict[str, Any]  # LoadedTokenizer.masking_spec's keyword arguments
    position_dtype: np.dtype


@dataclass
class _MaskerState:
    context: MaskContext
    arrays: ShardedArrays
    spec: masking.MaskingSpec
    pad_id: int
    never_target: np.ndarray  # (vocab_size,) bool: special or non-candidate ids, for the stats


_masker: _MaskerState | None = None


def _init_masker(context: MaskContext) -> None:
    global _masker
    data = load_data(context.input, ("pairs",))
    spec = data.tokenizer.masking_spec(**context.probs)
    never_target = np.zeros(data.vocab_size, bool)
    never_target[data.tokenizer.all_special_ids] = True
    never_target |= ~spec.is_candidate
    _masker = _MaskerState(context, data.arrays, spec, data.special_ids["pad"], never_target)


def _mask_block(task: tuple[int, int]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    block, copy = task
    state = _masker
    arrays, spec = state.arrays, state.spec
    start = block * BLOCK_SEQUENCES
    data = arrays.read_range(start, min(start + BLOCK_SEQUENCES, arrays.num_sequences))
    padded, lengths = masking.pad_ragged(data["input_ids"], data["offsets"], state.pad_id)  # (B, L)
    rng = np.random.default_rng([state.context.seed, copy, block])
    result = masking.mask_batch(padded, lengths, rng, spec)
    valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    counts, cols = result.positions()
    rows = np.repeat(np.arange(len(lengths)), counts)
    labels = padded[rows, cols]
    special = state.never_target
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
        "masked_positions": cols.astype(state.context.position_dtype),
        "masked_counts": counts,
        "masked_labels": labels,
        "type_boundary": data["type_boundary"],
        "next_sentence_label": nsl,
    }
    return out, stats


def _write(writer: ShardWriter, out: dict[str, np.ndarray]) -> None:
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
    pairs = load_data(cfg.input, ("pairs",))
    pairs_manifest, arrays = pairs.manifest, pairs.arrays
    check_output(cfg.output, overwrite, (cfg.input,), stage="masked")
    dtype = np.dtype(pairs.token_dtype)
    max_len = pairs.max_seq_length
    position_dtype = np.dtype(np.int16 if max_len <= np.iinfo(np.int16).max else np.int32)
    probs = {
        "masked_lm_prob": cfg.masked_lm_prob,
        "max_predictions_per_seq": cfg.max_predictions_per_seq,
        "mask_token_prob": cfg.mask_token_prob,
        "random_token_prob": cfg.random_token_prob,
        "whole_word_mask": cfg.whole_word_mask,
    }
    # Absolute: a Ray worker (executor ray) may run in another directory, on another node of a shared filesystem.
    context = MaskContext(input=str(Path(cfg.input).absolute()), seed=cfg.seed, probs=probs,
                          position_dtype=position_dtype)
    num_blocks = -(-arrays.num_sequences // BLOCK_SEQUENCES)
    tasks = [(b, c) for b in range(num_blocks) for c in range(cfg.dupe_factor)]  # block-major, as pairs
    totals = dict.fromkeys(MASK_STAT_KEYS, 0)
    with (
        atomic_output_dir(cfg.output, overwrite, (cfg.input,), stage="masked") as tmp,
        open_executor(cfg, threads=True) as executor,
    ):
        writer = ShardWriter(
            tmp,
            ragged={"input_ids": dtype, "masked_positions": position_dtype, "masked_labels": dtype},
            scalar={"type_boundary": np.int32, "next_sentence_label": np.int8},
            sequences_per_shard=pairs.sequences_per_shard,  # the pairs' shard size, recorded in their manifest
        )
        bar = tqdm(desc="masking", unit="tok", unit_scale=True, dynamic_ncols=True)
        for out, stats in executor.map(_mask_block, tasks, _init_masker, (context,)):
            _write(writer, out)
            for key, value in stats.items():
                totals[key] += value
            bar.update(stats["tokens"])
        bar.close()
        if totals["candidates"] == 0:
            raise InputError(
                f"pairs artifact '{cfg.input}': no token can be a prediction target (all {totals['tokens']:,} tokens "
                "are special tokens, [UNK] among them)",
                hint="the tokenizer does not cover this corpus: train the vocabulary on it (bert train-vocab)",
            )
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
        carried = ("special_token_ids", "vocab_size", "max_seq_length", "token_dtype", "nsp")
        extra = {k: pairs_manifest[k] for k in carried}
        extra.update(
            sequences_per_shard=pairs.sequences_per_shard,
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

