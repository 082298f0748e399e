"""Input formats beyond plain text: Parquet, Arrow IPC, Hugging Face save_to_disk directories, .zst; bad files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertcli import columnar, corpus
from bertcli.cli import app
from bertcli.corpus import CorpusStats, iter_documents
from bertcli.errors import InputError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

runner = CliRunner()

DOCS = [["A one.", "A two."], ["B one."], ["C one.", "C two.", "C three."], ["서울은 수도입니다.", "北京是首都。"]]


def _documents_of(text_file: Path) -> list[list[str]]:
    """The documents of a sentence-per-line file, as our reader sees them."""
    return list(iter_documents([text_file]))


def _write_parquet(path: Path, table, **kwargs) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def _write_arrow(path: Path, table, stream: bool, max_chunksize: int | None = None) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max_chunksize)
    return path


def _write_hf_dataset(directory: Path, tables: list, split: str = "train") -> Path:
    """What datasets' save_to_disk writes: Arrow stream files, state.json naming them, dataset_info.json."""
    directory.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{len(tables):05d}.arrow" for i in range(len(tables))]
    for name, table in zip(names, tables):
        _write_arrow(directory / name, table, stream=True)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "f00d", "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}
    (directory / "state.json").write_text(json.dumps(state), encoding="utf-8")
    (directory / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
    return directory


def _zst(data: bytes, **kwargs) -> bytes:
    return zstandard.ZstdCompressor(**kwargs).compress(data)


def _text_table(docs: list[list[str]]):
    return pa.table({"id": list(range(len(docs))), "text": ["\n".join(d) for d in docs], "sentences": docs})


# ---------------------------------------------------------------- each format, read end to end

def test_parquet_string_and_list_columns(tmp_path, monkeypatch):
    path = _write_parquet(tmp_path / "c.parquet", _text_table(DOCS), row_group_size=3)
    monkeypatch.setattr(columnar, "RECORD_CHUNK_BYTES", 16)  # rows come a few at a time, across row groups
    stats = CorpusStats()
    assert list(iter_documents([path], stats=stats)) == DOCS
    text_bytes = sum(len("\n".join(d).encode()) for d in DOCS)
    assert (stats.files, stats.lines, stats.documents, stats.sentences, stats.bytes) == (1, 4, 4, 8, text_bytes)
    assert list(iter_documents([path], text_field="sentences")) == DOCS


def test_rows_split_at_line_breaks_only_or_by_sentencex(tmp_path):
    table = pa.table({"text": ["  First line. \n\n Second line. ", "", "One\u2028line\x0cstill."]})
    path = _write_parquet(tmp_path / "c.parquet", table)
    stats = CorpusStats()
    # U+2028 and form feed do not end a line in a text file, so they do not in a row either
    assert list(iter_documents([path], stats=stats)) == [["First line.", "Second line."], ["One\u2028line\x0cstill."]]
    assert stats.empty_documents == 1
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "One\u2028line\x0cstill.\nTwo."}) + "\n", encoding="utf-8")
    assert list(iter_documents([jsonl])) == [["One\u2028line\x0cstill.", "Two."]]
    per_row = _write_parquet(tmp_path / "d.parquet", pa.table({"text": ["Dr. Smith went home. He was tired!"]}))
    assert list(iter_documents([per_row], layout="document-per-line")) == [["Dr. Smith went home.", "He was tired!"]]


@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_arrow_ipc_file_and_stream(tmp_path, stream):
    path = _write_arrow(tmp_path / "c.arrow", _text_table(DOCS), stream=stream, max_chunksize=3)
    assert list(iter_documents([path])) == DOCS
    assert list(iter_documents([path], text_field="sentences")) == DOCS


def test_arrow_view_types_are_read(tmp_path):
    table = pa.table({
        "text": pa.array(["x\ny", "z"], type=pa.string_view()),
        "sentences": pa.array([["a", "b"], ["c"]], type=pa.large_list(pa.string_view())),
    })
    path = _write_arrow(tmp_path / "v.arrow", table, stream=False)
    assert list(iter_documents([path])) == [["x", "y"], ["z"]]
    assert list(iter_documents([path], text_field="sentences")) == [["a", "b"], ["c"]]


def test_hf_save_to_disk_directory_in_state_order(tmp_path):
    first, second = _text_table(DOCS[:2]), _text_table(DOCS[2:])
    dataset = _write_hf_dataset(tmp_path / "ds", [first, second])
    state = json.loads((dataset / "state.json").read_text())
    state["_data_files"].reverse()  # the order in state.json is the dataset's order, not the names' order
    (dataset / "state.json").write_text(json.dumps(state))
    (dataset / "cache-0123.arrow").write_bytes(b"not named in state.json: never read")
    assert list(iter_documents([dataset])) == DOCS[2:] + DOCS[:2]


def test_hf_dataset_dict_reads_splits_in_its_order(tmp_path):
    root = tmp_path / "dd"
    _write_hf_dataset(root / "train", [_text_table(DOCS[:1])], "train")
    _write_hf_dataset(root / "test", [_text_table(DOCS[1:2])], "test")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert list(iter_documents([root])) == DOCS[:2]
    assert list(iter_documents([root / "test"])) == DOCS[1:2]


def test_zst_text_and_jsonl_read_like_the_uncompressed_files(tmp_path):
    text = "\n\n".join("\n".join(d) for d in DOCS) + "\n"
    plain = tmp_path / "c.txt"
    plain.write_text(text, encoding="utf-8")
    compressed = tmp_path / "c.txt.zst"
    half = len(text) // 2  # two frames, one with a checksum: both as `cat a.zst b.zst` would give
    compressed.write_bytes(_zst(text[:half].encode()) + _zst(text[half:].encode(), write_checksum=True))
    plain_stats, zst_stats = CorpusStats(), CorpusStats()
    assert list(iter_documents([compressed], stats=zst_stats)) == list(iter_documents([plain], stats=plain_stats))
    assert zst_stats == CorpusStats(**{**plain_stats.__dict__, "file_names": [str(compressed)]})
    lines = "".join(json.dumps({"text": "\n".join(d)}, ensure_ascii=False) + "\n" for d in DOCS)
    jsonl = tmp_path / "c.jsonl.zst"
    jsonl.write_bytes(_zst(lines.encode()))
    assert list(iter_documents([jsonl])) == DOCS
    no_suffix = tmp_path / "corpus"  # zstd is recognised by its magic number, whatever the name
    # pzstd starts its files with a skippable frame (magic 0x184D2A50, a length, data the decoder skips)
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"pad"
    no_suffix.write_bytes(skippable + compressed.read_bytes())
    assert list(iter_documents([no_suffix])) == DOCS


def test_jsonl_record_longer_than_a_line_piece_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 4096)
    words = " ".join(f"w{i}" for i in range(3000))  # ~17 KB in one JSON string
    path = tmp_path / "long.jsonl.zst"
    path.write_bytes(_zst((json.dumps({"text": words + "\nlast."}) + "\n").encode()))
    assert list(iter_documents([path])) == [[words, "last."]]


# ---------------------------------------------------------------- a Parquet corpus makes the text corpus's artifacts

def _content_hash(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_text())["content_hash"]


def _invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def text_artifacts(tmp_path_factory, tiny_corpus):
    """train-vocab and pairs on the tiny text corpus: the artifacts every other format must reproduce."""
    work = tmp_path_factory.mktemp("text")
    _invoke("train-vocab", "--input", str(tiny_corpus), "--output", str(work / "tok"), "--set", "vocab_size=500")
    _invoke("pairs", "--input", str(tiny_corpus), "--tokenizer", str(work / "tok"), "--output", str(work / "pairs"),
            "--set", "max_seq_length=64", "--set", "num_workers=1")
    return work


def _as_format(kind: str, docs: list[list[str]], where: Path) -> Path:
    if kind == "parquet":
        return _write_parquet(where / "c.parquet", _text_table(docs), row_group_size=40)
    if kind == "parquet-sentences":
        return _write_parquet(where / "c.parquet", pa.table({"text": docs}), row_group_size=40)
    if kind == "hf-dataset":
        return _write_hf_dataset(where / "ds", [_text_table(docs[:50]), _text_table(docs[50:])])
    if kind == "txt.zst":
        path = where / "c.txt.zst"
        path.write_bytes(_zst(("\n\n".join("\n".join(d) for d in docs) + "\n").encode()))
        return path
    path = where / "c.jsonl.zst"
    path.write_bytes(_zst("".join(json.dumps({"text": "\n".join(d)}) + "\n" for d in docs).encode()))
    return path


@pytest.mark.parametrize("kind", ["parquet", "parquet-sentences", "hf-dataset", "txt.zst", "jsonl.zst"])
def test_same_corpus_in_any_format_gives_byte_identical_artifacts(tmp_path, tiny_corpus, text_artifacts, kind):
    source = _as_format(kind, _documents_of(tiny_corpus), tmp_path)
    _invoke("train-vocab", "--input", str(source), "--output", str(tmp_path / "tok"), "--set", "vocab_size=500")
    assert _content_hash(tmp_path / "tok") == _content_hash(text_artifacts / "tok")
    _invoke("pairs", "--input", str(source), "--tokenizer", str(text_artifacts / "tok"),
            "--output", str(tmp_path / "pairs"), "--set", "max_seq_length=64", "--set", "num_workers=1")
    assert _content_hash(tmp_path / "pairs") == _content_hash(text_artifacts / "pairs")
    ours = json.loads((tmp_path / "pairs" / "manifest.json").read_text())["stats"]["corpus"]
    text = json.loads((text_artifacts / "pairs" / "manifest.json").read_text())["stats"]["corpus"]
    assert (ours["documents"], ours["sentences"]) == (text["documents"], text["sentences"])


# ---------------------------------------------------------------- bad input: exit 2, one line naming file, row, field

def _error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, list[str], list[str]]]:
    """name → (file, extra --set, what the error line must name)."""
    good = _write_parquet(tmp_path / "good.parquet", _text_table(DOCS), row_group_size=2)
    nulls = _write_parquet(tmp_path / "nulls.parquet", pa.table({"text": ["a", "b", "c", None]}), row_group_size=2)
    null_sentence = _write_parquet(tmp_path / "ns.parquet", pa.table({"text": [["a"], ["b", None]]}))
    not_utf8 = pa.array([b"fine", b"bro\xffken"], type=pa.binary()).view(pa.string())
    bad_utf8 = _write_parquet(tmp_path / "utf8.parquet", pa.table({"text": not_utf8}))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-20])
    damaged = tmp_path / "damaged.parquet"
    _write_parquet(damaged, pa.table({"text": [f"sentence {i} " * 8 for i in range(4000)]}), row_group_size=1000)
    data = bytearray(damaged.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 400):
        data[i] ^= 0x5A
    damaged.write_bytes(bytes(data))
    payload = "".join(f"line {i} of the corpus\n" for i in range(20000)).encode()
    truncated = tmp_path / "cut.txt.zst"
    truncated.write_bytes(_zst(payload)[:-7])
    flipped = bytearray(_zst(payload, write_checksum=True))
    flipped[len(flipped) // 2] ^= 0xFF
    corrupt = tmp_path / "flipped.jsonl.zst"
    corrupt.write_bytes(bytes(flipped))
    stream = _write_arrow(tmp_path / "s.arrow", pa.table({"body": ["x"]}), stream=True)
    dataset = _write_hf_dataset(tmp_path / "ds", [_text_table(DOCS), _text_table(DOCS)])
    (dataset / "data-00001-of-00002.arrow").unlink()
    return {
        "missing column": (good, ["text_field=body"], ["good.parquet", "no column 'body'", "id, text, sentences"]),
        "not strings": (good, ["text_field=id"], ["good.parquet", "column 'id' is int64"]),
        "null row": (nulls, [], ["nulls.parquet", "row 3 (row group 1)", "column 'text' is null"]),
        "null sentence": (null_sentence, [], ["ns.parquet", "row 1 (row group 0)", "column 'text'", "null sentence"]),
        "invalid utf-8": (bad_utf8, [], ["utf8.parquet", "row 1 (row group 0)", "column 'text'", "invalid UTF-8"]),
        "cut parquet": (cut, [], ["cut.parquet", "not a readable Parquet file"]),
        "damaged row group": (damaged, [], ["damaged.parquet", "row group", "cannot read column 'text'"]),
        "truncated zst": (truncated, [], ["cut.txt.zst", "truncated zstd data"]),
        "corrupt zst": (corrupt, [], ["flipped.jsonl.zst", "cannot read past line", "corrupt zstd data"]),
        "arrow missing column": (stream, [], ["s.arrow", "no column 'text' (columns: body)"]),
        "dataset file missing": (dataset, [], ["state.json", "data-00001-of-00002.arrow", "missing"]),
    }


@pytest.mark.parametrize("case", ["missing column", "not strings", "null row", "null sentence", "invalid utf-8",
                                  "cut parquet", "damaged row group", "truncated zst", "corrupt zst",
                                  "arrow missing column", "dataset file missing"])
def test_bad_input_is_one_line_naming_file_row_and_field(tmp_path, case):
    path, sets, expected = _bad_files(tmp_path)[case]
    args = ["train-vocab", "--input", str(path), "--output", str(tmp_path / "out")]
    for s in sets:
        args += ["--set", s]
    line = _error_line(args)
    for part in expected:
        assert part in line, line
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_in_parquet_is_replaced_when_asked(tmp_path):
    not_utf8 = pa.array([b"fine", b"bro\xffken"], type=pa.binary()).view(pa.string())
    path = _write_parquet(tmp_path / "utf8.parquet", pa.table({"text": not_utf8}))
    stats = CorpusStats()
    assert list(iter_documents([path], errors="replace", stats=stats)) == [["fine"], ["bro\ufffdken"]]
    assert stats.replaced_invalid_utf8_lines == 1


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = _write_parquet(tmp_path / "c.parquet", _text_table(DOCS))
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)  # what an environment without pyarrow sees on import
    result = runner.invoke(app, ["train-vocab", "--input", str(path), "--output", str(tmp_path / "tok")])
    assert result.exit_code == 2, result.output
    assert "c.parquet: reading Parquet and Arrow files needs pyarrow" in result.output
    assert "pip install 'bertcli[parquet]'" in result.output
    with pytest.raises(InputError, match="needs pyarrow"):
        list(iter_documents([tmp_path / "c.parquet"]))
