"""Record the content hashes of every artifact the pipeline writes for a fixed corpus and seed, as JSON.

Used to show that a refactoring changed no output: run it before and after, and compare. It drives the `bert`
command line only (no imports from the package), so it works whatever the package's internal layout.

    python scripts/record_hashes.py [--corpus data/sample/jargon.txt] [--workdir /tmp/hashes] > hashes.json

Two chains are recorded:
- default: train-vocab → pairs → mask → 20-step CPU pretrain on the masked artifact, and a 20-step pretrain on
  the pairs artifact (dynamic masking);
- small_shards: pairs with sequences_per_shard 200 → mask (the masked artifact must follow the pairs' shard size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bert(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "bertcli", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-3000:]}")


def manifest_hash(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))["content_hash"]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "data/sample/jargon.txt"))
    parser.add_argument("--workdir", default="/tmp/bertcli-hashes")
    args = parser.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    seed = "--set=seed=7"
    bert("train-vocab", "--input", args.corpus, "--output", str(work / "tok"), "--set", "vocab_size=3000", seed)
    bert("pairs", "--input", args.corpus, "--tokenizer", str(work / "tok"), "--output", str(work / "pairs"),
         "--set", "max_seq_length=64", seed, "--set", "num_workers=2")
    bert("mask", "--input", str(work / "pairs"), "--output", str(work / "masked"), seed)
    pretrain = ["--set", "model.preset=tiny", "--set", "model.max_position_embeddings=64", "--set", "max_steps=20",
                "--set", "batch_size=16", "--set", "micro_batch_size=8", "--set", "device=cpu",
                "--set", "save_every=0", "--set", "eval_every=10", "--set", "log_every=5", seed]
    bert("pretrain", "--config", "configs/pretrain/tiny.yaml", "--data", str(work / "masked"),
         "--output", str(work / "run-masked"), *pretrain)
    bert("pretrain", "--config", "configs/pretrain/tiny.yaml", "--data", str(work / "pairs"),
         "--output", str(work / "run-pairs"), *pretrain)
    bert("pairs", "--input", args.corpus, "--tokenizer", str(work / "tok"), "--output", str(work / "pairs-small"),
         "--set", "max_seq_length=64", "--set", "sequences_per_shard=200", seed)
    bert("mask", "--input", str(work / "pairs-small"), "--output", str(work / "masked-small"), seed)
    out = {
        "default": {
            "train-vocab": manifest_hash(work / "tok"),
            "pairs": manifest_hash(work / "pairs"),
            "masked": manifest_hash(work / "masked"),
            "pretrain-masked model.safetensors": file_sha256(work / "run-masked/final/model.safetensors"),
            "pretrain-pairs model.safetensors": file_sha256(work / "run-pairs/final/model.safetensors"),
        },
        "small_shards": {
            "pairs": manifest_hash(work / "pairs-small"),
            "masked": manifest_hash(work / "masked-small"),
            "masked shard files": len(list((work / "masked-small").glob("shard-*.input_ids.npy"))),
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
