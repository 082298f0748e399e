"""Reading corpora: layouts, formats, encodings, enormous lines, bad files."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from bertcli import corpus
from bertcli.corpus import CorpusStats, iter_documents, iter_texts, resolve_inputs
from bertcli.errors import InputError


def test_sentence_per_line_documents(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("A one.\nA two.\n\n\nB one.\n  \nC one.\nC two.", encoding="utf-8")
    stats = CorpusStats()
    docs = list(iter_documents([p], stats=stats))
    assert docs == [["A one.", "A two."], ["B one."], ["C one.", "C two."]]
    assert stats.documents == 3 and stats.sentences == 5


def test_bom_crlf_and_nul_bytes(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"\xef\xbb\xbfFirst line.\r\nSec\x00ond line.\r\n\r\nNext doc.\r\n")
    stats = CorpusStats()
    assert list(iter_documents([p], stats=stats)) == [["First line.", "Second line."], ["Next doc."]]
    assert stats.nul_bytes_removed == 1


def test_gzip_and_jsonl(tmp_path):
    gz = tmp_path / "c.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("Gz one.\nGz two.\n")
    jl = tmp_path / "d.jsonl"
    jl.write_text(
        json.dumps({"body": "J one.\nJ two."}) + "\n\n" + json.dumps({"body": "K one."}) + "\n", encoding="utf-8"
    )
    assert list(iter_documents([gz])) == [["Gz one.", "Gz two."]]
    assert list(iter_documents([jl], text_field="body")) == [["J one.", "J two."], ["K one."]]
    with pytest.raises(InputError, match=r"d\.jsonl:1: no 'text' field"):
        list(iter_documents([jl]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        list(iter_documents([bad]))
    # a .json named on its own is JSON lines (what Dataset.to_json writes); it was read as text, braces and all
    named = tmp_path / "sub" / "e.json"
    named.parent.mkdir()
    named.write_text(json.dumps({"text": "E one."}) + "\n", encoding="utf-8")
    assert list(iter_documents([named])) == [["E one."]]
    with pytest.raises(InputError, match="holds no corpus files"):  # in a directory a .json is still not a corpus
        resolve_inputs([named.parent])
    # a JSON document is named as one, with how to convert it (it was "no 'text' field in the JSON object")
    for name, content in (("array.json", json.dumps([{"text": "A."}]) + "\n"),
                          ("pretty.json", json.dumps({"text": "A."}, indent=2) + "\n")):
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=rf"{name}:1: a JSON document, not JSON lines") as err:
            list(iter_documents([tmp_path / name]))
        assert "jq -c" in err.value.hint


def test_document_per_line_keeps_korean_and_cjk(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text(
        "Dr. Smith went home. He was tired!\n"
        "서울은 대한민국의 수도입니다. 부산은 항구 도시입니다.\n"
        "\n"
        "今日は晴れです。明日は雨でしょう。\n"
        "北京是中国的首都。上海很大！\n",
        encoding="utf-8",
    )
    stats = CorpusStats()
    docs = list(iter_documents([p], layout="document-per-line", stats=stats))
    assert docs == [
        ["Dr. Smith went home.", "He was tired!"],
        ["서울은 대한민국의 수도입니다.", "부산은 항구 도시입니다."],
        ["今日は晴れです。", "明日は雨でしょう。"],
        ["北京是中国的首都。", "上海很大！"],
    ]
    assert stats.empty_documents == 1


def test_invalid_utf8_strict_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"fine\nalso fine\nbro\xffken\n")
    with pytest.raises(InputError) as exc:
        list(iter_texts([p]))
    assert f"{p}:3: invalid UTF-8" in exc.value.message and "errors: replace" in exc.value.hint
    stats = CorpusStats()
    assert list(iter_texts([p], errors="replace", stats=stats)) == ["fine", "also fine", "bro\ufffdken"]
    assert stats.replaced_invalid_utf8_lines == 1


def test_binary_file_refused(tmp_path):
    p = tmp_path / "image.txt"
    p.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(InputError, match="binary file"):
        list(iter_texts([p], errors="replace"))


def test_json_lines_named_as_text_are_refused_unless_format_text_is_set(tmp_path):
    # Read as text, a .txt of JSON lines trained the vocabulary on '{"text": "…' (keys and quotes as words).
    records = '\ufeff\n{"text": "the cat sat .", "id": 1}\n{"text": "a dog ."}\n'
    plain = tmp_path / "dump.txt"
    plain.write_text(records, encoding="utf-8")
    packed = tmp_path / "dump.gz"
    packed.write_bytes(gzip.compress(records.encode()))
    for path in (plain, packed):
        with pytest.raises(InputError, match=rf"{path.name}:2: a JSON object, in a file read as plain text") as err:
            list(iter_documents([path]))
        assert "format: jsonl" in err.value.hint
    as_text = [['{"text": "the cat sat .", "id": 1}', '{"text": "a dog ."}']]
    assert list(iter_documents([plain], format="text")) == as_text
    assert list(iter_documents([plain], format="jsonl")) == [["the cat sat ."], ["a dog ."]]
    braces = tmp_path / "braces.txt"  # a text line that only starts with a brace is text
    braces.write_text("{a set} of words .\n{\"text\": 1}\n", encoding="utf-8")
    assert len(list(iter_texts([braces]))) == 2


def test_enormous_line_comes_in_bounded_pieces_without_splitting_words(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 4096)
    words = [f"w{i}é" for i in range(5000)]  # ~35 KB on one line, multi-byte characters included
    p = tmp_path / "huge.txt"
    p.write_text("start.\n" + " ".join(words) + "\nend.\n", encoding="utf-8")
    stats = CorpusStats()
    pieces = list(iter_texts([p], stats=stats))
    assert pieces[0] == "start." and pieces[-1] == "end."
    middle = pieces[1:-1]
    assert len(middle) > 5 and max(len(m.encode()) for m in middle) <= 4096
    assert " ".join(middle).split() == words
    assert stats.long_lines_split == 1


def test_resolve_inputs_files_dirs_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.txt", "sub/c.txt.gz", "sub/.hidden.txt"):
        (tmp_path / name).write_bytes(b"x\n")
    assert [p.name for p in resolve_inputs([tmp_path])] == ["a.txt", "b.txt", "c.txt.gz"]
    assert [p.name for p in resolve_inputs([str(tmp_path / "*.txt")])] == ["a.txt", "b.txt"]
    with pytest.raises(InputError, match="does not exist"):
        resolve_inputs([tmp_path / "missing.txt"])
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs([str(tmp_path / "*.nothing")])
    with pytest.raises(InputError, match="no input corpus"):
        resolve_inputs([])


@pytest.mark.parametrize(
    "content",
    [
        b"\n\nA one.\nA two.\n\n \nB one.\n\n",
        b"A.\n  \t\nB.\n \n\n\nC. \n  ",
        b"\xef\xbb\xbfOne.\r\nTwo\x00.\r\n\r\nThree.",
        "서울은 수도입니다.\n\n北京是首都。\n".encode(),
    ],
)
def test_fast_scan_counts_like_the_reader(tmp_path, content):
    p = tmp_path / "c.txt"
    p.write_bytes(content)
    fast, slow = CorpusStats(), CorpusStats()
    assert corpus.scan_plain_file(p, "strict", fast)
    list(iter_documents([p], stats=slow))
    assert (fast.lines, fast.sentences, fast.documents) == (slow.lines, slow.sentences, slow.documents)


def test_fast_scan_defers_what_only_the_reader_handles(tmp_path, monkeypatch):
    gz = tmp_path / "c.txt.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b"A.\n")
    assert not corpus.scan_plain_file(gz, "strict", CorpusStats())
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nbad \xff\n")
    assert not corpus.scan_plain_file(bad, "replace", CorpusStats())
    with pytest.raises(InputError, match=r"bad\.txt:2: invalid UTF-8"):
        corpus.scan_plain_file(bad, "strict", CorpusStats())
    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 64)
    long = tmp_path / "long.txt"
    long.write_bytes(b"short\n" + b"x " * 100 + b"\n")
    assert not corpus.scan_plain_file(long, "strict", CorpusStats())


# ---------------------------------------------------------------- what a directory expansion leaves out

def test_directory_expansion_skips_hidden_json_and_artifacts(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".notes.txt").write_text("private\n")
    (tmp_path / "config.json").write_text("{}\n")
    (tmp_path / "backup.tar.gz").write_bytes(gzip.compress(b"not text"))
    (tmp_path / "doc.txt").write_text("kept.\n")
    (tmp_path / "more.jsonl.zst").write_bytes(b"")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("[PAD]\n")
    (tok / "manifest.json").write_text(json.dumps({"bertcli_version": "0.1.0", "stage": "train-vocab"}))
    other = tmp_path / "other"  # a manifest.json that is not bertcli's does not make an artifact
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"name": "my data"}))
    (other / "part.txt").write_text("kept too.\n")
    stats = CorpusStats()
    assert [p.name for p in resolve_inputs([tmp_path], stats)] == ["doc.txt", "more.jsonl.zst", "part.txt"]
    assert (stats.skipped_hidden, stats.skipped_other_files) == (2, 3)  # .git, .notes.txt; 2 × .json, .tar.gz
    assert stats.skipped_artifacts == [str(tok)]
    with pytest.raises(InputError, match=r"is a bertcli artifact \(stage train-vocab\)"):
        resolve_inputs([tok])
    stats = CorpusStats()
    assert [p.name for p in resolve_inputs([str(tmp_path / "**" / "*.txt")], stats)] == ["doc.txt", "part.txt"]
    assert stats.skipped_artifacts == [str(tok)]
    assert [p.name for p in resolve_inputs([str(tok / "*.txt")])] == ["vocab.txt"]  # named in the pattern: read


def test_empty_directory_error_says_what_was_skipped(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / ".b.txt").write_text("x")
    with pytest.raises(InputError, match=r"holds no corpus files \(skipped: 1 hidden, 1 with other names"):
        resolve_inputs([tmp_path])


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe"])
def test_train_vocab_on_a_corpus_holding_its_own_tokenizer_reads_only_the_corpus(tmp_path, tiny_corpus, algorithm):
    from typer.testing import CliRunner

    from bertcli.cli import app

    runner = CliRunner()
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "text.txt").write_bytes(tiny_corpus.read_bytes())
    sets = ["--set", "vocab_size=400", "--set", f"algorithm={algorithm}"]
    # writing into the corpus is refused; an artifact moved there later is skipped when the directory is read
    into_corpus = ["--output", str(corpus_dir / "tok")]
    refused = runner.invoke(app, ["train-vocab", "--input", str(corpus_dir), *into_corpus, *sets])
    assert refused.exit_code == 2 and "inside" in refused.output
    first = runner.invoke(app, ["train-vocab", "--input", str(corpus_dir), "--output", str(tmp_path / "tok"), *sets])
    assert first.exit_code == 0, first.output
    shutil.move(tmp_path / "tok", corpus_dir / "tok")
    again = runner.invoke(app, ["train-vocab", "--input", str(corpus_dir), "--output", str(tmp_path / "tok2"), *sets])
    assert again.exit_code == 0, again.output
    manifest = json.loads((tmp_path / "tok2" / "manifest.json").read_text())
    assert [Path(f["path"]).name for f in manifest["inputs"]["corpus"]] == ["text.txt"]
    assert manifest["stats"]["skipped_artifacts"] == [str(corpus_dir / "tok")]
    before = json.loads((corpus_dir / "tok" / "manifest.json").read_text())["stats"]
    assert (manifest["stats"]["lines"], manifest["stats"]["sentences"]) == (before["lines"], before["sentences"])


def test_train_vocab_says_when_files_of_a_directory_were_not_read(tmp_path, tiny_corpus):
    """A .xz among the corpus files was skipped with only a count in the manifest."""
    from typer.testing import CliRunner

    from bertcli.cli import app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(tiny_corpus, corpus / "a.txt")
    (corpus / "b.txt.xz").write_bytes(b"\xfd7zXZ\x00")
    result = CliRunner().invoke(app, ["train-vocab", "--input", str(corpus), "--output", str(tmp_path / "tok"),
                                      "--set", "vocab_size=300"])
    assert result.exit_code == 0, result.output
    assert "warning: 1 file(s) in the input directories were not read" in result.stderr
    assert "other compressions (.xz, .bz2) need decompressing first" in result.stderr


def test_a_missing_relative_input_says_where_it_was_looked_for(tmp_path, monkeypatch):
    # "check the --input path", for a path that came from a config file's key and was read from elsewhere
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="input path 'corpus/ko' does not exist") as err:
        resolve_inputs(["corpus/ko"])
    assert err.value.hint == f"check --input (or the config's key input); a relative path is read from where bert " \
                             f"runs ({tmp_path})"


def test_utf16_without_a_mark_and_with_a_short_first_line_is_named(tmp_path):
    # Only the first line was sniffed: "ab" and its NULs looked like a binary file ("set format: parquet")
    path = tmp_path / "u16.txt"
    path.write_bytes("ab\nthe cat sat on the mat .\nthe dog ran to the park .\n".encode("utf-16-le"))
    with pytest.raises(InputError, match="is UTF-16 text"):
        list(iter_texts([path]))
    gz = tmp_path / "u16.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(InputError, match="is UTF-16 text"):
        list(iter_texts([gz]))
