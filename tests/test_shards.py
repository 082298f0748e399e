"""bertcli.shards: the one shard writer and the memory-mapped reader of pairs and masked artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from bertcli.errors import ArtifactError
from bertcli.shards import ShardedArrays, ShardWriter, token_dtype


def _sequences(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, size=int(rng.integers(1, 20))) for _ in range(n)]


def _write(out, sequences: list[np.ndarray], block_sizes: list[int], per_shard: int) -> list[str]:
    writer = ShardWriter(out, ragged={"input_ids": np.uint16}, scalar={"label": np.int8}, sequences_per_shard=per_shard)
    start = 0
    for size in block_sizes:
        block = sequences[start : start + size]
        flat = np.concatenate(block) if block else np.zeros(0, np.uint16)
        writer.add_block({"input_ids": (flat, np.array([len(s) for s in block]))},
                         {"label": np.arange(start, start + len(block)) % 2})
        start += size
    return writer.close()


def test_shards_depend_only_on_the_sequence_order_not_on_the_blocks(tmp_path):
    sequences = _sequences(103)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    names_a = _write(tmp_path / "a", sequences, [103], per_shard=25)
    names_b = _write(tmp_path / "b", sequences, [1, 7, 30, 0, 40, 25], per_shard=25)
    assert names_a == names_b == [f"shard-{i:05d}" for i in range(5)]
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
    arrays = ShardedArrays(tmp_path / "a")
    assert arrays.counts.tolist() == [25, 25, 25, 25, 3]
    assert [np.array_equal(arrays[i]["input_ids"], s) for i, s in enumerate(sequences)] == [True] * 103
    assert [int(arrays[i]["label"]) for i in range(103)] == [i % 2 for i in range(103)]


def test_read_range_crosses_shards(tmp_path):
    sequences = _sequences(60, seed=1)
    _write(tmp_path, sequences, [60], per_shard=16)
    got = ShardedArrays(tmp_path).read_range(10, 50)
    offsets = got["offsets"]
    assert len(offsets) == 41 and offsets[0] == 0
    for k in range(40):
        assert np.array_equal(got["input_ids"][offsets[k] : offsets[k + 1]], sequences[10 + k])
    assert got["label"].tolist() == [i % 2 for i in range(10, 50)]


def test_token_dtype_grows_with_the_vocabulary():
    assert token_dtype(30522) == np.uint16 and token_dtype(65536) == np.int32


def test_a_missing_or_damaged_shard_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="holds no shard"):
        ShardedArrays(tmp_path)
    _write(tmp_path, _sequences(30), [30], per_shard=10)
    (tmp_path / "shard-00001.label.npy").unlink()
    with pytest.raises(ArtifactError, match="shard-00001"):
        ShardedArrays(tmp_path)
    _write(tmp_path, _sequences(30), [30], per_shard=10)
    damaged = tmp_path / "shard-00002.input_ids.npy"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="damaged"):
        ShardedArrays(tmp_path)
