"""Benchmark reading a corpus as Parquet, Arrow, a Hugging Face directory, .txt.zst and .jsonl.zst against the same
text uncompressed, and the memory of `bert pairs` on a Parquet corpus as it grows; prints JSON.

All in one run, so the ratios compare like with like on a machine shared with other jobs:
- read: wall seconds of bertcli.corpus.iter_documents over the whole corpus (every document built, as the stages
  consume them), in this process, the formats alternating, best of --repeats;
- pairs: wall seconds of `bert pairs` end to end (a subprocess: start-up, reading, tokenizing, pairing, writing),
  the formats alternating, best of --pairs-repeats; the script checks that every format wrote the text's shards;
- memory: peak anonymous memory (RssAnon summed over the process tree, sampled every 20 ms) of `bert pairs` on
  the Parquet corpus at 1x and at --memory-scale x (the 1x table written that many times, a row group each), and
  on the text at 1x and at that scale as the control (what the stage's own data structures add).

Every format holds the documents that reading the text gives; the conversions are not timed.

    python scripts/bench_formats.py --corpus ../shared/data/en-small.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard  # noqa: E402
from bench_data import bert, run_measured  # noqa: E402

from bertcli.corpus import iter_documents  # noqa: E402

# zstd's command-line defaults: level 3, a content checksum
ZSTD_LEVEL = 3


def write_formats(docs: list[list[str]], text_path: Path, work: Path) -> dict[str, Path]:
    """The corpus in every format, each holding exactly the documents `docs` (read from text_path)."""
    texts = ["\n".join(d) for d in docs]
    table = pa.table({"text": texts})
    out = {"text": text_path}
    jsonl = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")
    out["jsonl"] = work / "corpus.jsonl"
    out["jsonl"].write_bytes(jsonl)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    out["txt.zst"] = work / "corpus.txt.zst"
    out["txt.zst"].write_bytes(compressor.compress(text_path.read_bytes()))
    out["jsonl.zst"] = work / "corpus.jsonl.zst"
    out["jsonl.zst"].write_bytes(compressor.compress(jsonl))
    out["parquet"] = work / "corpus.parquet"
    pq.write_table(table, out["parquet"])  # pyarrow's defaults: snappy, dictionary encoding
    out["arrow"] = work / "corpus.arrow"
    with pa.OSFile(str(out["arrow"]), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)  # record batches of 1,000 rows, as datasets writes them
    dataset = work / "hf-dataset"
    dataset.mkdir()
    with pa.OSFile(str(dataset / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1000)
    (dataset / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (dataset / "dataset_info.json").write_text("{}")
    out["hf-dataset"] = dataset
    return out


def read_once(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    sentences = 0
    for doc in iter_documents([path]):
        sentences += len(doc)
    return time.perf_counter() - start, sentences


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def content_hash(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_text())["content_hash"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "en-small.txt"))
    parser.add_argument("--tokenizer", help="tokenizer directory (default: train an 8,000-token vocab on the corpus)")
    parser.add_argument("--repeats", type=int, default=5, help="read passes per format (best is kept)")
    parser.add_argument("--pairs-repeats", type=int, default=5, help="`bert pairs` runs per format (0: skip)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--memory-scale", type=int, default=10, help="Parquet corpus replication (0: skip)")
    parser.add_argument("--memory-repeats", type=int, default=2, help="`bert pairs` runs per corpus and scale")
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir, removed at the end)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_formats-"))
    work.mkdir(parents=True, exist_ok=True)
    text_path = work / "corpus.txt"
    shutil.copyfile(args.corpus, text_path)
    docs = list(iter_documents([text_path]))
    paths = write_formats(docs, text_path, work)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "pyarrow": pa.__version__, "zstandard": zstandard.__version__,
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "corpus": {"path": args.corpus, "bytes": text_path.stat().st_size, "documents": len(docs),
                   "sentences": sum(map(len, docs))},
        "file_bytes": {name: size_of(p) for name, p in paths.items()},
    }

    best = {name: float("inf") for name in paths}
    for _ in range(args.repeats):
        for name, path in paths.items():  # alternating: a burst of load hits every format alike
            seconds, sentences = read_once(path)
            if sentences != result["corpus"]["sentences"]:
                raise SystemExit(f"{name}: read {sentences} sentences, the text has {result['corpus']['sentences']}")
            best[name] = min(best[name], seconds)
    result["read"] = {
        "repeats": args.repeats,
        "best_seconds": {name: round(s, 4) for name, s in best.items()},
        "ratio_to_text": {name: round(s / best["text"], 3) for name, s in best.items()},
        "jsonl.zst_ratio_to_jsonl": round(best["jsonl.zst"] / best["jsonl"], 3),
        "text_mb_per_second": round(result["corpus"]["bytes"] / best["text"] / 1e6, 1),
    }

    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
    else:
        tokenizer = work / "tokenizer"
        run_measured(bert("train-vocab", "--input", str(text_path), "--output", str(tokenizer),
                          "--set", "vocab_size=8000"))
    common = ["--tokenizer", str(tokenizer), "--set", f"num_workers={args.workers}", "--set", "max_seq_length=128"]
    if args.pairs_repeats:
        timed = ["text", "jsonl", "parquet", "txt.zst", "jsonl.zst", "hf-dataset"]
        seconds: dict[str, list[float]] = {name: [] for name in timed}
        peak: dict[str, float] = {}
        hashes: dict[str, str] = {}
        for _ in range(args.pairs_repeats):
            for name in timed:
                out = work / f"pairs-{name}"
                r = run_measured(bert("pairs", "--input", str(paths[name]), "--output", str(out), *common))
                seconds[name].append(r["seconds"])
                peak[name] = max(peak.get(name, 0.0), r["peak_rss_anon_mib"])
                hashes[name] = content_hash(out)
                shutil.rmtree(out)
        result["pairs"] = {
            "repeats": args.pairs_repeats,
            "workers": args.workers,
            "seconds": seconds,
            "best_seconds": {name: min(s) for name, s in seconds.items()},
            "ratio_to_text": {name: round(min(s) / min(seconds["text"]), 3) for name, s in seconds.items()},
            "jsonl.zst_ratio_to_jsonl": round(min(seconds["jsonl.zst"]) / min(seconds["jsonl"]), 3),
            "peak_rss_anon_mib": peak,
            "identical_to_text": {name: h == hashes["text"] for name, h in hashes.items()},
        }

    if args.memory_scale > 1:
        scale = args.memory_scale
        big_parquet = work / f"corpus-x{scale}.parquet"
        table = pq.read_table(paths["parquet"])
        with pq.ParquetWriter(big_parquet, table.schema) as writer:
            for _ in range(scale):
                writer.write_table(table)
        big_text = work / f"corpus-x{scale}.txt"  # the control: how much the stage itself grows, reading text
        data = text_path.read_bytes().rstrip(b"\n") + b"\n\n"
        big_text.write_bytes(data * scale)
        corpora = {"parquet": (paths["parquet"], big_parquet), "text": (text_path, big_text)}
        peaks: dict[str, dict[str, list[float]]] = {k: {"1x": [], f"{scale}x": []} for k in corpora}
        for _ in range(args.memory_repeats):
            for kind, (small, big) in corpora.items():
                for label, path in (("1x", small), (f"{scale}x", big)):
                    out = work / f"pairs-memory-{kind}-{label}"
                    r = run_measured(bert("pairs", "--input", str(path), "--output", str(out), *common))
                    peaks[kind][label].append(r["peak_rss_anon_mib"])
                    shutil.rmtree(out)
        result["memory"] = {
            "scale": scale,
            "repeats": args.memory_repeats,
            "peak_rss_anon_mib": peaks,
            # the largest peak at scale against the smallest at 1x: the pessimistic reading of a noisy sampler
            "ratio": {k: round(max(v[f"{scale}x"]) / min(v["1x"]), 3) for k, v in peaks.items()},
        }
        big_parquet.unlink()
        big_text.unlink()

    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
