"""Untrained models saved by plain transformers code (BertForMaskedLM, BertForSequenceClassification) with the
tiny vocabulary of tests/bert_tiny.py: for checking that commands take any Hugging Face BERT, not only ours."""

from __future__ import annotations

from pathlib import Path

from bert_tiny import build_vocab


def tiny_config(tokenizer, **overrides):
    from transformers import BertConfig

    fields = dict(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(overrides)
    return BertConfig(**fields)


def save_plain(out_dir: Path, kind: str = "masked-lm", seed: int = 0, **overrides) -> Path:
    """A randomly initialised BertForMaskedLM ("masked-lm") or BertForSequenceClassification ("classifier", 2
    labels) and its BertTokenizer, written with save_pretrained."""
    import torch
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizer

    tokenizer = BertTokenizer(vocab=build_vocab())
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, **overrides)
    model = BertForMaskedLM(config) if kind == "masked-lm" else BertForSequenceClassification(config)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
