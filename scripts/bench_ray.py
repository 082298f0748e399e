"""Benchmark `bert pairs` on the local executor against executor ray with 1 and 2 workers; prints JSON.

Each run is the whole command in a subprocess (Python start, Ray start and stop, reading, tokenizing, the parts,
their merge, hashing for the manifest), so the Ray figures carry everything a user waits for. The three
configurations run in alternation, round after round, and each keeps its best time: on a machine shared with other
jobs the load drifts, and alternating spreads the drift over all three. Every artifact's content_hash and
config_hash must equal the local executor's (the script fails otherwise).

    .venv/bin/python scripts/bench_ray.py --corpus ../shared/data/en-small.txt --repeats 3

Ray runs: a local Ray instance of --workers-ray CPUs (1, then 2), num_shards parts (default 2), each part one task
on one CPU. The local run: num_workers processes on this machine, no parts. One machine cannot show what several
machines would gain; this measures what Ray costs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What executor ray does around the tasks when ray_address is unset (bertcli.executors.RayExecutor): start a local
# instance, then stop it.
RAY_START_STOP = (
    "import logging, ray; ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING); "
    "ray.shutdown()"
)


def bert(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertcli", *args]


def timed(cmd: list[str]) -> float:
    """Wall seconds of a command, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "en-small.txt"))
    parser.add_argument("--tokenizer", help="tokenizer directory (default: train a 30,522-token vocab on the corpus)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each configuration keeps its best time")
    parser.add_argument("--num-shards", type=int, default=2, help="parts of the Ray runs (one task each)")
    parser.add_argument("--local-workers", type=int, default=2, help="num_workers of the local executor's run")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ray-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "corpus": {"path": str(corpus), "bytes": corpus.stat().st_size},
        "settings": {"max_seq_length": args.max_seq_length, "dupe_factor": 1, "repeats": args.repeats,
                     "num_shards": args.num_shards, "local_num_workers": args.local_workers},
    }
    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
    else:
        tokenizer = work / "tokenizer"
        timed(bert("train-vocab", "--input", str(corpus), "--output", str(tokenizer), "--set", "vocab_size=30522",
                   "--overwrite"))
    result["versions"] = {name: importlib.metadata.version(name) for name in ("ray", "tokenizers", "numpy")}
    common = ["--input", str(corpus), "--tokenizer", str(tokenizer), "--set", f"max_seq_length={args.max_seq_length}",
              "--overwrite"]
    ray_sets = ["--set", "executor=ray", "--set", f"num_shards={args.num_shards}"]
    configurations = {
        "local": ["--set", f"num_workers={args.local_workers}"],
        "ray_1_worker": [*ray_sets, "--set", "num_workers=1"],
        "ray_2_workers": [*ray_sets, "--set", "num_workers=2"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in configurations}
    start_stop: list[float] = []  # part of the overhead: starting and stopping a 2-CPU local instance, nothing else
    for _ in range(args.repeats):
        for name, sets in configurations.items():
            cmd = bert("pairs", *common, "--output", str(work / name), *sets)
            seconds[name].append(round(timed(cmd), 3))
            print(f"{name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
        start_stop.append(round(timed([sys.executable, "-c", RAY_START_STOP]), 3))

    manifests = {name: json.loads((work / name / "manifest.json").read_text()) for name in configurations}
    reference = manifests["local"]
    identical = all(
        m["content_hash"] == reference["content_hash"] and m["config_hash"] == reference["config_hash"]
        for m in manifests.values()
    )
    corpus_tokens = reference["stats"]["document_tokens"]
    best = {name: min(times) for name, times in seconds.items()}
    result["pairs"] = {
        name: {"seconds": times, "best_seconds": best[name],
               "corpus_tokens_per_second": round(corpus_tokens / best[name])}
        for name, times in seconds.items()
    }
    result["corpus_tokens"] = corpus_tokens
    result["sequences"] = reference["stats"]["sequences"]
    result["ray_overhead_seconds"] = {
        name: round(best[name] - best["local"], 3) for name in configurations if name != "local"
    }
    result["ratio_to_local"] = {name: round(best[name] / best["local"], 2) for name in configurations}
    result["ray_start_stop_seconds"] = {"seconds": start_stop, "best_seconds": min(start_stop)}
    result["ray_2_over_1_worker_speedup"] = round(best["ray_1_worker"] / best["ray_2_workers"], 2)
    result["byte_identical"] = identical
    result["content_hash"] = reference["content_hash"]
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if not identical:
        raise SystemExit("the artifacts differ: " + json.dumps({n: m["content_hash"] for n, m in manifests.items()}))


if __name__ == "__main__":
    main()
