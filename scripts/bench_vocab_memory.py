"""Peak memory of `bert train-vocab` (wordpiece) against the bare `tokenizers` trainer, as distinct words grow.

Three corpora built from --corpus (en-dev) in --work-dir, kept there for later runs:
  0.5x  the corpus's first lines, up to the first line where the distinct words reach half of the corpus's;
  1x    the corpus itself;
  2x    the corpus followed by a copy with every ASCII letter rotated by 13 and every digit by 5 (ROT13/ROT5): the
        copy's words are new words with the same lengths and character statistics, so distinct words about double.
Distinct words are counted as train-vocab counts them (the default normalizer: lowercase, accents kept; BERT's
pre-tokenizer; words over 100 characters left out).

For each corpus, each run a fresh child process, alternating: the bare `tokenizers` WordPieceTrainer (same
normalizer, min_frequency 2, limit_alphabet 1000, vocab --vocab-size, reading the file itself) and ours, `python -m
bertcli train-vocab` with the defaults (algorithm wordpiece, score count, num_workers 2; --num-workers N sets it);
with --before-tree, also ours from another checkout (e.g. `git archive <rev> | tar -x -C DIR`). Peak RSS is the
whole process tree (the counting workers included), polled every 50 ms, and the main process's ru_maxrss.
--slice-mb adds corpora of the first N MB; --all-processes adds ours with every one of num_workers counting processes
started whatever the corpus's size (train-vocab starts one per 12 MB).

    python scripts/bench_vocab_memory.py --corpus ../shared/data/en-dev.txt --sizes 0.5 1 2
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_wordpiece import BARE, _child  # noqa: E402

ROT = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZABCDEFGHIJKLM5678901234",
)
CHECKPOINT_LINES = 1000
MAX_WORD_CHARS = 100  # TrainVocabConfig.max_input_chars_per_word


def _distinct_words(path: Path, transform: dict | None = None) -> tuple[set[str], list[tuple[int, int, int]]]:
    """The distinct words of a corpus (optionally transformed line by line), and (lines, bytes, distinct words so
    far) every CHECKPOINT_LINES lines."""
    from bertcli import word_counts
    from bertcli.schemas import TrainVocabConfig

    word_counts.init_word_splitter(word_counts.normalizer_args(TrainVocabConfig()))
    seen: set[str] = set()
    checkpoints = []
    batch: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            size += len(line.encode("utf-8"))
            if line.strip():
                batch.append(line.strip().translate(transform) if transform else line.strip())
            if n % CHECKPOINT_LINES == 0:
                seen.update(w for w in word_counts.split_words(batch) if len(w) <= MAX_WORD_CHARS)
                batch = []
                checkpoints.append((n, size, len(seen)))
    seen.update(w for w in word_counts.split_words(batch) if len(w) <= MAX_WORD_CHARS)
    return seen, checkpoints


def build_corpora(corpus: Path, work_dir: Path) -> dict[str, dict]:
    """The 0.5x / 1x / 2x corpora (written once into work_dir) with their sizes and distinct words."""
    index = work_dir / "corpora.json"
    if index.exists():
        return json.loads(index.read_text())
    work_dir.mkdir(parents=True, exist_ok=True)
    words, checkpoints = _distinct_words(corpus)
    rotated, _ = _distinct_words(corpus, ROT)
    half_lines, half_bytes, half_distinct = next(c for c in checkpoints if c[2] >= len(words) / 2)
    half = work_dir / "half.txt"
    doubled = work_dir / "doubled.txt"
    with corpus.open("rb") as src, half.open("wb") as out:
        out.write(src.read(half_bytes))
    with corpus.open(encoding="utf-8") as src, doubled.open("w", encoding="utf-8") as out:
        for line in src:
            out.write(line)
        src.seek(0)
        for line in src:
            out.write(line.translate(ROT))
    corpora = {
        "0.5": {
            "path": str(half),
            "how": f"first {half_lines:,} lines of {corpus.name}",
            "distinct_words": half_distinct,
        },
        "1": {"path": str(corpus), "how": corpus.name, "distinct_words": len(words)},
        "2": {
            "path": str(doubled),
            "how": f"{corpus.name} + {corpus.name} with ASCII letters ROT13 and digits ROT5",
            "distinct_words": len(words | rotated),
        },
    }
    for c in corpora.values():
        c["bytes"] = Path(c["path"]).stat().st_size
    index.write_text(json.dumps(corpora, indent=2))
    return corpora


# `bert train-vocab` with every one of num_workers counting processes, whatever the corpus's size.
ALL_PROCESSES = ("import runpy, sys; import bertcli.word_counts as w; w.CHUNKS_PER_WORKER = 1; "
                 "sys.argv = ['bert'] + sys.argv[1:]; runpy.run_module('bertcli', run_name='__main__')")


def _ours(corpus: str, out: Path, vocab_size: int, num_workers: int | None, all_processes: bool = False) -> list[str]:
    workers = [] if num_workers is None else ["--set", f"num_workers={num_workers}"]  # None: the config's default
    start = ["-c", ALL_PROCESSES] if all_processes else ["-m", "bertcli"]
    return [sys.executable, *start, "train-vocab", "--input", corpus, "--output", str(out),
            "--set", f"vocab_size={vocab_size}", *workers, "--overwrite"]


def slice_corpus(corpus: Path, work_dir: Path, mb: float) -> dict:
    """The corpus's first `mb` MB, cut after a line."""
    path = work_dir / f"slice-{mb:g}mb.txt"
    if not path.exists():
        with corpus.open("rb") as src:
            head = src.read(int(mb * (1 << 20)))
        path.write_bytes(head[: head.rfind(b"\n") + 1])
    return {"path": str(path), "how": f"first {mb:g} MB of {corpus.name}", "bytes": path.stat().st_size}


def bench(corpus: dict, name: str, work_dir: Path, vocab_size: int, repeats: int, before_tree: str | None,
          num_workers: int | None, all_processes: bool) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    ours_env = dict(env, PYTHONPATH=str(ROOT))
    sides = {"bare": [], "ours": []}
    if before_tree:
        sides["ours_before"] = []
    if all_processes:
        sides["ours_all_processes"] = []
    out_dir = work_dir / "out"
    out_dir.mkdir(exist_ok=True)
    # Run from work_dir: `python -m` puts the current directory first on sys.path, which would shadow PYTHONPATH.
    cwd = str(work_dir)
    for r in range(repeats):
        sides["bare"].append(_child([sys.executable, "-c", BARE, corpus["path"], str(vocab_size),
                                     str(out_dir / f"bare-{name}-{r}.json")], env, cwd))
        ours = _ours(corpus["path"], out_dir / f"ours-{name}-{r}", vocab_size, num_workers)
        sides["ours"].append(_child(ours, ours_env, cwd))
        if all_processes:
            forced = _ours(corpus["path"], out_dir / f"all-{name}-{r}", vocab_size, num_workers, all_processes=True)
            sides["ours_all_processes"].append(_child(forced, ours_env, cwd))
        if before_tree:
            before_env = dict(env, PYTHONPATH=before_tree)
            sides["ours_before"].append(
                _child(_ours(corpus["path"], out_dir / f"before-{name}-{r}", vocab_size, num_workers), before_env, cwd)
            )
    best = {side: {key: min(run[key] for run in runs) for key in ("wall_s", "tree_peak_rss_mb", "peak_rss_mb")}
            for side, runs in sides.items()}
    result = {**corpus, "runs": sides, "best": best}
    for side in sides:
        if side != "bare":
            for key, ratio in (("tree_peak_rss_mb", "tree_peak_ratio"), ("wall_s", "wall_ratio")):
                result[f"{side}_{ratio}"] = round(best[side][key] / best["bare"][key], 2)
    if before_tree:
        same = all((out_dir / f"ours-{name}-{r}" / "vocab.txt").read_bytes()
                   == (out_dir / f"before-{name}-{r}" / "vocab.txt").read_bytes() for r in range(repeats))
        result["vocab_txt_identical_to_before"] = same
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "en-dev.txt"))
    ap.add_argument("--work-dir", default="/tmp/bench_vocab_memory", help="built corpora and outputs")
    ap.add_argument("--sizes", nargs="*", default=["0.5", "1", "2"], choices=["0.5", "1", "2"])
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--num-workers", type=int, help="train-vocab's num_workers (default: the config's default)")
    ap.add_argument("--slice-mb", type=float, nargs="+", default=[], help="also the corpus's first N MB")
    ap.add_argument("--all-processes", action="store_true",
                    help="also ours with all num_workers counting processes, whatever the corpus's size")
    ap.add_argument("--before-tree", help="also run ours from this checkout (PYTHONPATH), alternating")
    args = ap.parse_args()
    work_dir = Path(args.work_dir)
    corpora = build_corpora(Path(args.corpus), work_dir)
    result: dict = {
        "benchmark": "train-vocab (wordpiece, score count) vs bare tokenizers WordPieceTrainer: peak memory",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "load_average_at_start": os.getloadavg()[0],
        "vocab_size": args.vocab_size,
        "num_workers": args.num_workers if args.num_workers is not None else "config default",
        "corpora": {},
    }
    for mb in args.slice_mb:
        corpora[f"{mb:g}mb"] = slice_corpus(Path(args.corpus), work_dir, mb)
    for size in [*args.sizes, *(f"{mb:g}mb" for mb in args.slice_mb)]:
        result["corpora"][size] = bench(corpora[size], size, work_dir, args.vocab_size, args.repeats, args.before_tree,
                                        args.num_workers, args.all_processes)
    result["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
