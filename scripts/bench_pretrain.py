"""Benchmark `bert pretrain` against a plain transformers training loop on the same data; prints JSON.

    python scripts/bench_pretrain.py --masked runs/masked128 --pairs runs/pairs128 [--budget-s 300]

Both sides: BERT-tiny (2 layers, hidden 128) with the data's vocabulary (30,522 for the documented run), batch 32,
linear warmup over --warmup-fraction of the steps that side makes in the budget (estimated from its throughput
rounds), then linear decay over the same wall-clock budget, gradient clipping 1.0, seed 0, and the same number of
CPU threads. Each side is trained once per peak learning rate of --lrs (the same grid for both), and each side's
best run is compared, so neither is held back by a learning rate that suits only the other; every pair is reported.
Each run is a fresh subprocess, one after the other.

- ours: `bertcli.stages.pretrain.run` on the masked artifact (static masks), time_budget_s = budget, with the
  stage's defaults otherwise (mlm_bias_init: unigram; `--ablate-bias` adds a run of ours with zero bias at its best
  learning rate, to show what the initialisation adds beside the speed).
- baseline, as a user would write it: BertForPreTraining + DataCollatorForLanguageModeling (mlm_probability
  0.15, padding to the longest in the batch) + torch.optim.AdamW in a plain loop over the pairs artifact's
  sequences (shuffled), for the same wall-clock budget.

Throughput is measured first in --speed-rounds short runs of each side, alternating, and the best of each
side's rounds is compared (other jobs sharing the machine make a single run noisy); the full-budget runs' own
averages are reported too. Both models are then evaluated by the same code on the same held-out sequences
(never trained on by either: the pretrain stage's held-out hash, eval_fraction 0.01) with the masked artifact's
static masks: MLM accuracy on masked positions, NSP accuracy. tokens/s counts non-padding tokens only.

`--throughput-only` runs just the alternating throughput rounds of both sides and reports the best-of ratio
(minutes, no accuracy runs): the check that a change did not slow the CPU path.

`--speed-only --preset base --device cuda --precision bf16` measures our training throughput alone (sequences/s,
tokens/s, model TFLOP/s and MFU as `bert pretrain` reports them live; --peak-tflops overrides the GPU table) for
the GPU figures (scripts/gpu_check.sh measures the same and more).

`--score-pairs blimp-dev.jsonl --curve-points 5` adds the quality curve: each side saves its model at 5 evenly
spaced moments of its budget (ours by steps, from its throughput rounds; the baseline by its clock, the saving
not counted), and after training every saved model, and the initial weights (t = 0), is scored by the project's
code on the same held-out sequences (MLM and NSP accuracy) and on the minimal pairs (`bert score --pairs`'s
accuracy: the mean over paradigms). `--suspect NAME:key=value;key=value` adds a run of ours with those
PretrainConfig keys changed (`model.hidden_dropout_prob=0`, `mlm_bias_init=zero`, `data=PAIRS` for dynamic
masking or for an MLM-only pairs artifact, `masked_lm_prob=0.4`, `learning_rate=0.001`), at the best learning
rate of ours, scored at t = 0 and at the end: the ablations of "why does more MLM accuracy not buy grammar".

`--train-device cuda` trains both sides on the GPU (ours under `precision: auto`, the plain loop in fp32 as a user
writes it); evaluation and scoring stay on the CPU, so both are judged by the same code.

`--memory-scale 10` instead measures peak anonymous memory (RssAnon) of a short `bert pretrain` run on the
masked artifact and on one 10× its size (the shards repeated as symlinks), to show it does not grow with the data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PeakAnon:
    """Samples this process's RssAnon (anonymous resident memory, memory-mapped file pages excluded)."""

    def __init__(self, interval_s: float = 0.1):
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _read(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._read())
            time.sleep(interval_s)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._read())


def held_out(masked: Path, count: int):
    from bertcli.batching import EpochPlan
    from bertcli.shards import ShardedArrays

    arrays = ShardedArrays(masked)
    plan = EpochPlan(arrays, seed=0, batch_size=1, eval_fraction=0.01)
    return arrays, plan.held_out_indices(count)


def evaluate(model, masked: Path, count: int, batch_size: int = 64) -> dict:
    """MLM accuracy on masked positions and NSP accuracy on `count` held-out sequences (static masks)."""
    import torch

    from bertcli.batching import Collator, to_model_batch
    from bertcli.model import NUM_STATS, STAT_MLM_COUNT, pretraining_loss, summarize_stats
    from bertcli.vocab import load_tokenizer

    arrays, indices = held_out(masked, count)
    tok = load_tokenizer(masked / "tokenizer")
    collate = Collator(pad_id=tok.special_ids["pad"], has_nsp=True, dynamic=False)
    rows = [arrays[int(i)] for i in indices]
    rows.sort(key=lambda r: len(r["input_ids"]))
    stats = torch.zeros(NUM_STATS, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = to_model_batch(collate(rows[start : start + batch_size]), torch.device("cpu"))
            stats += pretraining_loss(model, batch)[1]
    out = summarize_stats(stats)
    out["sequences"] = len(rows)
    out["masked_tokens"] = int(stats[STAT_MLM_COUNT])
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


def score_model(model_dir: Path, args, elapsed_s: float, step: int) -> dict:
    """One point of the quality curve: held-out MLM/NSP accuracy and minimal-pair accuracy of a saved model."""
    from transformers import BertForPreTraining

    from bertcli.model_dir import load_model
    from bertcli.tools.score import score_pairs

    model = BertForPreTraining.from_pretrained(model_dir)
    ev = evaluate(model, Path(args.masked), args.eval_sequences)
    _, pairs = score_pairs(load_model(model_dir, device="cpu", need_mlm=True), args.score_pairs, progress=False)
    return {"elapsed_s": round(elapsed_s, 1), "step": step, "mlm_accuracy": ev["mlm_accuracy"],
            "nsp_accuracy": ev.get("nsp_accuracy"), "pairs_accuracy": round(pairs["accuracy"], 4)}


def parse_sets(items: list[str]) -> dict:
    import yaml

    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_ours(args) -> dict:
    import torch
    from transformers import BertForPreTraining

    from bertcli.batching import EpochPlan
    from bertcli.schemas import ModelConfig, PretrainConfig
    from bertcli.shards import ShardedArrays
    from bertcli.stages import pretrain

    torch.set_num_threads(args.threads)
    out = Path(args.workdir) / args.run_name
    shutil.rmtree(out, ignore_errors=True)
    sets = parse_sets(args.ours_set)
    model_sets = {k.split(".", 1)[1]: sets.pop(k) for k in list(sets) if k.startswith("model.")}
    values = dict(
        data=str(args.masked), output=str(out), model=ModelConfig(preset="tiny", **model_sets), max_steps=10**9,
        time_budget_s=args.budget_s, batch_size=args.batch_size, micro_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup_steps, eval_every=0, eval_batches=1,
        save_every=args.save_every, keep_checkpoints=1000, log_every=5, eval_fraction=0.01, seed=0,
        # on a GPU, what `bert pretrain` picks there (bf16 autocast where native); the plain loop stays fp32, as
        # a user writes it
        precision="auto" if args.train_device == "cuda" else "fp32", device=args.train_device,
        mlm_bias_init=args.mlm_bias_init, num_threads=args.threads,
    )
    values.update(sets)
    cfg = PretrainConfig(**values)
    with PeakAnon() as mem:
        manifest = pretrain.run(cfg)
    stats = manifest["stats"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "tokens_per_s" in r]
    # steady state: every log interval but the first (which holds one-off start-up costs)
    spans = [(r["tokens_per_s"] * (r["elapsed_s"] - p["elapsed_s"]), r["elapsed_s"] - p["elapsed_s"])
             for p, r in zip(records, records[1:])]
    steady = sum(t for t, _ in spans) / sum(d for _, d in spans) if spans else stats["tokens"] / stats["elapsed_s"]
    if not args.eval_sequences:
        return {"steps": stats["steps"], "tokens_per_s": stats["tokens"] / stats["elapsed_s"],
                "steady_tokens_per_s": steady, "steps_per_s": stats["steps"] / stats["elapsed_s"]}
    model = BertForPreTraining.from_pretrained(out / "final")
    steps = stats["steps"]
    curve = ours_curve(cfg, out, args) if args.score_pairs else None
    plan = EpochPlan(ShardedArrays(args.masked), 0, args.batch_size, 0.01)
    padded = real = 0
    for b in range(min(steps, plan.batches_per_epoch(0))):
        lengths = [len(plan.arrays[int(i)]["input_ids"]) for i in plan.batch(0, b)]
        padded += max(lengths) * len(lengths)
        real += sum(lengths)
    return {
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "mlm_bias_init": args.mlm_bias_init,
        "steps": steps,
        "train_s": stats["elapsed_s"],
        "tokens": stats["tokens"],
        "tokens_per_s": stats["tokens"] / stats["elapsed_s"],
        "steady_tokens_per_s": steady,
        "s_per_step": stats["elapsed_s"] / steps,
        "padding_share": 1 - real / padded if padded else 0.0,
        "peak_rss_anon_mb": mem.peak_kb / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval": evaluate(model, Path(args.masked), args.eval_sequences),
        "sets": args.ours_set,
        **({"curve": curve} if curve else {}),
    }


def ours_curve(cfg, out: Path, args) -> list[dict]:
    """Score the initial weights (rebuilt from the seed, unigram bias included), every step checkpoint and final/."""
    from bertcli.artifacts import load_data
    from bertcli.batching import EpochPlan
    from bertcli.stages.pretrain import build_pretraining_model, set_unigram_output_bias
    from bertcli.vocab import copy_tokenizer_files

    data = load_data(cfg.data)
    masking = data.tokenizer.masking_spec(
        masked_lm_prob=cfg.masked_lm_prob, max_predictions_per_seq=cfg.max_predictions_per_seq,
        whole_word_mask=cfg.whole_word_mask,
    ) if data.kind == "pairs" else None
    plan = EpochPlan(data.arrays, cfg.seed, cfg.batch_size, cfg.eval_fraction)
    initial = build_pretraining_model(cfg, data, plan, masking, None)
    if cfg.mlm_bias_init == "unigram" and not cfg.init_from:
        set_unigram_output_bias(initial, data, plan, masking, None)
    init_dir = out / "initial"
    initial.save_pretrained(init_dir)
    copy_tokenizer_files(data.tokenizer_dir, init_dir)
    points = [score_model(init_dir, args, 0.0, 0)]
    for d in sorted(out.glob("step-*")) + [out / "final"]:
        state = json.loads((d / "training_state" / "state.json").read_text())["state"]
        points.append(score_model(d, args, state["elapsed_s"], state["step"]))
    return points


def run_baseline(args) -> dict:
    """The loop a user writes with transformers 5 (no Trainer: it needs accelerate)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining, DataCollatorForLanguageModeling

    from bertcli.batching import held_out_mask
    from bertcli.model import lr_multiplier
    from bertcli.shards import ShardedArrays

    torch.set_num_threads(args.threads)
    pairs = ShardedArrays(args.pairs)
    tokenizer = AutoTokenizer.from_pretrained(Path(args.pairs) / "tokenizer")
    all_idx = np.arange(pairs.num_sequences)
    train_idx = all_idx[~held_out_mask(all_idx, 0.01)]

    class PairsDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(train_idx)

        def __getitem__(self, i):
            row = pairs[int(train_idx[i])]
            ids = np.asarray(row["input_ids"], dtype=np.int64)
            types = (np.arange(len(ids)) >= int(row["type_boundary"])).astype(np.int64)
            return {"input_ids": ids.tolist(), "token_type_ids": types.tolist(),
                    "next_sentence_label": int(row["next_sentence_label"])}

    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(PairsDataset(), batch_size=args.batch_size, shuffle=True,
                                         collate_fn=collator, drop_last=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, pad_token_id=tokenizer.pad_token_id)
    device = torch.device(args.train_device)
    model = BertForPreTraining(config).to(device)
    saves = []  # (dir, elapsed, step) of the curve's points
    curve_dir = Path(args.workdir) / "baseline-curve"
    shutil.rmtree(curve_dir, ignore_errors=True)

    def save_point(elapsed: float) -> None:
        d = curve_dir / f"t{len(saves):02d}"
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        saves.append((d, elapsed, steps))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = tokens = positions = 0
    next_save = float("inf")
    if args.score_pairs and args.curve_every_s:
        save_point(0.0)
        next_save = args.curve_every_s
    warmup_progress = 0.0
    steady_start = steady_tokens = None
    with PeakAnon() as mem:
        start = time.perf_counter()
        done = False
        while not done:
            for batch in loader:
                elapsed = time.perf_counter() - start
                if elapsed >= next_save and elapsed < args.budget_s:
                    t0 = time.perf_counter()
                    save_point(elapsed)
                    start += time.perf_counter() - t0  # saving is not training time
                    next_save += args.curve_every_s
                if elapsed >= args.budget_s:
                    done = True
                    break
                # same schedule as ours: linear warmup, then linear decay over the wall-clock budget
                if steps == args.warmup_steps:  # as the stage does: decay spans exactly the rest of the budget
                    warmup_progress = elapsed / args.budget_s
                lr = args.lr * lr_multiplier(steps, elapsed / args.budget_s, args.warmup_steps, warmup_progress,
                                               "linear")
                for group in optimizer.param_groups:
                    group["lr"] = lr
                tokens += int(batch["attention_mask"].sum())  # counted on the host, before the copy
                positions += batch["attention_mask"].numel()
                out = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
                steps += 1
                if steps == 2:  # steady state starts after the first steps' one-off costs
                    steady_start, steady_tokens = time.perf_counter(), tokens
        if device.type == "cuda":
            torch.cuda.synchronize()  # the budget's last steps are finished before the clock stops
        train_s = time.perf_counter() - start
    steady = ((tokens - steady_tokens) / (time.perf_counter() - steady_start)
              if steady_start is not None and steps > 2 else tokens / train_s)
    if not args.eval_sequences:
        return {"steps": steps, "tokens_per_s": tokens / train_s, "steady_tokens_per_s": steady,
                "steps_per_s": steps / train_s}
    model.to("cpu")  # evaluated and scored by the same CPU code as ours
    return {
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "steps": steps,
        "train_s": train_s,
        "tokens": tokens,
        "tokens_per_s": tokens / train_s,
        "steady_tokens_per_s": steady,
        "s_per_step": train_s / max(steps, 1),
        "padding_share": 1 - tokens / positions if positions else 0.0,
        "peak_rss_anon_mb": mem.peak_kb / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval": evaluate(model, Path(args.masked), args.eval_sequences),
        **({"curve": baseline_curve(model, tokenizer, saves, steps, train_s, args)} if args.score_pairs else {}),
    }


def baseline_curve(model, tokenizer, saves: list, steps: int, train_s: float, args) -> list[dict]:
    final = Path(args.workdir) / "baseline-curve" / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return [score_model(d, args, elapsed, step) for d, elapsed, step in [*saves, (final, train_s, steps)]]


def run_memory(args) -> dict:
    """Peak RssAnon of a short run on the artifact repeated `scale` times (1 and scale, as subprocesses)."""
    from bertcli.shards import ShardedArrays

    base = Path(args.masked)
    big = Path(args.workdir) / f"masked-x{args.memory_scale}"
    if not big.exists():
        big.mkdir(parents=True)
        names = sorted({p.name.split(".")[0] for p in base.glob("shard-*.npy")})
        n = 0
        for _ in range(args.memory_scale):
            for name in names:
                for f in base.glob(f"{name}.*.npy"):
                    (big / f.name.replace(name, f"shard-{n:05d}")).symlink_to(f.resolve())
                n += 1
        shutil.copytree(base / "tokenizer", big / "tokenizer")
        shutil.copy(base / "config.yaml", big / "config.yaml")
        shutil.copy(base / "manifest.json", big / "manifest.json")
    result = {}
    for label, data in (("x1", base), (f"x{args.memory_scale}", big)):
        cmd = [sys.executable, __file__, "--role", "memory-child", "--masked", str(data), "--workdir",
               args.workdir, "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        child = json.loads(out.stdout.strip().splitlines()[-1])
        child["sequences"] = ShardedArrays(data).num_sequences
        child["bytes_on_disk_of_shards"] = sum(p.resolve().stat().st_size for p in data.glob("shard-*.npy"))
        result[label] = child
    scale = f"x{args.memory_scale}"
    result["peak_rss_anon_ratio"] = result[scale]["peak_rss_anon_mb"] / result["x1"]["peak_rss_anon_mb"]
    return result


def run_memory_child(args) -> dict:
    import torch

    from bertcli.schemas import ModelConfig, PretrainConfig
    from bertcli.stages import pretrain

    torch.set_num_threads(args.threads)
    out = Path(args.workdir) / "memory-run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PretrainConfig(
        data=str(args.masked), output=str(out), model=ModelConfig(preset="tiny"), max_steps=20,
        batch_size=args.batch_size, micro_batch_size=args.batch_size, warmup_steps=2, eval_every=10, eval_batches=2,
        save_every=10, log_every=5, eval_fraction=0.01, seed=0, precision="fp32",
    )
    with PeakAnon(0.02) as mem:
        pretrain.run(cfg)
    return {"peak_rss_anon_mb": mem.peak_kb / 1024}


def run_speed(args) -> dict:
    """Throughput of ours alone (e.g. BERT-base, bf16, one GPU), after skipping the first log intervals."""
    import torch

    from bertcli.schemas import ModelConfig, PretrainConfig
    from bertcli.stages import pretrain

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    out = Path(args.workdir) / "speed-run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PretrainConfig(
        data=str(args.masked), output=str(out), model=ModelConfig(preset=args.preset), max_steps=args.steps,
        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size or args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup_steps, eval_every=0, eval_batches=1, save_every=0,
        log_every=10, eval_fraction=0.01, seed=0, precision=args.precision, compile=args.compile,
        device=args.device, peak_tflops=args.peak_tflops or None,
    )
    manifest = pretrain.run(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "tokens_per_s" in r][2:] or [r for r in records if "tokens_per_s" in r]

    def mean(key: str):
        values = [r[key] for r in train if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "preset": args.preset, "device": args.device, "precision": manifest["stats"]["precision"],
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "steps": manifest["stats"]["steps"], "sequences_per_s": mean("sequences_per_s"),
        "tokens_per_s": mean("tokens_per_s"), "model_tflops_per_s": mean("model_tflops_per_s"), "mfu": mean("mfu"),
        "peak_memory_gb": mean("peak_memory_gb"),
    }


def machine() -> dict:
    import platform

    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masked", required=True, help="masked artifact (bert mask) of the pairs below")
    parser.add_argument("--pairs", help="pairs artifact (bert pairs) the masked artifact was made from")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training wall-clock budget per side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lrs", default="1e-3,2e-3", help="peak learning rates tried on both sides")
    parser.add_argument("--warmup-fraction", type=float, default=0.1,
                        help="warmup as a share of the steps a side makes in the budget")
    parser.add_argument("--ablate-bias", action="store_true", help="also run ours with mlm_bias_init zero")
    parser.add_argument("--lr", type=float, default=1e-3, help="children and --speed-only: peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=30, help="children and --speed-only: warmup")
    parser.add_argument("--mlm-bias-init", default="unigram", help="ours: the stage's mlm_bias_init")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-sequences", type=int, default=1024)
    parser.add_argument("--quiet-load", type=float, default=2.5, help="wait until the 1-min load is below this")
    parser.add_argument("--quiet-wait-s", type=float, default=0.0, help="…but at most this long per run")
    parser.add_argument("--speed-rounds", type=int, default=3, help="alternating short runs for throughput")
    parser.add_argument("--speed-budget-s", type=float, default=45.0, help="length of each throughput run")
    parser.add_argument("--workdir", default="/tmp/bench_pretrain")
    parser.add_argument("--memory-scale", type=int, default=0, help="measure peak memory on N× the data instead")
    parser.add_argument("--speed-only", action="store_true", help="only our throughput (GPU figures)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only the alternating throughput rounds of both sides and their best-of ratio")
    parser.add_argument("--preset", default="base", help="with --speed-only: model preset")
    parser.add_argument("--device", default="cuda", help="with --speed-only: cuda or cpu")
    parser.add_argument("--train-device", default="cpu", choices=["cpu", "cuda"],
                        help="the comparison's training device, both sides (evaluation and scoring stay on CPU)")
    parser.add_argument("--precision", default="bf16", help="with --speed-only: auto, fp32, bf16 or fp16")
    parser.add_argument("--micro-batch-size", type=int, default=0, help="with --speed-only (0: = batch size)")
    parser.add_argument("--steps", type=int, default=200, help="with --speed-only: optimizer steps")
    parser.add_argument("--compile", action="store_true", help="with --speed-only: torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="with --speed-only: the device's dense peak for MFU (H100 SXM bf16: 989)")
    parser.add_argument("--score-pairs", default="", help="minimal pairs (BLiMP's JSON lines) to score the models on")
    parser.add_argument("--curve-points", type=int, default=0, help="with --score-pairs: saved models per run")
    parser.add_argument("--suspect", action="append", default=[],
                        help="NAME:key=value;key=value: a further run of ours with these PretrainConfig keys")
    parser.add_argument("--ours-set", action="append", default=[], help="children: PretrainConfig key=value of ours")
    parser.add_argument("--save-every", type=int, default=0, help="children: ours' save_every (the curve)")
    parser.add_argument("--run-name", default="ours-run", help="children: ours' run directory under --workdir")
    parser.add_argument("--curve-every-s", type=float, default=0.0, help="children: the baseline's save interval")
    parser.add_argument("--role", choices=["parent", "ours", "baseline", "memory-child"], default="parent")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.role == "ours":
        print(json.dumps(run_ours(args)))
        return
    if args.role == "baseline":
        print(json.dumps(run_baseline(args)))
        return
    if args.role == "memory-child":
        print(json.dumps(run_memory_child(args)))
        return
    report = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "role"}}
    if args.speed_only:
        report["speed"] = run_speed(args)
        print(json.dumps(report, indent=2))
        return
    if args.memory_scale:
        report["memory"] = run_memory(args)
        print(json.dumps(report, indent=2))
        return
    if not args.pairs:
        parser.error("--pairs is needed for the speed/accuracy comparison")
    loads = []

    def wait_for_quiet() -> None:
        """Other jobs on a shared machine distort timings: wait (bounded) until the load average is low."""
        deadline = time.time() + args.quiet_wait_s
        while os.getloadavg()[0] > args.quiet_load and time.time() < deadline:
            time.sleep(5)

    def child(role: str, **changes) -> dict:
        wait_for_quiet()
        loads.append((role, round(os.getloadavg()[0], 2)))
        keep = ("masked", "pairs", "budget_s", "batch_size", "lr", "warmup_steps", "threads", "eval_sequences",
                "train_device",
                "workdir", "mlm_bias_init", "score_pairs", "save_every", "curve_every_s", "run_name")
        values = {k: changes.get(k, getattr(args, k)) for k in keep}
        cmd = [sys.executable, __file__, "--role", role] + [
            a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))
        ] + [a for item in changes.get("ours_set", []) for a in ("--ours-set", item)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-5000:])
            raise SystemExit(f"{role} failed")
        return json.loads(out.stdout.strip().splitlines()[-1])

    # Throughput: short runs, alternating, best of the rounds (other jobs on the machine make single runs noisy).
    rounds: dict[str, list[dict]] = {"ours": [], "baseline": []}
    for _ in range(max(args.speed_rounds, 1)):
        for role in ("ours", "baseline"):
            rounds[role].append(child(role, budget_s=args.speed_budget_s, eval_sequences=0))
    report["throughput_rounds_tokens_per_s"] = {r: [x["steady_tokens_per_s"] for x in v] for r, v in rounds.items()}
    if args.throughput_only:
        best = {role: max(report["throughput_rounds_tokens_per_s"][role]) for role in rounds}
        report["ratios"] = {"tokens_per_s_best_of_rounds": best["ours"] / best["baseline"]}
        report["machine"]["loadavg_at_end"] = os.getloadavg()
        report["machine"]["loadavg_1min_at_each_child_start"] = loads
        print(json.dumps(report, indent=2))
        return
    # Warmup: the same share of each side's own steps (a fixed count would be most of the baseline's run).
    warmup = {}
    for role, runs in rounds.items():
        steps_per_s = sorted(x["steps_per_s"] for x in runs)[len(runs) // 2]
        warmup[role] = max(1, round(args.warmup_fraction * steps_per_s * args.budget_s))
    report["warmup_steps"] = warmup
    # The quality curve: ours saves every k steps (k from its throughput), the baseline every budget/points seconds.
    curve: dict[str, dict] = {"ours": {}, "baseline": {}}
    if args.score_pairs and args.curve_points:
        ours_steps_per_s = sorted(x["steps_per_s"] for x in rounds["ours"])[len(rounds["ours"]) // 2]
        curve["ours"] = {"save_every": max(1, round(ours_steps_per_s * args.budget_s / args.curve_points))}
        curve["baseline"] = {"curve_every_s": args.budget_s / args.curve_points}
    # Accuracy: each side once per learning rate for the full budget, evaluated on the same held-out sequences.
    grid: dict[str, list[dict]] = {"ours": [], "baseline": []}
    for lr in [float(x) for x in args.lrs.split(",")]:
        for role in ("ours", "baseline"):
            grid[role].append(child(role, lr=lr, warmup_steps=warmup[role], **curve[role],
                                    **({"run_name": f"ours-lr{lr:g}"} if role == "ours" else {})))
    report["grid"] = grid
    for role in ("ours", "baseline"):
        report[role] = max(grid[role], key=lambda r: r["eval"]["mlm_accuracy"])
    if args.ablate_bias:
        report["ours_zero_bias"] = child("ours", lr=report["ours"]["lr"], warmup_steps=warmup["ours"],
                                         mlm_bias_init="zero")
    report["suspects"] = {}
    for spec in args.suspect:
        name, _, sets = spec.partition(":")
        report["suspects"][name] = child("ours", lr=report["ours"]["lr"], warmup_steps=warmup["ours"],
                                         ours_set=[x for x in sets.split(";") if x],  # scored at t = 0 and the end
                                         run_name=f"suspect-{name}")  # its own directory: every model is kept
    ours, base = report["ours"], report["baseline"]
    best = {role: max(report["throughput_rounds_tokens_per_s"][role]) for role in rounds}

    def points(a: dict, b: dict) -> float:
        return 100 * (a["eval"]["mlm_accuracy"] - b["eval"]["mlm_accuracy"])

    report["ratios"] = {
        "tokens_per_s_best_of_rounds": best["ours"] / best["baseline"],
        "tokens_per_s_full_runs": ours["tokens_per_s"] / base["tokens_per_s"],
        "eval_mlm_accuracy_points": points(ours, base),
        "eval_mlm_accuracy_points_at_each_lr": {
            str(a["lr"]): points(a, b) for a, b in zip(grid["ours"], grid["baseline"])
        },
        "peak_rss_anon": ours["peak_rss_anon_mb"] / base["peak_rss_anon_mb"],
    }
    if args.ablate_bias:
        report["ratios"]["eval_mlm_accuracy_points_zero_bias"] = points(report["ours_zero_bias"], base)
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["machine"]["loadavg_1min_at_each_child_start"] = loads
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
