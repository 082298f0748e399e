"""One ablation row of the demo's recipe, measured on documents it never trained on; prints one JSON line.

    python scripts/bench_demo.py --name D1 --set pretrain.learning_rate=0.003 [--set …] [--budget-s 180] \
        [--threads 1] [--results /tmp/quality/demo.jsonl]

What it does, on the bundled sample (`data/sample/`) only:

1. Trains on --corpus and evaluates on --heldout: by default the shipped split of the sample, `jargon.txt` (1,866
   documents) and `jargon-heldout.txt` (every 20th entry of the Jargon File: 98 documents), as `make demo` does.
   With `--heldout ''`, --corpus is split here the same way (every 20th document held out, written once under
   --workdir).
2. Runs `bert run` on configs/pipeline/demo.yaml (or --pipeline) with `input` the training split, its own workdir,
   the `--set` keys applied (dotted: `pretrain.learning_rate`, `pairs.max_seq_length`, `stages`; values are YAML)
   and `pretrain.time_budget_s` = --budget-s (or `--set pretrain.max_steps=N --budget-s 0` for a fixed number of
   steps). Its torch threads: --threads through OMP_NUM_THREADS (the config's `num_threads` key wins if set).
3. Builds `bert pairs` of the held-out documents with the run's tokenizer and max_seq_length (dupe_factor 3) and
   scores the final model on them with `bert evaluate`'s code: dynamic masking at 15% whatever rate the run
   trained at (seed 0), so rows that differ in masking rate are compared on the same kind of masks.
4. Scores the final model with `bert score`'s code on --blimp (BLiMP minimal pairs; mean over paradigms) and on
   data/sample/minimal-pairs.jsonl (the demo's 12 pairs).

Reported: steps, tokens, training seconds and tokens/s (from the run's manifest), the 1-minute load average
before and after training (the machine may be shared: compare rows at equal load, or use one thread and a fixed
number of steps), the run's own final eval (1% of its own sequences, which share text with training ones), and
the held-out and minimal-pair figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def split_corpus(src: Path, out: Path, every: int = 20) -> tuple[Path, Path]:
    """(train, held-out) files: every `every`-th document (blank-line separated) of src goes to held-out."""
    train, held = out / "train.txt", out / "heldout.txt"
    if train.exists() and held.exists():
        return train, held
    docs, cur = [], []
    for line in src.read_text(encoding="utf-8").splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append(cur)
            cur = []
    if cur:
        docs.append(cur)
    out.mkdir(parents=True, exist_ok=True)
    keep = [d for i, d in enumerate(docs) if i % every != every - 1]
    hold = [d for i, d in enumerate(docs) if i % every == every - 1]
    train.write_text("\n\n".join("\n".join(d) for d in keep) + "\n", encoding="utf-8")
    held.write_text("\n\n".join("\n".join(d) for d in hold) + "\n", encoding="utf-8")
    return train, held


def apply_set(cfg: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value)


def bert(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bertcli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-5000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="row name (and the run's subdirectory)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="dotted pipeline key=YAML value")
    parser.add_argument("--pipeline", default=str(ROOT / "configs/pipeline/demo.yaml"))
    parser.add_argument("--corpus", default=str(ROOT / "data/sample/jargon.txt"))
    parser.add_argument("--heldout", default=str(ROOT / "data/sample/jargon-heldout.txt"),
                        help="held-out documents ('': split --corpus, every 20th document held out)")
    parser.add_argument("--budget-s", type=float, default=180.0, help="pretrain time_budget_s (0: keep the config's)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the run and of the scoring")
    parser.add_argument("--blimp", default=str(ROOT.parent / "shared/data/blimp-dev.jsonl"))
    parser.add_argument("--workdir", default="/tmp/quality/demo")
    parser.add_argument("--results", default="", help="append the JSON line to this file too")
    parser.add_argument("--keep-run", action="store_true", help="keep the run directory (default: only final/)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    if args.heldout:
        train, held = Path(args.corpus), Path(args.heldout)
    else:
        train, held = split_corpus(Path(args.corpus), work / "split")
    cfg = yaml.safe_load(Path(args.pipeline).read_text(encoding="utf-8"))
    run_dir = work / args.name
    cfg["workdir"] = str(run_dir)
    cfg["input"] = [str(train)]
    if args.budget_s:
        cfg.setdefault("pretrain", {})["time_budget_s"] = args.budget_s
    for s in args.sets:
        apply_set(cfg, s)
    if run_dir.exists():
        # `bert run` skips every stage that is up to date: a row run again under its name would only re-score the
        # old model, with the old row's figures and none of the training.
        raise SystemExit(f"{run_dir} exists: choose another --name, or remove it to measure the row again")
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    bert("run", str(run_dir / "pipeline.yaml"), "--overwrite", env=env)
    pipeline_s = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    manifest = json.loads((run_dir / "pretrain" / "manifest.json").read_text())
    stats = manifest["stats"]
    max_len = int(cfg.get("pairs", {}).get("max_seq_length", 128))
    heldout_pairs = run_dir / "heldout-pairs"
    bert("pairs", "--input", str(held), "--tokenizer", str(run_dir / "tokenizer"), "--output", str(heldout_pairs),
         "--overwrite", "--set", f"max_seq_length={max_len}", "--set", "dupe_factor=3", env=env)

    from bertcli.model_dir import load_model
    from bertcli.tools.predict import evaluate
    from bertcli.tools.score import score_pairs

    loaded = load_model(run_dir / "pretrain", device="cpu", need_mlm=True, need_nsp=True)
    held_eval = evaluate(loaded, heldout_pairs, batch_size=64, progress=False, seed=0)
    _, blimp = score_pairs(loaded, args.blimp, progress=False)
    _, sample = score_pairs(loaded, ROOT / "data/sample/minimal-pairs.jsonl", progress=False)
    own = {k: v for k, v in stats.items() if k.startswith("eval_")}
    row = {
        "name": args.name,
        "sets": args.sets,
        "budget_s": args.budget_s,
        "threads": args.threads,
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(load_after, 2),
        "pipeline_s": round(pipeline_s, 1),
        "steps": stats.get("steps"),
        "tokens": stats.get("tokens"),
        "train_s": stats.get("elapsed_s"),
        "tokens_per_s": round(stats["tokens"] / stats["elapsed_s"]) if stats.get("elapsed_s") else None,
        "steps_per_s": round(stats["steps"] / stats["elapsed_s"], 3) if stats.get("elapsed_s") else None,
        "own_eval": own,
        "heldout": {k: held_eval[k] for k in ("mlm_accuracy", "nsp_accuracy", "mlm_loss", "sequences",
                                             "masked_tokens") if k in held_eval},
        "blimp_accuracy": round(blimp["accuracy"], 4),
        "sample_pairs_accuracy": round(sample["accuracy"], 4),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    line = json.dumps(row)
    print(line)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
