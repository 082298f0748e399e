"""Benchmark `bert pairs` and `bert mask` against transformers' NSP dataset and MLM collator; prints JSON.

What it measures, all on one corpus and in one run (so the ratios compare like with like):
- pairs: wall time of `bert pairs` (a subprocess: read, tokenize, pair, write) vs transformers 4.57's
  TextDatasetForNextSentencePrediction building the same corpus with the same tokenizer (loaded by AutoTokenizer,
  i.e. BertTokenizerFast). Both rates are corpus tokens (our count) per wall second.
- mask: wall time of `bert mask` (read, mask, write) vs transformers' DataCollatorForLanguageModeling
  (mlm_probability 0.15) called on the very same sequences in batches of 256 (only the collator calls are timed;
  converting our arrays to the lists it takes is not).
- memory: peak anonymous memory (RssAnon summed over the process tree, sampled every 20 ms) of `bert pairs` on the
  corpus and on the corpus repeated --memory-scale times.

The NSP dataset class is gone from transformers 5, so the baseline runs in a separate virtualenv:

    python3 -m venv /tmp/venv457
    /tmp/venv457/bin/pip install torch==2.13.0 transformers==4.57.6

then: .venv/bin/python scripts/bench_data.py --corpus ../shared/data/en-dev.txt \
          --baseline-python /tmp/venv457/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

NSP_BASELINE = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import transformers
from transformers import AutoTokenizer
from transformers.data.datasets.language_modeling import TextDatasetForNextSentencePrediction
tokenizer_dir, corpus, block_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(tokenizer_dir)
start = time.perf_counter()
ds = TextDatasetForNextSentencePrediction(tok, corpus, block_size=block_size, overwrite_cache=True)
seconds = time.perf_counter() - start
labels = [int(e["next_sentence_label"]) for e in ds.examples]
print(json.dumps({"seconds": seconds, "examples": len(ds.examples), "is_next_share": labels.count(0) / len(labels),
                  "tokenizer_class": type(tok).__name__, "transformers": transformers.__version__}))
"""


def rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def tree_pids(root: int) -> list[int]:
    """root and every descendant, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; wall seconds and peak RssAnon (MiB) summed over its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(rss_anon_kb(p) for p in tree_pids(proc.pid)))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_anon_mib": round(peak / 1024, 1), "stdout": out}


def bert(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertcli", *args]


def collator_baseline(pairs_dir: Path, tokenizer_dir: Path, batch_size: int = 256) -> dict:
    """DataCollatorForLanguageModeling over every sequence of the pairs artifact (collator calls timed only)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from bertcli.shards import ShardedArrays

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    collator = DataCollatorForLanguageModeling(tokenizer=tok, mlm_probability=0.15)
    arrays = ShardedArrays(pairs_dir)
    seconds = 0.0
    tokens = 0
    chunk = 8192
    for start in range(0, arrays.num_sequences, chunk):
        rows = [arrays[i] for i in range(start, min(start + chunk, arrays.num_sequences))]
        features = []
        for row in rows:
            ids = np.asarray(row["input_ids"]).tolist()
            b = int(row["type_boundary"])
            features.append({"input_ids": ids, "token_type_ids": [0] * b + [1] * (len(ids) - b)})
            tokens += len(ids)
        t0 = time.perf_counter()
        for i in range(0, len(features), batch_size):
            collator(features[i : i + batch_size])
        seconds += time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "tokens": tokens, "transformers": transformers.__version__,
            "tokenizer_class": type(tok).__name__, "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "en-dev.txt"))
    parser.add_argument("--tokenizer", help="tokenizer directory (default: train a 30,522-token vocab on the corpus)")
    default_baseline = os.environ.get("BERTCLI_BASELINE_PYTHON") or (
        "/tmp/venv457/bin/python" if Path("/tmp/venv457/bin/python").exists() else None
    )
    parser.add_argument("--baseline-python", default=default_baseline,
                        help="python of a venv with transformers 4.57 (see the module doc; default: "
                             "$BERTCLI_BASELINE_PYTHON, else /tmp/venv457/bin/python if it exists)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--memory-scale", type=int, default=10, help="repeat the corpus this often (0: skip)")
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir, removed at the end)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"  # the NSP baseline writes its cache next to the corpus: give it a writable copy
    shutil.copyfile(args.corpus, corpus)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "corpus": {"path": args.corpus, "bytes": corpus.stat().st_size},
        "settings": {"workers": args.workers, "max_seq_length": args.max_seq_length, "dupe_factor": 1,
                     "short_seq_prob": 0.1, "nsp_probability": 0.5, "masked_lm_prob": 0.15,
                     "max_predictions_per_seq": 20},
    }
    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
    else:
        tokenizer = work / "tokenizer"
        r = run_measured(bert("train-vocab", "--input", str(corpus), "--output", str(tokenizer),
                              "--set", "vocab_size=30522", "--set", f"num_workers={args.workers}"))
        result["train_vocab_seconds"] = r["seconds"]
    result["tokenizer"] = str(tokenizer)
    common = ["--set", f"num_workers={args.workers}", "--set", f"max_seq_length={args.max_seq_length}"]

    pairs = work / "pairs"
    r = run_measured(bert("pairs", "--input", str(corpus), "--tokenizer", str(tokenizer), "--output", str(pairs),
                          *common))
    stats = json.loads((pairs / "manifest.json").read_text())["stats"]
    corpus_tokens = stats["document_tokens"]
    result["pairs"] = {
        "seconds": r["seconds"],
        "peak_rss_anon_mib": r["peak_rss_anon_mib"],
        "corpus_tokens": corpus_tokens,
        "tokens_per_second": round(corpus_tokens / r["seconds"]),
        "sequences": stats["sequences"],
        "is_next_share": stats["is_next_share"],
        "forced_random_share": stats["forced_random_share"],
        "truncation_rate": stats["truncation_rate"],
        "truncated_token_share": stats["truncated_token_share"],
        "padding_share": stats["padding_share"],
        "lookback_pairs": stats["lookback_pairs"],
        "following_pairs": stats["following_pairs"],
    }
    if args.workers > 1:  # the same run in one process, for the record
        r = run_measured(bert("pairs", "--input", str(corpus), "--tokenizer", str(tokenizer), "--output",
                              str(work / "pairs-1"), "--set", "num_workers=1", "--set",
                              f"max_seq_length={args.max_seq_length}"))
        result["pairs"]["one_worker_seconds"] = r["seconds"]
        result["pairs"]["one_worker_tokens_per_second"] = round(corpus_tokens / r["seconds"])
        same = all((work / "pairs-1" / p.name).read_bytes() == p.read_bytes() for p in pairs.glob("shard-*.npy"))
        result["pairs"]["identical_to_one_worker"] = same
        shutil.rmtree(work / "pairs-1", ignore_errors=True)
    if args.baseline_python:
        r = run_measured([args.baseline_python, "-c", NSP_BASELINE, str(tokenizer), str(corpus),
                          str(args.max_seq_length)])
        base = json.loads(r["stdout"].strip().splitlines()[-1])
        base.update(wall_seconds=r["seconds"], peak_rss_anon_mib=r["peak_rss_anon_mib"],
                    tokens_per_second=round(corpus_tokens / r["seconds"]))
        result["pairs_baseline"] = {"name": "transformers TextDatasetForNextSentencePrediction", **base}
        result["pairs_speedup"] = round(base["wall_seconds"] / result["pairs"]["seconds"], 2)
        if "one_worker_seconds" in result["pairs"]:
            result["pairs_speedup_one_worker"] = round(base["wall_seconds"] / result["pairs"]["one_worker_seconds"], 2)
        result["pairs_speedup_vs_constructor_only"] = round(base["seconds"] / result["pairs"]["seconds"], 2)
    else:
        result["pairs_baseline"] = "skipped: no --baseline-python (see this script's docstring for the venv)"

    masked = work / "masked"
    r = run_measured(bert("mask", "--input", str(pairs), "--output", str(masked),
                          "--set", f"num_workers={args.workers}"))
    mstats = json.loads((masked / "manifest.json").read_text())["stats"]
    result["mask"] = {
        "seconds": r["seconds"],
        "peak_rss_anon_mib": r["peak_rss_anon_mib"],
        "tokens": mstats["tokens"],
        "tokens_per_second": round(mstats["tokens"] / r["seconds"]),
        "selection_rate": mstats["selection_rate"],
        "mask_share": mstats["mask_share"],
        "random_share": mstats["random_share"],
        "kept_share": mstats["kept_share"],
        "selected_special": mstats["selected_special"],
    }
    if args.workers > 1:
        r = run_measured(bert("mask", "--input", str(pairs), "--output", str(work / "masked-1"),
                              "--set", "num_workers=1"))
        result["mask"]["one_worker_seconds"] = r["seconds"]
        result["mask"]["one_worker_tokens_per_second"] = round(mstats["tokens"] / r["seconds"])
        same = all((work / "masked-1" / p.name).read_bytes() == p.read_bytes() for p in masked.glob("shard-*.npy"))
        result["mask"]["identical_to_one_worker"] = same
        shutil.rmtree(work / "masked-1", ignore_errors=True)
    base = collator_baseline(pairs, tokenizer)
    base["tokens_per_second"] = round(base["tokens"] / base["seconds"])
    result["mask_baseline"] = {"name": "transformers DataCollatorForLanguageModeling", **base}
    result["mask_speedup"] = round(result["mask"]["tokens_per_second"] / base["tokens_per_second"], 2)
    if "one_worker_tokens_per_second" in result["mask"]:
        result["mask_speedup_one_worker"] = round(
            result["mask"]["one_worker_tokens_per_second"] / base["tokens_per_second"], 2)

    if args.memory_scale > 1:
        big = work / f"corpus-x{args.memory_scale}.txt"
        with open(big, "wb") as out, open(corpus, "rb") as src:
            data = src.read()
            for _ in range(args.memory_scale):
                out.write(data)
                if not data.endswith(b"\n\n"):
                    out.write(b"\n" if data.endswith(b"\n") else b"\n\n")
        r = run_measured(bert("pairs", "--input", str(big), "--tokenizer", str(tokenizer),
                              "--output", str(work / "pairs-big"), *common))
        big_stats = json.loads((work / "pairs-big" / "manifest.json").read_text())["stats"]
        result["memory"] = {
            "scale": args.memory_scale,
            "peak_rss_anon_mib_1x": result["pairs"]["peak_rss_anon_mib"],
            f"peak_rss_anon_mib_{args.memory_scale}x": r["peak_rss_anon_mib"],
            "ratio": round(r["peak_rss_anon_mib"] / result["pairs"]["peak_rss_anon_mib"], 3),
            "seconds": r["seconds"],
            "corpus_tokens": big_stats["document_tokens"],
            "tokens_per_second": round(big_stats["document_tokens"] / r["seconds"]),
        }
        shutil.rmtree(work / "pairs-big", ignore_errors=True)
        big.unlink()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
