"""`bert pairs` end to end: artifact layout, determinism across workers and shards, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bertcli.cli import app
from bertcli.shards import ShardedArrays
from bertcli.vocab import load_tokenizer

runner = CliRunner()


def _pairs(tmp_path: Path, corpus, tokenizer, name: str, *sets: str, code: int = 0, flags: tuple = ()):
    out = tmp_path / name
    args = ["pairs", "--input", str(corpus), "--tokenizer", str(tokenizer), "--output", str(out), *flags]
    for s in ("max_seq_length=64", "num_workers=1") + sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    return out, result


def _data_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.npy"))}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, tiny_corpus, tiny_tokenizer) -> Path:
    out, _ = _pairs(tmp_path_factory.mktemp("pairs"), tiny_corpus, tiny_tokenizer, "pairs", "dupe_factor=2")
    return out


def test_artifact_layout_and_sequences(pairs_dir, tiny_tokenizer):
    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    loaded = load_tokenizer(tiny_tokenizer)
    assert manifest["stage"] == "pairs" and manifest["special_token_ids"] == loaded.special_ids
    assert manifest["inputs"]["tokenizer"]["hash"] == loaded.hash
    assert manifest["token_dtype"] == "uint16" and (pairs_dir / "tokenizer" / "tokenizer.json").is_file()
    assert not (pairs_dir / ".scratch").exists()
    stats = manifest["stats"]
    for key in ("pairs", "tokens", "is_next_share", "forced_random_share", "truncation_rate", "short_sequence_share",
                "padding_share", "documents_skipped"):
        assert key in stats, key
    arrays = ShardedArrays(pairs_dir)
    assert arrays.num_sequences == stats["pairs"] > 100
    cls, sep, pad = loaded.special_ids["cls"], loaded.special_ids["sep"], loaded.special_ids["pad"]
    for i in range(arrays.num_sequences):
        row = arrays[i]
        ids, b = np.asarray(row["input_ids"]), int(row["type_boundary"])
        assert len(ids) <= 64 and ids.dtype == np.uint16
        assert ids[0] == cls and ids[b - 1] == sep and ids[-1] == sep and b < len(ids)
        assert (ids[1 : b - 1] != sep).all() and (ids[b:-1] != sep).all() and (ids != pad).all()
        assert int(row["next_sentence_label"]) in (0, 1)
    # token_type_ids follow from the boundary: 0 for [CLS] A [SEP], 1 for B [SEP]
    assert stats["is_next"] + stats["random_next"] == stats["pairs"]


def test_random_next_never_from_its_own_document(tmp_path, tiny_tokenizer):
    # Each document's sentences use words no other document has, so the tokens give a segment's document away.
    corpus = tmp_path / "marked.txt"
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    docs = []
    for d in range(40):
        w = words[d % 8] + " " + words[(d // 8) % 8]
        docs.append("\n".join(f"doc{d} {w} sentence {s} is here ." for s in range(5)))
    corpus.write_text("\n\n".join(docs) + "\n")
    out, _ = _pairs(tmp_path, corpus, tiny_tokenizer, "p", "dupe_factor=5", "max_seq_length=32")
    tok = load_tokenizer(tiny_tokenizer).tokenizer
    arrays = ShardedArrays(out)
    random_next = 0
    for i in range(arrays.num_sequences):
        row = arrays[i]
        ids, b = np.asarray(row["input_ids"]), int(row["type_boundary"])
        text_a = tok.decode(ids[1 : b - 1].tolist())
        text_b = tok.decode(ids[b:-1].tolist())
        doc_a = {t for t in text_a.split() if t.startswith("doc")}
        doc_b = {t for t in text_b.split() if t.startswith("doc")}
        if int(row["next_sentence_label"]) == 1:
            random_next += 1
            assert not doc_a & doc_b, (text_a, text_b)
        else:
            assert doc_a == doc_b or not doc_a or not doc_b
    assert random_next > 20


@pytest.fixture(scope="module")
def many_documents(tmp_path_factory, tiny_corpus) -> Path:
    """900 short documents (> 3 blocks of 256, so that 3 shards each get work), made from the tiny corpus."""
    sentences = [s for s in tiny_corpus.read_text().splitlines() if s.strip()]
    rng = np.random.default_rng(0)
    docs = ["\n".join(rng.choice(sentences, size=rng.integers(2, 6))) for _ in range(900)]
    path = tmp_path_factory.mktemp("many") / "many.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def test_same_output_for_any_worker_count_and_for_merged_shards(tmp_path, many_documents, tiny_tokenizer):
    one, _ = _pairs(tmp_path, many_documents, tiny_tokenizer, "one", "dupe_factor=2")
    two, _ = _pairs(tmp_path, many_documents, tiny_tokenizer, "two", "dupe_factor=2", "num_workers=2")
    reference = _data_files(one)
    assert _data_files(two) == reference
    pairs_dir = one
    parts = []
    for k in range(3):
        part, _ = _pairs(tmp_path, many_documents, tiny_tokenizer, f"part{k}", "dupe_factor=2",
                         flags=("--num-shards", "3", "--shard-index", str(k)))
        parts.append(part)
    merged = tmp_path / "merged"
    args = ["pairs", "--output", str(merged)]
    for part in reversed(parts):  # order given does not matter: shard_index decides
        args += ["--input", str(part)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _data_files(merged) == reference
    m1 = json.loads((pairs_dir / "manifest.json").read_text())
    m2 = json.loads((merged / "manifest.json").read_text())
    assert m1["stats"] == m2["stats"] and m1["content_hash"] == m2["content_hash"]
    assert m1["config_hash"] == m2["config_hash"]
    # A part made from another corpus (or another config) is refused.
    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text(many_documents.read_text().replace(".", "!", 1))
    odd, _ = _pairs(tmp_path, other_corpus, tiny_tokenizer, "odd", "dupe_factor=2",
                    flags=("--num-shards", "3", "--shard-index", "0"))
    result = runner.invoke(app, ["pairs", "--input", str(odd), "--input", str(parts[1]), "--input", str(parts[2]),
                                 "--output", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "another corpus" in result.output
    # An incomplete set of parts is refused.
    result = runner.invoke(app, ["pairs", "--input", str(parts[0]), "--input", str(parts[1]), "--output",
                                 str(tmp_path / "bad")])
    assert result.exit_code == 2 and "shards" in result.output and not (tmp_path / "bad").exists()


def test_nsp_false_packs_single_segments(tmp_path, tiny_corpus, tiny_tokenizer):
    out, _ = _pairs(tmp_path, tiny_corpus, tiny_tokenizer, "packed", "nsp=false")
    arrays = ShardedArrays(out)
    lengths = arrays.lengths()
    assert (arrays.column("next_sentence_label") == -1).all()
    assert np.array_equal(arrays.column("type_boundary"), lengths)
    assert lengths.max() == 64 and np.mean(lengths == 64) > 0.8  # full-length sequences (last of a block shorter)


def test_counted_not_errors(tmp_path, tiny_tokenizer):
    corpus = tmp_path / "odd.txt"
    long_sentence = " ".join(["word"] * 300)
    corpus.write_text(f"one lonely sentence .\n\nfirst of two .\nsecond of two .\n\n{long_sentence}\nshort .\n\n"
                      "a .\nb .\nc .\n")
    out, _ = _pairs(tmp_path, corpus, tiny_tokenizer, "p")
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["single_sentence_documents"] == 1 and stats["long_sentences"] == 1 and stats["documents"] == 4
    assert stats["truncated_pairs"] >= 1
    # document-per-line: empty lines are skipped and counted, not an error
    doc_lines = tmp_path / "docs.txt"
    doc_lines.write_text("First sentence here. Second one there.\n\n\nAnother document. With two sentences.\n")
    out, _ = _pairs(tmp_path, doc_lines, tiny_tokenizer, "d", "layout=document-per-line")
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["documents"] == 2 and stats["corpus"]["empty_documents"] == 2


def _leftovers(tmp_path: Path, name: str) -> list[str]:
    return [p.name for p in tmp_path.iterdir() if p.name.startswith((name, f".{name}"))]


@pytest.mark.parametrize(
    "setup, sets, message",
    [
        ("no-tokenizer", (), "does not exist"),
        ("not-a-tokenizer", (), "not a tokenizer"),
        ("single-document", (), "single document"),
        ("ok", ("max_seq_length=7",), "max_seq_length"),
        ("ok", ("max_seq_length=4096",), "max_seq_length"),
        ("ok", ("nsp=false", "dupe_factor=3"), "dupe_factor"),
    ],
)
def test_bad_input_exit_2_nothing_left_behind(tmp_path, tiny_corpus, tiny_tokenizer, setup, sets, message):
    corpus, tokenizer = tiny_corpus, tiny_tokenizer
    if setup == "no-tokenizer":
        tokenizer = tmp_path / "missing"
    elif setup == "not-a-tokenizer":
        tokenizer = tmp_path / "empty"
        tokenizer.mkdir()
    elif setup == "single-document":
        corpus = tmp_path / "one.txt"
        corpus.write_text("only one document .\nwith two sentences .\n")
    out, result = _pairs(tmp_path, corpus, tokenizer, "out", *sets, code=2)
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    assert _leftovers(tmp_path, "out") == []


def test_interrupted_run_leaves_nothing_a_later_stage_accepts(tmp_path, tiny_corpus, tiny_tokenizer):
    # A killed run leaves only its temp directory (named after a dead pid): no stage accepts it, a rerun cleans it.
    stale = tmp_path / ".out.tmp-999999999"
    stale.mkdir()
    (stale / "shard-00000.input_ids.npy").write_bytes(b"partial")
    result = runner.invoke(app, ["mask", "--input", str(stale), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "manifest" in result.output
    half = tmp_path / "half"  # an artifact directory without manifest.json
    half.mkdir()
    (half / "config.yaml").write_text("seed: 1\n")
    result = runner.invoke(app, ["mask", "--input", str(half), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "did not finish" in result.output
    out, _ = _pairs(tmp_path, tiny_corpus, tiny_tokenizer, "out")
    assert (out / "manifest.json").is_file() and not stale.exists()
    _, result = _pairs(tmp_path, tiny_corpus, tiny_tokenizer, "out", code=2)  # exists: refused without --overwrite
    assert "--overwrite" in result.output


def test_inspect_shows_segments_and_json_stats(pairs_dir):
    result = runner.invoke(app, ["inspect", str(pairs_dir), "--examples", "2"])
    assert result.exit_code == 0, result.output
    assert "segment A (type 0): [CLS]" in result.output and "segment B (type 1)" in result.output
    assert "next_sentence_label" in result.output
    result = runner.invoke(app, ["inspect", str(pairs_dir), "--json"])
    stats = json.loads(result.output)
    assert stats == json.loads((pairs_dir / "manifest.json").read_text())["stats"]
    assert os.path.isdir(pairs_dir)


def test_shard_size_changes_files_not_rows(tmp_path, tiny_corpus, tiny_tokenizer, pairs_dir):
    small, _ = _pairs(tmp_path, tiny_corpus, tiny_tokenizer, "small", "dupe_factor=2", "sequences_per_shard=37")
    a, b = ShardedArrays(small), ShardedArrays(pairs_dir)
    assert len(a.shard_names) > 1 and set(a.counts[:-1].tolist()) == {37}
    assert a.num_sequences == b.num_sequences
    assert np.array_equal(a.lengths(), b.lengths())
    assert np.array_equal(a.column("type_boundary"), b.column("type_boundary"))
    assert np.array_equal(a.column("next_sentence_label"), b.column("next_sentence_label"))
    assert all(np.array_equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(0, a.num_sequences, 7))
