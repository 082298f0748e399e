"""`bert inspect DIR`: an artifact's stats and a few decoded examples, segments and masks made visible; and
`bert tokenize`: a tokenizer's pieces for some text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.artifacts import load_manifest, verify_files
from bertcli.shards import ShardedArrays
from bertcli.textio import check_unicode
from bertcli.vocab import load_tokenizer, warn_if_mostly_unknown


def stats(directory: str | Path) -> dict:
    """The manifest's stats (any finished artifact)."""
    return load_manifest(directory).get("stats", {})


def _pieces(tokenizer, ids: np.ndarray) -> list[str]:
    return [tokenizer.id_to_token(int(i)) or f"<{int(i)}>" for i in ids]


def describe_example(row: dict[str, Any], tokenizer) -> list[str]:
    """Lines showing one sequence: segment A, segment B, the NSP label, and each [MASK] with its label."""
    ids = np.asarray(row["input_ids"])
    boundary = int(row.get("type_boundary", len(ids)))
    label = int(row.get("next_sentence_label", -1))
    positions = np.asarray(row.get("masked_positions", np.zeros(0, np.int64)), dtype=np.int64)
    labels = np.asarray(row.get("masked_labels", np.zeros(0, np.int64)))
    pieces = _pieces(tokenizer, ids)
    originals = dict(zip(positions.tolist(), _pieces(tokenizer, labels)))
    shown = []
    for i, piece in enumerate(pieces):
        if i in originals:
            shown.append(f"{piece}→{originals[i]}" if piece != originals[i] else f"{piece}(kept)")
        else:
            shown.append(piece)
    lines = [f"  segment A (type 0): {' '.join(shown[:boundary])}"]
    if boundary < len(ids):
        lines.append(f"  segment B (type 1): {' '.join(shown[boundary:])}")
    names = {0: "IsNext", 1: "random next (NotNext)", -1: "none (single segment)"}
    lines.append(f"  next_sentence_label: {label} = {names.get(label, '?')}; length {len(ids)}")
    if len(positions):
        lines.append(
            "  masked: " + ", ".join(f"{p}:{pieces[p]}→{originals[p]}" for p in positions.tolist())
        )
    return lines


def render(directory: str | Path, examples: int = 3) -> str:
    """Human-readable report: stage, key facts, stats, and `examples` decoded sequences."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    out = [f"{directory}: {manifest.get('stage')} artifact (bertcli {manifest.get('bertcli_version')})"]
    for key in ("vocab_size", "max_seq_length", "token_dtype", "nsp", "dupe_factor", "special_token_ids"):
        if key in manifest:
            out.append(f"{key}: {json.dumps(manifest[key], ensure_ascii=False)}")
    out.append("stats:")
    for key, value in manifest.get("stats", {}).items():
        out.append(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    tokenizer_dir = directory / "tokenizer"
    if examples and tokenizer_dir.is_dir() and any(directory.glob("shard-*.npy")):
        verify_files(directory, manifest)  # a deleted or changed shard: one line naming it, not a traceback
        tokenizer = load_tokenizer(tokenizer_dir).tokenizer
        arrays = ShardedArrays(directory)
        for i in range(min(examples, arrays.num_sequences)):
            out.append(f"example {i}:")
            out.extend(describe_example(arrays[i], tokenizer))
    return "\n".join(out)


def tokenize(tokenizer_dir: str | Path, texts: list[str]) -> list[dict]:
    """Pieces and ids of each text, with [CLS]/[SEP] as AutoTokenizer adds them by default."""
    from tokenizers import AddedToken, Tokenizer

    loaded = load_tokenizer(tokenizer_dir)
    for i, text in enumerate(texts):
        check_unicode(text, f"text {i + 1}")
    # transformers matches the special tokens as written in a text ("The [MASK] sat"), before normalization; our
    # tokenizer.json leaves them to the config files (a corpus's literal "[SEP]" stays text in `bert pairs`)
    tokenizer = Tokenizer.from_str(loaded.tokenizer.to_str())
    tokenizer.add_special_tokens([AddedToken(loaded.tokenizer.id_to_token(i), special=True, normalized=False)
                                  for i in loaded.all_special_ids])
    encodings = tokenizer.encode_batch(list(texts))
    unk = loaded.special_ids["unk"]
    for i, e in enumerate(encodings):
        pieces = [t for t, special in zip(e.ids, e.special_tokens_mask) if not special]
        warn_if_mostly_unknown(pieces.count(unk), len(pieces), f"text {i + 1}", tokenizer_dir, [texts[i]])
    return [{"text": t, "tokens": e.tokens, "ids": e.ids} for t, e in zip(texts, encodings)]
