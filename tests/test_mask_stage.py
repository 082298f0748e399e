"""`bert mask` end to end: what changed and what did not, determinism across workers, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bertcli.cli import app
from bertcli.shards import ShardedArrays
from bertcli.vocab import load_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, tiny_corpus, tiny_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "pairs"
    result = runner.invoke(app, ["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
                                 "--output", str(out), "--set", "num_workers=1", "--set", "max_seq_length=64"])
    assert result.exit_code == 0, result.output
    return out


def _mask(pairs: Path, out: Path, *sets: str, code: int = 0):
    args = ["mask", "--input", str(pairs), "--output", str(out)]
    for s in ("num_workers=1",) + sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    return result


def test_masked_artifact_changes_only_selected_positions(tmp_path, pairs_dir, tiny_tokenizer):
    out = tmp_path / "masked"
    _mask(pairs_dir, out, "dupe_factor=2")
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["stats"]
    for key in ("sequences", "tokens", "selected", "selected_special", "replaced_mask", "replaced_random", "kept",
                "is_next", "is_random_next"):
        assert key in stats, key
    assert stats["selected_special"] == 0 and stats["random_special"] == 0
    assert manifest["stage"] == "masked" and manifest["inputs"]["pairs"]["content_hash"]
    pairs = ShardedArrays(pairs_dir)
    masked = ShardedArrays(out)
    assert masked.num_sequences == 2 * pairs.num_sequences == stats["sequences"]
    assert stats["is_next"] + stats["is_random_next"] == stats["sequences"]
    special = set(load_tokenizer(tiny_tokenizer).special_ids.values())
    mask_id = load_tokenizer(tiny_tokenizer).special_ids["mask"]
    counted = {"mask": 0, "other": 0}
    for i in range(masked.num_sequences):
        original = pairs[_source_index(i, pairs.num_sequences, 2)]
        row = masked[i]
        src = np.asarray(original["input_ids"])
        ids = np.asarray(row["input_ids"])
        pos = np.asarray(row["masked_positions"]).astype(np.int64)
        assert len(ids) == len(src) and np.all(np.diff(pos) > 0)
        assert np.array_equal(np.asarray(row["masked_labels"]), src[pos])
        untouched = np.ones(len(ids), bool)
        untouched[pos] = False
        assert np.array_equal(ids[untouched], src[untouched])
        assert not set(src[pos].tolist()) & special
        counted["mask"] += int((ids[pos] == mask_id).sum())
        assert int(row["type_boundary"]) == int(original["type_boundary"])
        assert int(row["next_sentence_label"]) == int(original["next_sentence_label"])
    assert counted["mask"] == stats["replaced_mask"]


def _source_index(i: int, num_pairs: int, copies: int) -> int:
    """Block-major order: block 0 copy 0, block 0 copy 1, …, block 1 copy 0, …"""
    from bertcli.stages.mask import BLOCK_SEQUENCES

    block, rest = divmod(i, BLOCK_SEQUENCES * copies)
    size = min(BLOCK_SEQUENCES, num_pairs - block * BLOCK_SEQUENCES)
    return block * BLOCK_SEQUENCES + rest % size


def test_dupe_copies_differ_and_workers_do_not_matter(tmp_path, pairs_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    _mask(pairs_dir, one, "dupe_factor=2")
    _mask(pairs_dir, two, "dupe_factor=2", "num_workers=2")
    files = sorted(p.name for p in one.glob("shard-*.npy"))
    assert files and all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    masked = ShardedArrays(one)
    n = masked.num_sequences // 2
    differ = sum(
        not np.array_equal(masked[i]["masked_positions"], masked[n + i]["masked_positions"]) for i in range(50)
    )
    assert differ > 40


def test_whole_word_masking_through_the_stage(tmp_path, pairs_dir, tiny_tokenizer):
    out = tmp_path / "wwm"
    _mask(pairs_dir, out, "whole_word_mask=true")
    loaded = load_tokenizer(tiny_tokenizer)
    prefix = loaded.continuing_subword_prefix
    tok = loaded.tokenizer
    masked, pairs = ShardedArrays(out), ShardedArrays(pairs_dir)
    words_checked = 0
    for i in range(masked.num_sequences):
        src = np.asarray(pairs[i]["input_ids"])
        pos = set(np.asarray(masked[i]["masked_positions"]).astype(int).tolist())
        pieces = [tok.id_to_token(int(t)) for t in src]
        for p in range(1, len(src)):
            if pieces[p].startswith(prefix) and pieces[p - 1] not in ("[CLS]", "[SEP]"):
                assert (p in pos) == (p - 1 in pos), (i, p, pieces[p - 1 : p + 1])
                words_checked += 1
    assert words_checked > 100


@pytest.mark.parametrize(
    "sets, message",
    [
        (("masked_lm_prob=0",), "masked_lm_prob"),
        (("masked_lm_prob=1.0",), "masked_lm_prob"),
        (("max_predictions_per_seq=0",), "max_predictions_per_seq"),
        (("mask_token_prob=0.95",), "random_token_prob"),
    ],
)
def test_bad_config_exit_2(tmp_path, pairs_dir, sets, message):
    result = _mask(pairs_dir, tmp_path / "m", *sets, code=2)
    assert message in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_pairs_from_another_tokenizer_is_refused(tmp_path, pairs_dir, tiny_corpus):
    other_tok = tmp_path / "other_tok"
    result = runner.invoke(app, ["train-vocab", "--input", str(tiny_corpus), "--output", str(other_tok),
                                 "--set", "vocab_size=700"])
    assert result.exit_code == 0, result.output
    forged = tmp_path / "forged"
    shutil.copytree(pairs_dir, forged)
    shutil.rmtree(forged / "tokenizer")
    shutil.copytree(other_tok, forged / "tokenizer")
    result = _mask(forged, tmp_path / "m", code=2)
    assert "another tokenizer" in result.output and not (tmp_path / "m").exists()


def test_not_a_pairs_artifact(tmp_path, tiny_tokenizer):
    result = _mask(tiny_tokenizer, tmp_path / "m", code=2)
    assert "'train-vocab' artifact" in result.output and "bert pairs" in result.output
    result = _mask(tmp_path / "nowhere", tmp_path / "m", code=2)
    assert "does not exist" in result.output


def test_inspect_shows_masks_and_labels(tmp_path, pairs_dir):
    out = tmp_path / "masked"
    _mask(pairs_dir, out)
    result = runner.invoke(app, ["inspect", str(out), "-n", "3"])
    assert result.exit_code == 0, result.output
    assert "[MASK]→" in result.output and "masked:" in result.output and "segment B (type 1)" in result.output


def test_masked_shards_follow_the_pairs_shard_size(tmp_path, tiny_corpus, tiny_tokenizer):
    # The pairs config's sequences_per_shard was once ignored by `bert mask` (it always wrote 65,536-sequence shards).
    pairs = tmp_path / "pairs"
    result = runner.invoke(app, ["pairs", "--input", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer),
                                 "--output", str(pairs), "--set", "num_workers=1", "--set", "max_seq_length=64",
                                 "--set", "sequences_per_shard=40"])
    assert result.exit_code == 0, result.output
    assert json.loads((pairs / "manifest.json").read_text())["sequences_per_shard"] == 40
    out = tmp_path / "masked"
    _mask(pairs, out, "dupe_factor=2")
    source, masked = ShardedArrays(pairs), ShardedArrays(out)
    assert len(source.shards) > 2
    assert masked.counts[:-1].tolist() == [40] * (len(masked.shards) - 1)
    assert masked.num_sequences == 2 * source.num_sequences
    assert json.loads((out / "manifest.json").read_text())["sequences_per_shard"] == 40
