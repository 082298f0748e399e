"""A tiny BertForPreTraining made and trained with plain transformers code, for the predict/attention tests."""

from __future__ import annotations

import random
from pathlib import Path

# A "story" whose sentences always come in this order: NSP learns which sentence follows which, MLM learns the
# words. Every sentence is distinct enough that one masked word has one right answer.
STORY = [
    "the cat sat on the mat .",
    "the dog ran in the park .",
    "python is my favorite programming language .",
    "he got bit by a python .",
    "the sun shines over the green hills .",
    "we drink tea in the morning .",
]
# Special tokens at unusual ids ([PAD] is not 0, [MASK] is last): code that hard-codes ids fails on this model.
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def build_vocab(mask_token: str = "[MASK]") -> dict[str, int]:
    words = sorted({w for s in STORY for w in s.split()} | {"snake", "bird", "##s", "big", "small"})
    tokens = words[:5] + SPECIALS[:4] + words[5:] + [mask_token]
    return {t: i for i, t in enumerate(tokens)}


def make_tiny_bert(
    out_dir: Path,
    steps: int = 300,
    batch_size: int = 16,
    seed: int = 0,
    train: bool = True,
    mask_token: str = "[MASK]",
    lr: float = 2e-3,
) -> Path:
    """Save a 2-layer BertForPreTraining + tokenizer in out_dir (trained for `steps` steps on STORY)."""
    import torch

    # One thread: on a shared 2-core machine two busy-waiting threads run this 10× slower, not 2× faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _make(out_dir, steps, batch_size, seed, train, mask_token, lr)
    finally:
        torch.set_num_threads(threads)


def _make(out_dir: Path, steps: int, batch_size: int, seed: int, train: bool, mask_token: str, lr: float) -> Path:
    import torch
    from transformers import BertConfig, BertForPreTraining, BertTokenizer

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = BertTokenizer(vocab=build_vocab(mask_token), mask_token=mask_token)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=40,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForPreTraining(config)
    if train:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        n = len(STORY)
        for _ in range(steps):
            firsts, seconds, nsp = [], [], []
            for _ in range(batch_size):
                k = rng.randrange(n)
                is_next = rng.random() < 0.5
                j = (k + 1) % n if is_next else rng.choice([j for j in range(n) if j != (k + 1) % n])
                firsts.append(STORY[k])
                seconds.append(STORY[j])
                nsp.append(0 if is_next else 1)  # transformers' convention: 0 = IsNext
            enc = tokenizer(firsts, seconds, padding=True, return_tensors="pt")
            ids = enc["input_ids"]  # (B, T)
            # Two random non-special positions per row get masked (100% [MASK]: this is a fixture, not our masker).
            candidate = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
            scores = torch.rand(ids.shape, generator=gen).masked_fill(~candidate, -1.0)
            chosen = torch.zeros_like(candidate).scatter_(1, scores.topk(2, dim=1).indices, True)
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
            enc["input_ids"] = ids.masked_fill(chosen, tokenizer.mask_token_id)
            out = model(**enc, labels=labels, next_sentence_label=torch.tensor(nsp))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
