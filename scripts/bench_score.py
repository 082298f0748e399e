"""Speed of `bert score --pairs` beside the straightforward PLL computation, on BLiMP minimal pairs; prints JSON.

Ours: bertcli.tools.score (every masked copy of every sentence in one length-sorted batch stream, the MLM head only
at the masked position). Baseline: what the public MLM-scoring code built on transformers does (e.g. minicons'
MaskedLMScorer): one sentence at a time, its masked copies in one batch, a full forward of BertForPreTraining /
BertForMaskedLM with the vocabulary logits at every position, then the masked position's row. Both use the same
loaded model and threads; they alternate, and each side's best of --repeats counts.

    python scripts/bench_score.py --model runs/demo/pretrain --pairs ../shared/data/blimp-dev.jsonl
    python scripts/bench_score.py --tokenizer runs/tok --pairs ../shared/data/blimp-dev.jsonl --limit 200
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

from bertcli.model_dir import load_model  # noqa: E402
from bertcli.pll import minimal_pair_accuracy  # noqa: E402
from bertcli.tools.score import read_minimal_pairs, score_texts  # noqa: E402


def baseline_pll(model, tokenizer, texts: list[str]) -> list[float]:
    """One sentence at a time: a copy per scored token with it masked, full MLM logits (n, T, V) of every copy."""
    scores = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_special_tokens_mask=True)
            ids, special = enc["input_ids"], enc["special_tokens_mask"]
            positions = [t for t in range(len(ids)) if not special[t]]
            copies = torch.tensor([ids] * len(positions))  # (n, T)
            copies[torch.arange(len(positions)), torch.tensor(positions)] = tokenizer.mask_token_id
            out = model(input_ids=copies)
            logits = out.logits if hasattr(out, "logits") else out.prediction_logits  # (n, T, V)
            rows = logits[torch.arange(len(positions)), torch.tensor(positions)]  # (n, V)
            picked = torch.log_softmax(rows.float(), dim=-1)[torch.arange(len(positions)), torch.tensor(ids)[positions]]
            scores.append(float(picked.double().sum()))
    return scores


def build_tiny(tokenizer_dir: Path, out: Path) -> Path:
    """A randomly initialised BertForMaskedLM of BERT-tiny's shape (Google's L-2 H-128 A-2) over a tokenizer: the
    speed of scoring does not depend on the weights."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a BERT with its MLM head (a `bert pretrain` run)")
    source.add_argument("--tokenizer", type=Path, help="build a random BERT-tiny-shaped model over this tokenizer")
    parser.add_argument("--pairs", type=Path, required=True, help="minimal pairs in BLiMP's JSON-lines format")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--batch-size", type=int, default=256, help="our masked copies per forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs, group_by = read_minimal_pairs(args.pairs)
    pairs = pairs[: args.limit] if args.limit else pairs
    texts = [t for _, good, bad, _ in pairs for t in (good, bad)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny(args.tokenizer, Path(tmp) / "tiny")
        loaded = load_model(model_dir, device="cpu", need_mlm=True)
    ours_s, base_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = [r["pll"] for r in score_texts(loaded, texts, batch_size=args.batch_size, progress=False)]
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        base = baseline_pll(loaded.model, loaded.tokenizer, texts)
        base_s.append(time.perf_counter() - start)
    groups = [group for *_, group in pairs]
    accuracy = {
        name: minimal_pair_accuracy(scores[0::2], scores[1::2], groups)["accuracy"]
        for name, scores in (("ours", ours), ("baseline", base))
    }
    config = loaded.model.config
    print(json.dumps({
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "model": f"{args.model or 'random init'}: {config.num_hidden_layers} layers × {config.hidden_size}, "
                 f"vocab {config.vocab_size}",
        "pairs": len(pairs),
        "sentences": len(texts),
        "masked_copies": sum(
            m.count(0) for m in loaded.tokenizer(texts, return_special_tokens_mask=True)["special_tokens_mask"]
        ),
        "ours_s": [round(s, 3) for s in ours_s],
        "baseline_s": [round(s, 3) for s in base_s],
        "speedup": min(base_s) / min(ours_s),
        "max_abs_pll_difference": max(abs(a - b) for a, b in zip(ours, base)),
        "accuracy_mean_over_groups": accuracy,
        "group_by": group_by,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
