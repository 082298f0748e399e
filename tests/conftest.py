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


# ---------------------------------------------------------------------------------------------- pretraining

@pytest.fixture(scope="session")
def masked_data(tmp_path_factory, tiny_tokenizer, tiny_corpus) -> Path:
    """A masked artifact: 160 sequences of at most 32 tokens in shards of 50 (read-only)."""
    from pretrain_fixtures import make_artifact  # imports torch: only the tests that use it pay

    return make_artifact(tmp_path_factory.mktemp("data") / "masked", tiny_tokenizer, tiny_corpus,
                         kind="masked", num_sequences=160, sequences_per_shard=50)


@pytest.fixture(scope="session")
def pairs_data(tmp_path_factory, tiny_tokenizer, tiny_corpus) -> Path:
    """A pairs artifact (dynamic masking): 120 sequences in shards of 50 (read-only)."""
    from pretrain_fixtures import make_artifact  # imports torch: only the tests that use it pay

    return make_artifact(tmp_path_factory.mktemp("data") / "pairs", tiny_tokenizer, tiny_corpus, kind="pairs",
                         num_sequences=120, sequences_per_shard=50)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, masked_data) -> Path:
    """An uninterrupted 6-step run (pretrain_fixtures.tiny_cfg) with checkpoints at steps 2 and 4, on one thread
    (read-only: copy it to modify)."""
    # heavy (torch; the stage imports it too): only the tests that use this fixture pay for it
    import torch

    from bertcli.stages import pretrain
    from pretrain_fixtures import tiny_cfg

    out = tmp_path_factory.mktemp("runs") / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pretrain, "plot_run", lambda run_dir: None)  # matplotlib costs seconds
            pretrain.run(tiny_cfg(masked_data, out))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def one_thread_no_plot(monkeypatch):
    """For tests that train: one intra-op thread (tiny matrices run faster without threading overhead, and other
    tests share the cores) and no metrics.png at the end of a run (matplotlib costs seconds; tested once)."""
    # heavy (torch; the stage imports it too): only the tests that use this fixture pay for it
    import torch

    from bertcli.stages import pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(pretrain, "plot_run", lambda run_dir: None)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine two busy-waiting threads run tiny models many times
    slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def plain_mlm(tmp_path_factory) -> Path:
    """A BertForMaskedLM saved by plain transformers code (not ours), with its tokenizer."""
    from plain_bert import save_plain

    return save_plain(tmp_path_factory.mktemp("plain") / "mlm", "masked-lm")
