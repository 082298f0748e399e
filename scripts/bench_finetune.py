"""Does pretraining help? `bert finetune` from a pretrained BERT beside the same architecture from random weights,
with the same fine-tuning config and budget (median over seeds); prints JSON.

    python scripts/bench_finetune.py --model runs/demo/pretrain --train ../shared/data/acceptability-train.tsv \\
        --dev ../shared/data/acceptability-dev.tsv --set max_epochs=3 --set learning_rate=1e-3 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertcli.config import load_config  # noqa: E402
from bertcli.model_dir import resolve_model_dir  # noqa: E402
from bertcli.schemas import FinetuneConfig  # noqa: E402
from bertcli.stages import finetune  # noqa: E402


def random_twin(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """The same architecture and tokenizer with freshly initialised weights (BertForPreTraining's own init)."""
    from transformers import AutoConfig, AutoTokenizer, BertForPreTraining

    torch.manual_seed(seed)
    BertForPreTraining(AutoConfig.from_pretrained(model_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a pretrained BERT (a `bert pretrain` run)")
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="finetune config (default: the schema's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="finetune config key=value")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        starts = {"pretrained": model_dir, "random_init": random_twin(model_dir, Path(tmp) / "random")}
        for name, start in starts.items():
            cfg = load_config(FinetuneConfig, args.config, args.overrides, {
                "model": str(start), "train": str(args.train), "dev": str(args.dev), "seeds": args.seeds,
                "output": str(Path(tmp) / f"out-{name}")})
            begin = time.perf_counter()
            stats = finetune.run(cfg)["stats"]
            results[name] = {
                **{k: stats[k] for k in ("dev_accuracy", "dev_macro_f1", "dev_mcc")},
                "per_seed_dev_accuracy": [s["dev_accuracy"] for s in stats["seeds"]],
                "per_seed_dev_mcc": [s["dev_mcc"] for s in stats["seeds"]],
                "wall_s": round(time.perf_counter() - begin, 1),
            }
    print(json.dumps({
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "model": str(model_dir),
        "train": str(args.train),
        "dev": str(args.dev),
        "config": {"seeds": args.seeds, "overrides": args.overrides},
        "medians_over_seeds": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
