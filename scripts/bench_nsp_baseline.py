"""How much of next-sentence prediction a word-overlap rule solves on a pairs artifact; prints one JSON line.

    python scripts/bench_nsp_baseline.py --train runs/demo/pairs --heldout heldout-pairs [--common 0,50,200,500]

The rule: call B the real continuation of A when at least a share t of B's distinct pieces (leaving out the k most
frequent pieces of the training artifact) also occur in A. t is the threshold that is most accurate on --train;
the figure is its accuracy on --heldout (a pairs artifact of documents the model never saw, made with the same
tokenizer). It is what a model gets from lexical overlap alone, the first thing NSP can learn: a pretrained model
whose held-out NSP accuracy is below it has not yet learned to compare its two segments.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="pairs artifact the threshold is chosen on")
    parser.add_argument("--heldout", required=True, help="pairs artifact of unseen documents, same tokenizer")
    parser.add_argument("--common", default="0,50,200,500", help="numbers of most frequent pieces to leave out")
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
    print(json.dumps({"train": args.train, "heldout": args.heldout, "max_seq_length": train.max_seq_length,
                      "rules": rows}))


if __name__ == "__main__":
    main()
