"""Benchmark `bert train-vocab` (algorithm bpe) against the bare `tokenizers` trainer with the same settings.

Both run in fresh subprocesses, alternating, so wall time and peak memory (ru_maxrss of the child) are
comparable; also trains twice more to measure how many tokens differ between two runs (reproducibility).

    python scripts/bench_vocab.py --corpus ../shared/data/en-dev.txt --vocab-size 30522 --repeats 2
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
import time
from pathlib import Path

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


def _child(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def _vocab(path: Path) -> set[str]:
    return {line.rstrip("\n") for line in path.open(encoding="utf-8")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="../shared/data/en-dev.txt")
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, TQDM_DISABLE="1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_vocab_"))
    ours_runs, bare_runs = [], []
    for r in range(args.repeats):
        out = tmp / f"ours{r}"
        ours_runs.append(
            _child(
                [sys.executable, "-m", "bertcli", "train-vocab", "--input", args.corpus, "--output", str(out),
                 "--set", f"vocab_size={args.vocab_size}", "--set", "num_workers=2", "--set", "algorithm=bpe"],
                env,
            )
        )
        bare = [sys.executable, "-c", BARE, args.corpus, str(args.vocab_size), str(tmp / f"bare{r}.json")]
        bare_runs.append(_child(bare, env))
    a, b = _vocab(tmp / "ours0" / "vocab.txt"), _vocab(tmp / f"ours{min(1, args.repeats - 1)}" / "vocab.txt")
    second = tmp / f"ours{min(1, args.repeats - 1)}"
    same_order = (tmp / "ours0" / "vocab.txt").read_bytes() == (second / "vocab.txt").read_bytes()
    best = lambda runs, i: min(x[i] for x in runs)  # noqa: E731
    result = {
        "benchmark": "train-vocab bpe vs bare tokenizers WordPieceTrainer",
        "corpus": args.corpus,
        "corpus_bytes": Path(args.corpus).stat().st_size,
        "vocab_size": args.vocab_size,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
        "ours_wall_s": [round(x[0], 2) for x in ours_runs],
        "bare_wall_s": [round(x[0], 2) for x in bare_runs],
        "ours_peak_rss_mb": [round(x[1]) for x in ours_runs],
        "bare_peak_rss_mb": [round(x[1]) for x in bare_runs],
        "wall_ratio_best": round(best(ours_runs, 0) / best(bare_runs, 0), 3),
        "peak_rss_ratio_best": round(best(ours_runs, 1) / best(bare_runs, 1), 3),
        "tokens_differing_between_two_runs": len(a ^ b) // 2,
        "vocab_txt_identical_between_two_runs": same_order,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
