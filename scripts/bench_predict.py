"""Throughput of `bert predict-nsp` and `bert evaluate` beside the plain transformers code a user would write."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertcli.model_dir import load_model  # noqa: E402
from bertcli.shards import ShardedArrays  # noqa: E402
from bertcli.tools import predict  # noqa: E402


def read_pairs(corpus: Path, limit: int) -> list[tuple[str, str]]:
    """Consecutive sentences of the same document."""
    pairs: list[tuple[str, str]] = []
    previous = None
    for line in corpus.open(encoding="utf-8"):
        line = line.strip()
        if not line:
            previous = None
            continue
        if previous is not None:
            pairs.append((previous, line))
            if len(pairs) == limit:
                break
        previous = line
    return pairs


def build_model(tokenizer_dir: Path, out: Path, hidden: int, layers: int, max_positions: int) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                     max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id)
    BertForPreTraining(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def baseline_nsp(model_dir: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """One pair per forward pass, full BertForPreTraining outputs: the code in most NSP tutorials."""
    from transformers import AutoTokenizer, BertForPreTraining

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForPreTraining.from_pretrained(model_dir).eval()
    probs = []
    with torch.no_grad():
        for a, b in pairs:
            enc = tok(a, b, return_tensors="pt", truncation=True, max_length=model.config.max_position_embeddings)
            logits = model(**enc).seq_relationship_logits
            probs.append(float(torch.softmax(logits, -1)[0, 0]))
    return probs


def baseline_evaluate(model_dir: Path, data: Path, batch_size: int, limit: int) -> float:
    """Batched, padded BertForPreTraining forward with labels (-100 elsewhere): full-vocabulary logits everywhere."""
    from transformers import AutoTokenizer, BertForPreTraining

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForPreTraining.from_pretrained(model_dir).eval()
    rows = ShardedArrays(data)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, min(limit, len(rows)), batch_size):
            batch = [rows[i] for i in range(start, min(start + batch_size, limit))]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for b, r in enumerate(batch):
                n = len(r["input_ids"])
                ids[b, :n] = torch.from_numpy(np.asarray(r["input_ids"], dtype=np.int64))
                mask[b, :n] = 1
                types[b, int(r["type_boundary"]) : n] = 1
                pos = torch.from_numpy(np.asarray(r["masked_positions"], dtype=np.int64))
                labels[b, pos] = torch.from_numpy(np.asarray(r["masked_labels"], dtype=np.int64))
            out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
            logits = out.prediction_logits[labels != -100]
            target = labels[labels != -100]
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
    return total / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "sample" / "jargon.txt")
    parser.add_argument("--masked", type=Path, default=ROOT / "runs" / "demo" / "masked",
                        help="a masked artifact (after make demo: bert mask --input runs/demo/pairs "
                        "--output runs/demo/masked)")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.masked / "tokenizer", Path(tmp) / "model", args.hidden, args.layers, 128)
        pairs = read_pairs(args.corpus, args.pairs)
        loaded = load_model(model_dir, device="cpu", need_mlm=True, need_nsp=True)

        start = time.perf_counter()
        ours = predict.predict_nsp(loaded, pairs, batch_size=32)
        ours_nsp_s = time.perf_counter() - start
        start = time.perf_counter()
        base = baseline_nsp(model_dir, pairs)
        base_nsp_s = time.perf_counter() - start
        max_diff = max(abs(o["is_next_probability"] - b) for o, b in zip(ours, base))

        start = time.perf_counter()
        metrics = predict.evaluate(loaded, args.masked, batch_size=32, max_sequences=args.sequences, progress=False)
        ours_eval_s = time.perf_counter() - start
        start = time.perf_counter()
        base_loss = baseline_evaluate(model_dir, args.masked, 32, args.sequences)
        base_eval_s = time.perf_counter() - start

    print(json.dumps({
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "model": f"BertForPreTraining {args.layers} layers × {args.hidden}, vocab {len(loaded.tokenizer)}",
        "predict_nsp": {"pairs": len(pairs), "ours_pairs_per_s": len(pairs) / ours_nsp_s,
                        "baseline_pairs_per_s": len(pairs) / base_nsp_s, "speedup": base_nsp_s / ours_nsp_s,
                        "max_probability_difference": max_diff},
        "evaluate": {"sequences": metrics["sequences"], "ours_sequences_per_s": metrics["sequences"] / ours_eval_s,
                     "baseline_sequences_per_s": metrics["sequences"] / base_eval_s,
                     "speedup": base_eval_s / ours_eval_s, "ours_mlm_loss": metrics["mlm_loss"],
                     "baseline_mlm_loss": base_loss},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
