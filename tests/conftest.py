"""Shared fixtures: small shipped corpora and a tokenizer trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_corpus() -> Path:
    """~60 KB of the Jargon File (public domain), sentence-per-line, blank line between documents."""
    return DATA / "en_tiny.txt"


@pytest.fixture(scope="session")
def multilingual_corpus() -> Path:
    """A few Korean, Japanese, Chinese and accented-Latin sentences."""
    return DATA / "multilingual.txt"


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, tiny_corpus, multilingual_corpus) -> Path:
    """A 1,000-token vocabulary trained by `bert train-vocab` on the tiny corpora (read-only: copy to modify)."""
    from bertcli.schemas import TrainVocabConfig
    from bertcli.stages import train_vocab

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    cfg = TrainVocabConfig(input=[str(tiny_corpus), str(multilingual_corpus)], output=str(out), vocab_size=1000)
    train_vocab.run(cfg)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BertForPreTraining + tokenizer made and trained (seconds) with plain transformers code, special
    tokens at unusual ids (see tests/bert_tiny.py). Read-only: copy it to modify."""
    from bert_tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")
