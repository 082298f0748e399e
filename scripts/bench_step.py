"""Time one pretraining step of BERT-tiny on CPU with and without the CPU fast paths; prints JSON.

    python scripts/bench_step.py [--vocab 30522 --batch 32 --length 112 --masked 500 --threads 2]

A synthetic batch shaped like the documented benchmark's (batch 32, ~112 tokens, ~500 masked positions, vocabulary
30,522), the same model and seed for every variant, measured in alternating rounds in one process (best round
each, so other jobs on the machine hurt every variant alike):

- stock: F.cross_entropy on the masked positions' logits, foreach AdamW (what the stage did before);
- fused_loss: the fused masked-LM cross-entropy (`model._MaskedLMCrossEntropy`), foreach AdamW;
- fused_loss_and_adamw: the fused cross-entropy and fused AdamW (what `bert pretrain` runs on CPU);
- bf16_autocast: that step under bf16 autocast on the CPU (`precision: bf16`; `auto` stays fp32 on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 instruction sets as Linux lists them (empty elsewhere): without one, bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=112)
    parser.add_argument("--masked", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    args = parser.parse_args()

    import torch

    import bertcli.model as model  # the module: its loss switch is patched per variant

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    b, t, v = args.batch, args.length, args.vocab
    batch = model.PretrainingBatch.from_flat_positions(
        input_ids=torch.randint(5, v, (b, t), generator=gen),
        token_type_ids=torch.zeros(b, t, dtype=torch.long),
        attention_mask=torch.ones(b, t, dtype=torch.long),
        masked_positions=torch.sort(torch.randperm(b * t, generator=gen)[: args.masked]).values,
        masked_labels=torch.randint(5, v, (args.masked,), generator=gen),
        next_sentence_label=torch.randint(0, 2, (b,), generator=gen),
    )
    bert = model.build_model(model.build_bert_config("tiny", {}, v, 0), seed=0)
    optimizers = {False: model.build_optimizer(bert, 1e-4, 0.01),
                  True: model.build_optimizer(bert, 1e-4, 0.01, fused=True)}
    fused_loss = model._use_fused_cross_entropy
    variants = {"stock": (False, False, False), "fused_loss": (True, False, False),
                "fused_loss_and_adamw": (True, True, False), "bf16_autocast": (True, True, True)}

    def step(optimizer, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.pretraining_loss(bert, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bert.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (loss_fused, adamw_fused, bf16) in variants.items():
            model._use_fused_cross_entropy = fused_loss if loss_fused else (lambda hidden: False)
            optimizer = optimizers[adamw_fused]
            step(optimizer, bf16)  # warm-up: allocator, first-call costs
            start = time.perf_counter()
            for _ in range(args.steps):
                step(optimizer, bf16)
            seconds[name].append((time.perf_counter() - start) / args.steps)
    model._use_fused_cross_entropy = fused_loss
    best = {name: min(v) for name, v in seconds.items()}
    print(json.dumps({
        "settings": vars(args),
        "torch": torch.__version__,
        "cpu_bf16_units": cpu_bf16_units(),
        "s_per_step_best": best,
        "speedup_over_stock": {name: best["stock"] / s for name, s in best.items()},
        "s_per_step_rounds": seconds,
    }, indent=2))


if __name__ == "__main__":
    main()
