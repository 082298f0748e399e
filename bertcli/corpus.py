"""Reading corpora, streamed: files, directories, globs; .txt, .gz, .jsonl; documents as lists of sentences."""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from bertcli.errors import InputError

# A line longer than this is handed on in pieces (cut at whitespace) so that one enormous line never has to be
# held whole: memory stays bounded whatever the file.
MAX_LINE_BYTES = 1 << 20
_SNIFF_BYTES = 8192
_TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".gz", ".tsv", ".md", ".raw")


@dataclass
class CorpusStats:
    """What reading saw; stages copy it into their manifest."""

    files: int = 0
    bytes: int = 0
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    empty_documents: int = 0
    long_lines_split: int = 0
    replaced_invalid_utf8_lines: int = 0
    nul_bytes_removed: int = 0
    long_words_skipped: int = 0  # words over max_input_chars_per_word, left out of vocabulary training
    file_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("file_names")
        return d


def resolve_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, directories (recursively, sorted) and glob patterns; an InputError names what is missing."""
    out: list[Path] = []
    paths = list(paths)
    if not paths:
        raise InputError("no input corpus given", hint="pass --input PATH (a file, directory or glob)")
    for raw in paths:
        text = str(raw)
        p = Path(text).expanduser()
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(
                q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".") and _looks_like_text_name(q)
            )
            if not found:
                raise InputError(
                    f"input directory '{p}' holds no text files", hint="point --input at your corpus files"
                )
            out.extend(found)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True) if Path(m).is_file())
            if not found:
                raise InputError(f"input pattern '{text}' matches no file", hint="check the glob pattern")
            out.extend(found)
        else:
            raise InputError(f"input path '{text}' does not exist", hint="check the --input path")
    return out


def _looks_like_text_name(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith(_TEXT_SUFFIXES) or "." not in name


def _open_binary(path: Path):
    f = open(path, "rb")
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)
    return f


def is_jsonl(path: Path, fmt: str) -> bool:
    if fmt != "auto":
        return fmt == "jsonl"
    name = path.name.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz") or name.endswith(".ndjson")


def _check_not_binary(path: Path, head: bytes) -> None:
    if not head:
        return
    # Text may hold a stray NUL; a file where control bytes are common is not text.
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    if b"\0" * 4 in head or controls / len(head) > 0.1:
        raise InputError(
            f"{path}: looks like a binary file, not text",
            hint="give only UTF-8 text, .gz of text or .jsonl files as input",
        )


def iter_lines(path: Path, errors: str = "strict", stats: CorpusStats | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a file; BOM, CRLF and NUL bytes handled; huge lines come in pieces."""
    stats = stats if stats is not None else CorpusStats()
    try:
        f = _open_binary(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})", hint="check the file's permissions") from exc
    with f:
        decoder_factory = codecs.getincrementaldecoder("utf-8")
        lineno = 0
        first = True
        pending_piece = False  # the previous chunk ended inside a line
        decoder = decoder_factory(errors="strict")
        try:
            while True:
                chunk = f.readline(MAX_LINE_BYTES)
                if not chunk:
                    break
                if first:
                    _check_not_binary(path, chunk[:_SNIFF_BYTES])
                    if chunk.startswith(codecs.BOM_UTF8):
                        chunk = chunk[len(codecs.BOM_UTF8) :]
                    first = False
                if not pending_piece:
                    lineno += 1
                stats.bytes += len(chunk)
                complete = chunk.endswith(b"\n")
                if b"\0" in chunk:
                    stats.nul_bytes_removed += chunk.count(b"\0")
                    chunk = chunk.replace(b"\0", b"")
                try:
                    text = decoder.decode(chunk, final=complete)
                except UnicodeDecodeError as exc:
                    if errors == "strict":
                        raise InputError(
                            f"{path}:{lineno}: invalid UTF-8 ({exc.reason} at byte {exc.start} of the line)",
                            hint="convert the file to UTF-8, or set errors: replace to read bad bytes as U+FFFD",
                        ) from exc
                    stats.replaced_invalid_utf8_lines += 1
                    decoder = decoder_factory(errors="replace")
                    text = decoder.decode(chunk, final=complete)
                    decoder = decoder_factory(errors="strict")
                if complete:
                    stats.lines += 1
                    pending_piece = False
                    yield lineno, text.rstrip("\r\n")
                else:
                    if not pending_piece:
                        stats.long_lines_split += 1
                    pending_piece = True
                    if len(chunk) < MAX_LINE_BYTES:  # the file's last line, without a newline
                        stats.lines += 1
                        pending_piece = False
                        yield lineno, text.rstrip("\r")
                    else:
                        yield lineno, text
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"{path}: cannot read ({exc})", hint="check that the file is complete") from exc


def _merge_long_line_pieces(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Huge lines arrive in pieces; cut them at whitespace so no word is split across pieces."""
    carry = ""
    carry_no = 0
    for lineno, text in lines:
        if carry and lineno != carry_no:
            yield carry_no, carry
            carry = ""
        if lineno == carry_no and carry:
            text = carry + text
            carry = ""
        # Pieces that are not the last of their line come exactly MAX_LINE_BYTES long (before decoding).
        if len(text.encode("utf-8", "surrogatepass")) >= MAX_LINE_BYTES - 4:
            cut = max(text.rfind(" "), text.rfind("\t"))
            if cut > 0:
                yield lineno, text[:cut]
                carry, carry_no = text[cut + 1 :], lineno
                continue
        yield lineno, text
    if carry:
        yield carry_no, carry


_SCRIPT_LANG = [
    (re.compile(r"[\uac00-\ud7a3]"), "ko"),
    (re.compile(r"[\u3040-\u30ff]"), "ja"),
    (re.compile(r"[\u4e00-\u9fff]"), "zh"),
    (re.compile(r"[\u0400-\u04ff]"), "ru"),
    (re.compile(r"[\u0370-\u03ff]"), "el"),
    (re.compile(r"[\u0600-\u06ff]"), "ar"),
    (re.compile(r"[\u0590-\u05ff]"), "he"),
    (re.compile(r"[\u0e00-\u0e7f]"), "th"),
    (re.compile(r"[\u0900-\u097f]"), "hi"),
]


def guess_language(text: str) -> str:
    """A sentence-splitting language from the script of the first 2,000 characters (en when Latin or unknown)."""
    sample = text[:2000]
    for pattern, lang in _SCRIPT_LANG:
        if pattern.search(sample):
            return lang
    return "en"


def split_sentences(text: str, language: str = "auto") -> list[str]:
    """Split a document into sentences with sentencex (rule-based, offline; keeps Hangul, kana and CJK whole)."""
    from sentencex import segment

    lang = guess_language(text) if language == "auto" else language
    return [s.strip() for s in segment(lang, text) if s.strip()]


def _jsonl_text(path: Path, lineno: int, line: str, text_field: str) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}:{lineno}: not valid JSON ({exc.msg})", hint="each line of a .jsonl file is one JSON object"
        ) from exc
    if not isinstance(record, dict) or text_field not in record:
        raise InputError(
            f"{path}:{lineno}: no '{text_field}' field in the JSON object",
            hint="set text_field to the key that holds the text",
        )
    value = record[text_field]
    if not isinstance(value, str):
        raise InputError(f"{path}:{lineno}: field '{text_field}' is {type(value).__name__}, expected a string")
    return value


def iter_documents(
    paths: Iterable[str | os.PathLike],
    layout: str = "sentence-per-line",
    format: str = "auto",
    text_field: str = "text",
    errors: str = "strict",
    language: str = "auto",
    stats: CorpusStats | None = None,
) -> Iterator[list[str]]:
    """Stream documents, each a list of non-empty sentences, in file order then line order.

    sentence-per-line: a line is a sentence, a blank line (or a file's end) ends a document.
    document-per-line: a line is a document, split into sentences by sentencex.
    jsonl: a record is a document; its text is split by lines (sentence-per-line) or by sentencex.
    """
    stats = stats if stats is not None else CorpusStats()
    files = resolve_inputs(paths)
    for path in files:
        stats.files += 1
        stats.file_names.append(str(path))
        lines = _merge_long_line_pieces(iter_lines(path, errors, stats))
        if is_jsonl(path, format):
            for lineno, line in lines:
                text = _jsonl_text(path, lineno, line, text_field)
                if text is None:
                    continue
                if layout == "sentence-per-line":
                    doc = [s.strip() for s in text.splitlines() if s.strip()]
                else:
                    doc = split_sentences(text, language)
                yield from _emit(doc, stats)
        elif layout == "document-per-line":
            for _, line in lines:
                if not line.strip():
                    stats.empty_documents += 1
                    continue
                yield from _emit(split_sentences(line, language), stats)
        else:
            doc: list[str] = []
            for _, line in lines:
                sentence = line.strip()
                if sentence:
                    doc.append(sentence)
                elif doc:
                    yield from _emit(doc, stats)
                    doc = []
            if doc:
                yield from _emit(doc, stats)


def _emit(doc: list[str], stats: CorpusStats) -> Iterator[list[str]]:
    if not doc:
        stats.empty_documents += 1
        return
    stats.documents += 1
    stats.sentences += len(doc)
    yield doc


def iter_texts(
    paths: Iterable[str | os.PathLike],
    layout: str = "sentence-per-line",
    format: str = "auto",
    text_field: str = "text",
    errors: str = "strict",
    language: str = "auto",
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """Stream sentences (for vocabulary training), in corpus order."""
    for doc in iter_documents(paths, layout, format, text_field, errors, language, stats):
        yield from doc


def require_text(stats: CorpusStats, paths: Iterable[str]) -> None:
    """An InputError when reading found no text at all (empty files, only blank lines)."""
    if stats.sentences == 0:
        names = ", ".join(str(p) for p in paths)
        raise InputError(
            f"the corpus ({names}) holds no text: {stats.files} file(s), {stats.lines} line(s), all empty",
            hint="point --input at files with text in them",
        )


def open_text_writer(path: Path) -> io.TextIOWrapper:
    """UTF-8 text file with LF newlines, for stages that write text."""
    return open(path, "w", encoding="utf-8", newline="\n")


_BLANK_RUN = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_WHITESPACE_LINE = re.compile(rb"\n[ \t\r\f\v]+(?=\n|\Z)")
_SCAN_CHUNK = 1 << 20


def scan_plain_file(path: Path, errors: str, stats: CorpusStats) -> bool:
    """Check a plain sentence-per-line file at C speed, filling stats; False when only our reader can read it.

    True means: valid UTF-8, no line above MAX_LINE_BYTES, not compressed — so a native reader (the `tokenizers`
    trainer's) sees the same sentences. Invalid UTF-8 under errors=strict raises the usual InputError.
    """
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return False
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        lines_before = 0
        separators = 0
        sentences = 0
        tail = b""
        while True:
            chunk = f.read(_SCAN_CHUNK)
            if not chunk:
                break
            if not chunk.endswith(b"\n"):
                rest = f.readline(MAX_LINE_BYTES)
                chunk += rest
                if len(rest) >= MAX_LINE_BYTES and not rest.endswith(b"\n"):
                    return False
            if lines_before == 0:
                _check_not_binary(path, chunk[:_SNIFF_BYTES])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                if errors == "strict":
                    lineno = lines_before + chunk.count(b"\n", 0, exc.start) + 1
                    raise InputError(
                        f"{path}:{lineno}: invalid UTF-8 ({exc.reason})",
                        hint="convert the file to UTF-8, or set errors: replace to read bad bytes as U+FFFD",
                    ) from exc
                return False
            parts = chunk.split(b"\n")
            if chunk.endswith(b"\n"):
                parts.pop()  # what follows the last newline is not a line
            if max(map(len, parts), default=0) > MAX_LINE_BYTES:
                return False
            newlines = chunk.count(b"\n")
            lines = len(parts)
            whitespace_only = len(_WHITESPACE_LINE.findall(b"\n" + chunk))
            sentences += lines - parts.count(b"") - whitespace_only
            separators += len(_BLANK_RUN.findall(tail[-1:] + chunk))
            stats.lines += lines
            stats.nul_bytes_removed += chunk.count(b"\0")
            stats.bytes += len(chunk)
            lines_before += newlines
            tail = chunk
    stats.files += 1
    stats.file_names.append(str(path))
    stats.sentences += sentences
    if sentences:
        # blank-line runs between sentences separate documents; runs at the very start or end separate nothing
        head = open(path, "rb").read(_SNIFF_BYTES)
        leading = bool(re.match(rb"[ \t\r\f\v]*\n", head))
        trailing = bool(re.search(rb"\n[ \t\r\f\v]*\n[ \t\r\f\v\n]*\Z", tail))
        stats.documents += separators + 1 - leading - trailing
    return True
