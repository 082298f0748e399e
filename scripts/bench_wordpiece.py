"""Benchmark the score-based WordPiece trainer: against the plain textbook loop, and against the tokenizers trainer.

Part 1 (slice): the first --slice-bytes of the corpus, vocab --slice-vocab-size, score textbook, no minimum
frequency and no alphabet limit: wall time of our trainer and of the plain loop (the reference of
tests/test_wordpiece.py) on the same word counts, and whether the two vocabularies are identical in order.
Part 2 (full): `bert train-vocab --set algorithm=wordpiece --set score=S` on the whole corpus for each score, and
the bare `tokenizers` WordPieceTrainer with the same normalization (lowercase, accents kept) and settings; each run
in a fresh child process, alternating; wall time and peak RSS (the main process; and the whole process tree).

    python scripts/bench_wordpiece.py --corpus ../shared/data/en-dev.txt
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

BARE = r"""
import sys
from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece
corpus, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = Tokenizer(WordPiece(unk_token="[UNK]"))
tok.normalizer = normalizers.BertNormalizer(
    clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, limit_alphabet=1000,
    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
tok.train([corpus], trainer=trainer)
tok.save(out)
"""


def slice_word_counts(corpus: str, slice_bytes: int) -> list[tuple[str, int]]:
    """Word counts of the corpus's first lines (up to slice_bytes), normalized and split as train-vocab does."""
    from bertcli import word_counts
    from bertcli.schemas import TrainVocabConfig

    cfg = TrainVocabConfig(input=[corpus])
    word_counts.init_word_splitter(word_counts.normalizer_args(cfg))
    lines, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            size += len(line.encode("utf-8"))
            if size > slice_bytes:
                break
            if line.strip():
                lines.append(line.strip())
    return list(Counter(word_counts.split_words(lines)).items())


def bench_slice(corpus: str, slice_bytes: int, vocab_size: int, skip_reference: bool) -> dict:
    from bertcli.wordpiece import train_wordpiece
    from test_wordpiece import SPECIALS, reference_loop

    wc = slice_word_counts(corpus, slice_bytes)
    start = time.perf_counter()
    fast = train_wordpiece(wc, vocab_size, SPECIALS, score="textbook")
    fast_s = time.perf_counter() - start
    out = {
        "slice_bytes": slice_bytes,
        "distinct_words": len(wc),
        "vocab_size": vocab_size,
        "fast_wall_s": round(fast_s, 3),
    }
    if not skip_reference:
        start = time.perf_counter()
        slow = reference_loop(wc, vocab_size, SPECIALS, score="textbook")
        slow_s = time.perf_counter() - start
        out.update(
            reference_wall_s=round(slow_s, 2),
            speedup=round(slow_s / fast_s, 1),
            identical_vocab_in_order=slow == fast,
        )
    return out


class _TreePeak:
    """Peak of the summed RSS of a process and its descendants, polled every 50 ms (needs psutil)."""

    def __init__(self, pid: int) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        try:
            import psutil

            self._proc = psutil.Process(pid)
        except Exception:  # psutil missing or the child already gone: report the main process only
            self._proc = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._proc is not None and not self._stop.is_set():
            try:
                procs = [self._proc] + self._proc.children(recursive=True)
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            except Exception:
                pass
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def _child(cmd: list[str], env: dict, cwd: str | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree = _TreePeak(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    tree_peak = tree.stop()
    if status != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "tree_peak_rss_mb": round(tree_peak),
    }


def bench_full(corpus: str, vocab_size: int, scores: list[str], repeats: int) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_wordpiece_"))
    runs: dict[str, list[dict]] = {"tokenizers_bpe": []}
    for r in range(repeats):
        bare = [sys.executable, "-c", BARE, corpus, str(vocab_size), str(tmp / f"bare{r}.json")]
        runs["tokenizers_bpe"].append(_child(bare, env))
        for score in scores:
            out = tmp / f"{score}{r}"
            cmd = [sys.executable, "-m", "bertcli", "train-vocab", "--input", corpus, "--output", str(out),
                   "--set", f"vocab_size={vocab_size}", "--set", "algorithm=wordpiece", "--set", f"score={score}",
                   "--set", "num_workers=2"]
            runs.setdefault(score, []).append(_child(cmd, env))
    base = min(x["wall_s"] for x in runs["tokenizers_bpe"])
    result: dict = {"vocab_size": vocab_size, "runs": runs, "wall_ratio_vs_tokenizers_best": {}}
    for score in scores:
        result["wall_ratio_vs_tokenizers_best"][score] = round(min(x["wall_s"] for x in runs[score]) / base, 2)
        if repeats > 1:
            same = (tmp / f"{score}0" / "vocab.txt").read_bytes() == (tmp / f"{score}1" / "vocab.txt").read_bytes()
            result.setdefault("vocab_txt_identical_between_runs", {})[score] = same
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "en-dev.txt"))
    ap.add_argument("--slice-bytes", type=int, default=200_000)
    ap.add_argument("--slice-vocab-size", type=int, default=2000)
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--scores", nargs="+", default=["textbook", "likelihood"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-slice", action="store_true")
    ap.add_argument("--skip-reference", action="store_true", help="time only our trainer on the slice")
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    result: dict = {
        "benchmark": "score-based WordPiece trainer",
        "corpus": args.corpus,
        "corpus_bytes": Path(args.corpus).stat().st_size,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "load_average_at_start": os.getloadavg()[0],
    }
    if not args.skip_slice:
        result["slice"] = bench_slice(args.corpus, args.slice_bytes, args.slice_vocab_size, args.skip_reference)
    if not args.skip_full:
        result["full"] = bench_full(args.corpus, args.vocab_size, args.scores, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
