"""How much of next-sentence prediction a word-overlap rule solves on a pairs artifact; prints one JSON line.

    python scripts/bench_nsp_baseline.py --train runs/demo/pairs --heldout heldout-pairs [--common 0,50,200,500]
        [--model runs/demo/pretrain/final]

The rule: call B the real continuation of A when at least a share t of B's distinct pieces (leaving out the k most
frequent pieces of the training artifact) also occur in A. t is the threshold that is most accurate on --train;
the figure is its accuracy on --heldout (a pairs artifact of documents the model never saw, made with the same
tokenizer). It is what a model gets from lexical overlap alone, the first thing NSP can learn: a pretrained model
whose held-out NSP accuracy is below it has not yet learned to compare its two segments.

With --model, the same held-out pairs go through a pretrained model too (no tokens masked), and the JSON says how
far its IsNext probability follows the overlap: the correlation of the two, and the model's accuracy in bands of
the overlap share (leaving out the 50 most frequent pieces). A model that compares its segments is confident where
the overlap is large; one whose probability barely moves across the bands has learned something else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertcli.artifacts import load_data  # noqa: E402


def overlap_shares(path: str, common: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(share of B's distinct pieces that occur in A, is-next) for each sequence: [CLS] A [SEP] B [SEP]."""
    data = load_data(path, ("pairs",))
    shares, is_next = np.empty(len(data.arrays)), np.empty(len(data.arrays), dtype=bool)
    for i in range(len(data.arrays)):
        row = data.arrays[i]
        ids, boundary = np.asarray(row["input_ids"]), int(row["type_boundary"])
        first, second = set(ids[1 : boundary - 1].tolist()) - common, set(ids[boundary:-1].tolist()) - common
        shares[i] = len(first & second) / max(1, len(second))
        is_next[i] = int(row["next_sentence_label"]) == 0  # 0: B follows A (BertForPreTraining's convention)
    return shares, is_next


def is_next_probabilities(model_dir: str, path: str, batch_size: int = 64) -> np.ndarray:
    """The model's probability that B follows A for each sequence of a pairs artifact, nothing masked."""
    import torch
    from transformers import BertForPreTraining

    data = load_data(path, ("pairs",))
    pad_id = data.special_ids["pad"]
    model = BertForPreTraining.from_pretrained(model_dir).eval()
    probabilities = np.empty(len(data.arrays))
    with torch.no_grad():
        for start in range(0, len(data.arrays), batch_size):
            rows = [data.arrays[i] for i in range(start, min(start + batch_size, len(data.arrays)))]
            width = max(len(row["input_ids"]) for row in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, width)
            token_type_ids = torch.zeros_like(input_ids)
            attention_mask = torch.zeros_like(input_ids)
            for j, row in enumerate(rows):
                ids = torch.as_tensor(np.asarray(row["input_ids"], dtype=np.int64))
                input_ids[j, : len(ids)], attention_mask[j, : len(ids)] = ids, 1
                token_type_ids[j, int(row["type_boundary"]) : len(ids)] = 1  # segment B from its first piece
            logits = model(input_ids=input_ids, token_type_ids=token_type_ids,
                           attention_mask=attention_mask).seq_relationship_logits  # (batch, 2); 0 = IsNext
            probabilities[start : start + len(rows)] = torch.softmax(logits.float(), -1)[:, 0].numpy()
    return probabilities


def model_against_overlap(probabilities: np.ndarray, shares: np.ndarray, is_next: np.ndarray) -> dict:
    """How the model's IsNext probability varies with the overlap share, and its accuracy in each band."""
    predicted = probabilities > 0.5
    # undefined (NaN, which is not JSON) when either side is constant: a model that says the same for every pair
    varies = probabilities.std() > 0 and shares.std() > 0
    correlation = round(float(np.corrcoef(probabilities, shares)[0, 1]), 3) if varies else None
    bands = []
    for low, high in ((0.0, 0.0), (0.0, 0.2), (0.2, 0.4), (0.4, 1.0)):
        # The first band is "no overlap at all"; the others are (low, high], so every share lands in exactly one.
        in_band = shares == 0 if high == 0 else (shares > low) & (shares <= high)
        if in_band.any():
            bands.append({"share": f"({low}, {high}]" if high else "0", "sequences": int(in_band.sum()),
                          "is_next": round(float(is_next[in_band].mean()), 3),
                          "mean_is_next_probability": round(float(probabilities[in_band].mean()), 3),
                          "model_accuracy": round(float(np.mean(predicted[in_band] == is_next[in_band])), 3)})
    return {"accuracy": round(float(np.mean(predicted == is_next)), 4),
            "correlation_with_share": correlation, "bands": bands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="pairs artifact the threshold is chosen on")
    parser.add_argument("--heldout", required=True, help="pairs artifact of unseen documents, same tokenizer")
    parser.add_argument("--common", default="0,50,200,500", help="numbers of most frequent pieces to leave out")
    parser.add_argument("--model", help="a pretrained model directory to compare with the rule on --heldout")
    args = parser.parse_args()
    train = load_data(args.train, ("pairs",))
    counts = np.zeros(train.vocab_size, dtype=np.int64)
    for shard in train.arrays.shards:  # one shard's tokens at a time
        counts += np.bincount(np.asarray(shard["input_ids"]), minlength=train.vocab_size)
    rows = []
    for k in (int(x) for x in args.common.split(",")):
        common = set(np.argsort(-counts, kind="stable")[:k].tolist())
        shares, is_next = overlap_shares(args.train, common)
        thresholds = np.unique(shares)
        train_acc = [float(np.mean((shares >= t) == is_next)) for t in thresholds]
        best = int(np.argmax(train_acc))
        held_shares, held_is_next = overlap_shares(args.heldout, common)
        rows.append({"common_left_out": k, "threshold": round(float(thresholds[best]), 4),
                     "train_accuracy": round(train_acc[best], 4),
                     "heldout_accuracy": round(float(np.mean((held_shares >= thresholds[best]) == held_is_next)), 4),
                     "heldout_sequences": len(held_is_next), "heldout_is_next": round(float(held_is_next.mean()), 4)})
    report = {"train": args.train, "heldout": args.heldout, "max_seq_length": train.max_seq_length, "rules": rows}
    if args.model:
        common = set(np.argsort(-counts, kind="stable")[:50].tolist())
        shares, is_next = overlap_shares(args.heldout, common)
        report["model"] = {"path": args.model, **model_against_overlap(
            is_next_probabilities(args.model, args.heldout), shares, is_next)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
