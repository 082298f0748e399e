"""executor ray: the same bytes as the local executor, retries of failed tasks, errors as one line, Ray optional."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bertcli.cli import app
from bertcli.errors import ExecutorError, InputError

runner = CliRunner()


def _invoke(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


@pytest.fixture(scope="module")
def many_documents(tmp_path_factory, tiny_corpus) -> Path:
    """900 short documents (4 blocks of 256: 3 shard jobs each get work), made from the tiny corpus."""
    sentences = [s for s in tiny_corpus.read_text().splitlines() if s.strip()]
    rng = np.random.default_rng(0)
    docs = ["\n".join(rng.choice(sentences, size=rng.integers(2, 6))) for _ in range(900)]
    path = tmp_path_factory.mktemp("many") / "many.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def test_without_ray_installed_executor_ray_exits_2_naming_the_extra(tmp_path, tiny_corpus, tiny_tokenizer,
                                                                      monkeypatch):
    pairs = tmp_path / "pairs"
    _invoke("pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--output", str(pairs),
            "--set", "num_workers=1")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is not installed
    out = tmp_path / "out"
    for args in (
        ("train-vocab", "--input", str(tiny_corpus), "--set", "vocab_size=500"),
        ("pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--set", "num_shards=2"),
        ("mask", "--input", str(pairs)),
    ):
        result = _invoke(*args, "--output", str(out), "--set", "executor=ray", code=2)
        assert result.output.splitlines() == [
            "error: key 'executor': ray is not installed; install the extra: pip install 'bertcli[ray]'"
        ], args
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs"], args


def test_config_refuses_a_shard_index_and_bpe_with_executor_ray(tmp_path, tiny_corpus, tiny_tokenizer):
    result = _invoke("pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--output",
                     str(tmp_path / "p"), "--set", "executor=ray", "--set", "num_shards=2", "--set", "shard_index=1",
                     code=2)
    assert "key 'shard_index'" in result.output and "executor ray runs all" in result.output
    result = _invoke("train-vocab", "--input", str(tiny_corpus), "--output", str(tmp_path / "t"), "--set",
                     "executor=ray", "--set", "algorithm=bpe", code=2)
    assert "key 'executor'" in result.output and "bpe" in result.output
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- on Ray (skipped without the bertcli[ray] extra)


def test_a_local_instance_is_started_and_shut_down(tmp_path, tiny_corpus, tiny_tokenizer):
    """ray_address unset: the command starts its own Ray instance (num_workers CPUs) and stops it. First in this
    module, before the shared instance below exists (a running instance would be used instead)."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    pairs = tmp_path / "pairs"
    _invoke("pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--output", str(pairs),
            "--set", "num_workers=1", "--set", "max_seq_length=64")
    _invoke("mask", "--input", str(pairs), "--output", str(tmp_path / "local"), "--set", "num_workers=1")
    _invoke("mask", "--input", str(pairs), "--output", str(tmp_path / "ray"), "--set", "executor=ray",
            "--set", "num_workers=2")
    assert not ray.is_initialized()
    assert _manifest(tmp_path / "ray")["content_hash"] == _manifest(tmp_path / "local")["content_hash"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 workers (CPUs) for the tests below, shut down after them."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def test_pairs_mask_and_word_counts_on_ray_equal_the_local_executor(
    ray_cluster, tmp_path, many_documents, tiny_corpus, multilingual_corpus, tiny_tokenizer
):
    def pairs(name: str, *sets: str) -> Path:
        out = tmp_path / name
        args = ["pairs", "--input", str(many_documents), "--tokenizer", str(tiny_tokenizer), "--output", str(out)]
        for s in ("max_seq_length=64", "dupe_factor=2", "num_workers=1", *sets):
            args += ["--set", s]
        _invoke(*args)
        return out

    local = pairs("local")
    on_ray = pairs("ray", "executor=ray", "num_shards=3", "max_retries=1")
    m_local, m_ray = _manifest(local), _manifest(on_ray)
    assert m_ray["content_hash"] == m_local["content_hash"] and m_ray["files"] == m_local["files"]
    assert m_ray["config_hash"] == m_local["config_hash"] and m_ray["stats"] == m_local["stats"]
    assert m_ray["num_shards"] == 1 and len(m_ray["files"]) > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "ray"]  # the parts are gone

    for name, executor in (("masked-local", "local"), ("masked-ray", "ray")):
        _invoke("mask", "--input", str(local), "--output", str(tmp_path / name), "--set", "dupe_factor=2",
                "--set", f"executor={executor}")
    assert _manifest(tmp_path / "masked-ray")["content_hash"] == _manifest(tmp_path / "masked-local")["content_hash"]

    # Word counting: many small chunks, so that the reduce's corpus order is what keeps the first-appearance order.
    from bertcli.schemas import TrainVocabConfig
    from bertcli.word_counts import count_words

    paths = [tiny_corpus, multilingual_corpus]
    local_cfg = TrainVocabConfig(input=[str(p) for p in paths], num_workers=1)
    ray_cfg = TrainVocabConfig(input=[str(p) for p in paths], executor="ray")
    assert count_words(paths, ray_cfg, chunk_chars=2000) == count_words(paths, local_cfg)
    # The tokenizer fixture was trained by the local executor on the same corpora, vocab_size and defaults.
    tokenizer = tmp_path / "tokenizer"
    _invoke("train-vocab", "--input", str(tiny_corpus), "--input", str(multilingual_corpus), "--output",
            str(tokenizer), "--set", "vocab_size=1000", "--set", "executor=ray")
    assert _manifest(tokenizer)["content_hash"] == _manifest(tiny_tokenizer)["content_hash"]


def _flaky(task: tuple[str, str, int]) -> int:
    """Fails its first attempt as `how` says (each attempt leaves a line in `log`), then doubles `value`."""
    how, log, value = task
    with open(log, "a") as f:
        f.write("attempt\n")
    first = Path(log).read_text().count("attempt") == 1
    if how == "crash" and first:
        os._exit(1)  # the worker process dies, as when the kernel kills it for memory
    if how == "oserror" and first:
        raise OSError("the shared filesystem hiccuped")
    if how == "input":
        raise InputError(f"corpus.txt:{value}: bad line", hint="fix the corpus")
    return 2 * value


def test_failed_tasks_are_retried_and_bad_input_is_not(ray_cluster, tmp_path):
    from bertcli.executors import RayExecutor

    def attempts(log: Path) -> int:
        return log.read_text().count("attempt")

    # This module is not importable on the workers (tests/ is not a package): send _flaky by value.
    this_module = sys.modules[__name__]
    ray_cluster.cloudpickle.register_pickle_by_value(this_module)
    try:
        with RayExecutor(num_workers=2, max_retries=1) as executor:
            crash, oserror = tmp_path / "crash.log", tmp_path / "oserror.log"
            assert list(executor.map(_flaky, [("crash", str(crash), 3), ("oserror", str(oserror), 4)])) == [6, 8]
            assert attempts(crash) == 2 and attempts(oserror) == 2
            bad = tmp_path / "input.log"
            with pytest.raises(InputError) as caught:  # the stage's own typed error, not retried
                list(executor.map(_flaky, [("input", str(bad), 7)]))
            assert caught.value.message == "corpus.txt:7: bad line" and caught.value.hint == "fix the corpus"
            assert attempts(bad) == 1
        with RayExecutor(num_workers=2, max_retries=0) as executor:
            log = tmp_path / "crash-no-retry.log"
            with pytest.raises(ExecutorError, match="retried up to 0 times"):
                list(executor.map(_flaky, [("crash", str(log), 1)]))
            assert attempts(log) == 1
    finally:
        ray_cluster.cloudpickle.unregister_pickle_by_value(this_module)
    assert ray_cluster.is_initialized()  # an instance the caller started is left running


def test_bad_input_in_a_part_is_one_line_and_leaves_nothing(ray_cluster, tmp_path, tiny_tokenizer):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"a good sentence .\n\nanother one .\n\xff\xfe not utf-8\n")
    out = tmp_path / "pairs"
    result = _invoke("pairs", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer), "--output", str(out),
                     "--set", "executor=ray", "--set", "num_shards=2", code=2)
    assert f"error: {corpus}:4: invalid UTF-8" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]
