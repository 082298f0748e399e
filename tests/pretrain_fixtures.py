"""Small pairs/masked artifacts for the tests, written with bertcli.shards.ShardWriter in the documented format, and
the helpers of the pretraining tests (a tiny config, a run's weights, an interrupted copy of a run).

The sequences are real text (consecutive sentences of a corpus, half of the B segments from another document),
so a tiny model learns something in a few dozen steps; the masking here is a simple 15% / 80-10-10 for test
data only (the product's masking is bertcli.masking, used by `bert mask` and by dynamic masking).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from bertcli.artifacts import write_manifest
from bertcli.schemas import MaskConfig, ModelConfig, PairsConfig, PretrainConfig
from bertcli.shards import ShardWriter, token_dtype
from bertcli.vocab import copy_tokenizer_files, load_tokenizer

TINY_MODEL = dict(preset=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


def write_rows(writer: ShardWriter, rows: list[dict]) -> None:
    """Hand rows (one dict of fields per sequence) to the block-fed ShardWriter as one block."""
    ragged = {
        name: (np.concatenate([np.asarray(r[name]) for r in rows]), np.array([len(r[name]) for r in rows]))
        for name in writer.ragged
    }
    scalar = {name: np.array([r[name] for r in rows]) for name in writer.scalar}
    writer.add_block(ragged, scalar)


def _documents(corpus: Path) -> list[list[str]]:
    docs, current = [], []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            docs.append(current)
            current = []
    if current:
        docs.append(current)
    return [d for d in docs if len(d) >= 2]


def make_artifact(
    out: Path,
    tokenizer_dir: Path,
    corpus: Path,
    kind: str = "masked",
    max_seq_length: int = 32,
    num_sequences: int = 256,
    sequences_per_shard: int = 100,
    seed: int = 0,
    nsp: bool = True,
) -> Path:
    """Write a `pairs` or `masked` artifact with num_sequences sequences of at most max_seq_length tokens."""
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.special_ids
    rng = np.random.default_rng(seed)
    docs = [[tok.tokenizer.encode(s, add_special_tokens=False).ids for s in d] for d in _documents(corpus)]
    dtype = token_dtype(tok.vocab_size)
    ragged = {"input_ids": dtype}
    if kind == "masked":
        ragged.update({"masked_positions": np.int16, "masked_labels": dtype})
    out.mkdir(parents=True)
    writer = ShardWriter(out, ragged=ragged, scalar={"type_boundary": np.int32, "next_sentence_label": np.int8},
                         sequences_per_shard=sequences_per_shard)
    specials = set(ids.values())
    normal = np.array([i for i in range(tok.vocab_size) if i not in specials])
    rows = []
    for n in range(num_sequences):
        d = int(rng.integers(len(docs)))
        s = int(rng.integers(len(docs[d]) - 1))
        a = docs[d][s]
        label = int(rng.random() < 0.5) if nsp else 0
        if label:
            other = (d + 1 + int(rng.integers(len(docs) - 1))) % len(docs)
            b = docs[other][int(rng.integers(len(docs[other])))]
        else:
            b = docs[d][s + 1]
        budget = max_seq_length - 3
        length = int(rng.integers(max(4, budget // 3), budget + 1))  # varied lengths: padding matters
        a = a[: max(1, length // 2)]
        b = b[: max(1, length - len(a))]
        if nsp:
            seq = [ids["cls"], *a, ids["sep"], *b, ids["sep"]]
            boundary = len(a) + 2
        else:
            seq = [ids["cls"], *a, *b, ids["sep"]]
            boundary = len(seq)
        seq = np.array(seq, dtype=np.int64)
        row = {"input_ids": seq, "type_boundary": boundary, "next_sentence_label": label}
        if kind == "masked":
            cand = np.array([i for i, t in enumerate(seq) if t not in (ids["cls"], ids["sep"], ids["pad"])])
            k = min(20, max(1, round(len(cand) * 0.15)))
            pos = np.sort(rng.choice(cand, size=k, replace=False))
            labels = seq[pos].copy()
            coin = rng.random(k)
            seq = seq.copy()
            seq[pos[coin < 0.8]] = ids["mask"]
            rand = pos[(coin >= 0.8) & (coin < 0.9)]
            seq[rand] = rng.choice(normal, size=len(rand))
            row.update(input_ids=seq, masked_positions=pos, masked_labels=labels)
        rows.append(row)
    write_rows(writer, rows)
    writer.close()
    copy_tokenizer_files(tokenizer_dir, out / "tokenizer")
    stage = kind
    cfg = MaskConfig(input="pairs", output=str(out)) if kind == "masked" else PairsConfig(
        input=[str(corpus)], tokenizer=str(tokenizer_dir), output=str(out), max_seq_length=max_seq_length, nsp=nsp
    )
    write_manifest(
        out, stage, cfg, stats={"sequences": num_sequences},
        inputs={"tokenizer": {"path": str(tokenizer_dir), "hash": tok.hash}},
        extra={"vocab_size": tok.vocab_size, "max_seq_length": max_seq_length, "special_token_ids": ids,
               "token_dtype": str(dtype), "nsp": nsp},
    )
    return out


# ---------------------------------------------------------------------------------------------- pretraining runs

def tiny_cfg(data: Path, output: Path, **overrides) -> PretrainConfig:
    """6 steps of a hidden-32, 2-layer model, batch 8 in micro-batches of 4, checkpoints at steps 2 and 4."""
    values = dict(
        data=str(data), output=str(output), model=ModelConfig(**TINY_MODEL), max_steps=6, batch_size=8,
        micro_batch_size=4, learning_rate=2e-3, warmup_steps=2, eval_every=3, eval_batches=2, save_every=2,
        keep_checkpoints=3, log_every=2, eval_fraction=0.1, seed=3,
    )
    values.update(overrides)
    return PretrainConfig(**values)


def weights(run: Path, name: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def interrupted_copy(reference: Path, dest: Path) -> Path:
    """The reference run as a kill after step 5 would leave it: no final/, no manifest, metrics beyond step 4."""
    shutil.copytree(reference, dest)
    shutil.rmtree(dest / "final")
    (dest / "manifest.json").unlink()
    return dest


def run_data_path(run: Path) -> Path:
    """The data a run was trained on (from its config.yaml)."""
    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"])
