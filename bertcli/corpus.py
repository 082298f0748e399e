"""Reading corpora, streamed: files, directories, globs; text, .gz, .zst, JSON lines, Parquet, Arrow IPC and
Hugging Face `save_to_disk` directories; documents as lists of sentences."""

from __future__ import annotations

import codecs
import glob
import gzip
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from bertcli.columnar import hf_dataset_files, iter_records, require_pyarrow
from bertcli.compressed import is_compressed, open_decompressed
from bertcli.errors import InputError, one_line, warn
from bertcli.textio import parse_json_line, refuse_utf16

# A line longer than this is handed on in pieces (cut at whitespace) so that one enormous line never has to be
# held whole: memory stays bounded whatever the file.
MAX_LINE_BYTES = 1 << 20
_SNIFF_BYTES = 8192

# File names a directory expansion reads (after a .gz/.zst suffix is taken off); a name without a dot is read as
# text. Not .json: a JSON document is not a corpus, and artifact directories and datasets hold config .json files.
_TEXT_SUFFIXES = (".txt", ".text", ".tsv", ".md", ".raw")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_PARQUET_SUFFIXES = (".parquet",)
_ARROW_SUFFIXES = (".arrow",)
_COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
_RECORD_FORMATS = ("parquet", "arrow")




@dataclass
class CorpusStats:
    """What reading saw; stages copy it into their manifest.

    bytes are text bytes read (after .gz/.zst decompression; for Parquet and Arrow, the UTF-8 bytes of the text
    values); lines are text lines, JSON lines or table rows. skipped_* say what expanding an input directory left
    out: hidden entries (names starting with '.'), files whose names are not corpus names (.json, .py, …), and
    bertcli artifact directories (a manifest.json written by a stage).
    """

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
    skipped_hidden: int = 0
    skipped_other_files: int = 0
    skipped_artifacts: list[str] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("file_names")
        return d


# ---------------------------------------------------------------- finding the files

def resolve_inputs(paths: Iterable[str | os.PathLike], stats: CorpusStats | None = None) -> list[Path]:
    """Expand files, directories (recursively, sorted) and glob patterns; an InputError names what is missing.

    A directory contributes its corpus files (see is_corpus_name), a Hugging Face `save_to_disk` directory its
    data files in the order of its state.json; hidden entries and bertcli artifact directories are left out, and
    counted in `stats`. A glob's matches inside an artifact directory below the pattern's fixed part are left out
    too (`corpus/**/*.txt` must not read `corpus/tok/vocab.txt`).
    """
    stats = stats if stats is not None else CorpusStats()
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
            skipped = CorpusStats()
            found = _expand_directory(p, skipped)
            stats.skipped_hidden += skipped.skipped_hidden
            stats.skipped_other_files += skipped.skipped_other_files
            stats.skipped_artifacts.extend(skipped.skipped_artifacts)
            if not found:
                raise InputError(
                    f"input directory '{p}' holds no corpus files{_skipped_note(skipped)}",
                    hint="point --input at your corpus files (text, .gz, .zst, .jsonl, .parquet, .arrow)",
                )
            out.extend(found)
        elif any(ch in text for ch in "*?["):
            pattern = os.path.expanduser(text)
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"input pattern '{text}' matches no file", hint="check the glob pattern")
            skipped = CorpusStats()
            found = _outside_artifacts(matches, _fixed_prefix(pattern), skipped)
            stats.skipped_artifacts.extend(skipped.skipped_artifacts)
            if not found:
                raise InputError(
                    f"input pattern '{text}' matches only files inside bertcli artifact directories "
                    f"({', '.join(skipped.skipped_artifacts)})",
                    hint="point --input at your corpus files",
                )
            out.extend(found)
        elif p.exists():  # a pipe, a socket or a device: reading one may never end
            raise InputError(f"input path '{text}' is not a regular file (a pipe or a device)",
                             hint="save the corpus to a file first")
        else:
            relative = "" if p.is_absolute() else f"; a relative path is read from where bert runs ({Path.cwd()})"
            raise InputError(f"input path '{text}' does not exist",
                             hint=f"check --input (or the config's key input){relative}")
    return out


def is_corpus_name(name: str) -> bool:
    """Whether a directory expansion reads a file of this name (text, JSON lines, Parquet, Arrow; .gz/.zst text)."""
    lower = name.lower()
    inner = _strip_compression(lower)
    if inner != lower:  # a compressed file: text or JSON lines inside (Parquet and Arrow compress their columns)
        return inner.endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES) or "." not in inner
    return lower.endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES + _PARQUET_SUFFIXES + _ARROW_SUFFIXES) or "." not in lower


def _strip_compression(name: str) -> str:
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _expand_directory(root: Path, skipped: CorpusStats) -> list[Path]:
    """Corpus files under root, in sorted path order (a dataset directory's files in its own order)."""
    stage = artifact_stage(root)
    if stage is not None:
        raise InputError(
            f"input directory '{root}' is a bertcli artifact (stage {stage}), not a corpus",
            hint="point --input at your corpus files",
        )
    entries: list[tuple[Path, list[Path]]] = []  # (where it sorts, the files it stands for)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dataset_files = hf_dataset_files(here)
        if dataset_files is not None:
            entries.append((here, dataset_files))
            dirnames.clear()  # a dataset's files are the ones its state.json names, no others
            continue
        kept = []
        for name in sorted(dirnames):
            if name.startswith("."):
                skipped.skipped_hidden += 1
            elif artifact_stage(here / name) is not None:
                skipped.skipped_artifacts.append(str(here / name))
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            path = here / name
            if name.startswith("."):
                skipped.skipped_hidden += 1
            elif not path.is_file():
                continue  # a broken link, a socket, a fifo
            elif is_corpus_name(name):
                entries.append((path, [path]))
            else:
                skipped.skipped_other_files += 1
    entries.sort(key=lambda entry: entry[0])
    return [path for _, files in entries for path in files]


def _skipped_note(skipped: CorpusStats) -> str:
    parts = []
    if skipped.skipped_hidden:
        parts.append(f"{skipped.skipped_hidden} hidden")
    if skipped.skipped_other_files:
        parts.append(f"{skipped.skipped_other_files} with other names (.json, …)")
    if skipped.skipped_artifacts:
        parts.append(f"{len(skipped.skipped_artifacts)} bertcli artifact directories")
    return f" (skipped: {', '.join(parts)})" if parts else ""


def artifact_stage(directory: Path) -> str | None:
    """The stage that wrote `directory`, if it is a bertcli artifact (its manifest.json has bertcli's keys)."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # someone else's manifest.json: not ours to judge
    if isinstance(data, dict) and "bertcli_version" in data and "stage" in data:
        return str(data["stage"])
    return None


def _fixed_prefix(pattern: str) -> Path:
    """The leading directories of a glob pattern that hold no wildcard."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _outside_artifacts(matches: list[Path], base: Path, skipped: CorpusStats) -> list[Path]:
    """Glob matches without those inside an artifact directory below `base` (naming one in the pattern is fine)."""
    is_artifact: dict[Path, bool] = {}
    kept = []
    for path in matches:
        inside = False
        for directory in path.parents:
            if directory == base or not directory.is_relative_to(base):
                continue
            if directory not in is_artifact:
                is_artifact[directory] = artifact_stage(directory) is not None
                if is_artifact[directory]:
                    skipped.skipped_artifacts.append(str(directory))
            inside = inside or is_artifact[directory]
        if not inside:
            kept.append(path)
    return kept


# ---------------------------------------------------------------- how a file is read

def detect_format(path: Path, fmt: str = "auto") -> str:
    """text, jsonl, parquet or arrow: `fmt` unless it is auto, else from the name (.gz/.zst suffixes ignored). A
    file named as text whose first line is a JSON object is refused: read as text, the vocabulary and the model
    would learn the JSON's keys and quotes."""
    if fmt != "auto":
        return fmt
    name = _strip_compression(path.name.lower())
    # .json too, for a file named on its own (a directory's are skipped): Dataset.to_json writes JSON lines there
    if name.endswith(_JSONL_SUFFIXES + (".json",)):
        return "jsonl"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_ARROW_SUFFIXES):
        return "arrow"
    line_no = _json_object_line(path)
    if line_no:
        raise InputError(f"{path}:{line_no}: a JSON object, in a file read as plain text",
                         hint="name it .jsonl (or set format: jsonl) to read the text_field of each line; "
                         "format: text reads the file as it is")
    return "text"


def _json_object_line(path: Path) -> int:
    """The number of the first non-blank line when it is a JSON object, else 0 (errors: left to the reader)."""
    try:
        with open_decompressed(path) as f:
            lines = itertools.islice(iter(lambda: f.readline(_SNIFF_BYTES), b""), 1000)  # leading blank lines
            for line_no, line in enumerate(lines, start=1):
                text = line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
                if text:
                    return line_no if text.startswith("{") and isinstance(_json_or_none(text), dict) else 0
    except (OSError, EOFError, InputError):
        pass
    return 0


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _check_not_binary(path: Path, head: bytes) -> None:
    if not head:
        return
    refuse_utf16(path, head)
    # Text may hold a stray NUL; a file where control bytes are common is not text.
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    if b"\0" * 4 in head or controls / len(head) > 0.1:
        raise InputError(
            f"{path}: looks like a binary file, not text",
            hint="give UTF-8 text (.txt, .gz, .zst), .jsonl, .parquet or .arrow files; for a Parquet or Arrow file "
            "without its suffix set format: parquet or arrow",
        )


def iter_lines(path: Path, errors: str = "strict", stats: CorpusStats | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a file; BOM, CRLF and NUL bytes handled; huge lines come in pieces."""
    stats = stats if stats is not None else CorpusStats()
    try:
        f = open_decompressed(path)
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
                if first:  # the first line and what follows it: a short first line says little
                    _check_not_binary(path, (chunk + f.peek(_SNIFF_BYTES))[:_SNIFF_BYTES])
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
            raise InputError(
                f"{path}: cannot read past line {lineno} ({one_line(exc)})", hint="check that the file is complete"
            ) from exc


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
        # Pieces that are not the last of their line come exactly MAX_LINE_BYTES long (before decoding). A character
        # is at most 4 bytes: a shorter text needs no encoding to rule that out.
        if 4 * len(text) >= MAX_LINE_BYTES - 4 and len(text.encode("utf-8", "surrogatepass")) >= MAX_LINE_BYTES - 4:
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
    hint = "each line of a .jsonl file is one flat JSON object holding the text"
    try:
        record = parse_json_line(path, lineno, line, hint=hint)
    except InputError:
        if line.strip() not in ("[", "{"):  # else the first line of an array, or of an object spread over lines
            raise
        record = []
    if isinstance(record, list):  # a JSON document in a .json file: said as such, not as a bad line
        raise InputError(f"{path}:{lineno}: a JSON document, not JSON lines (one object a line)",
                         hint="convert it: jq -c '.[]' for an array of objects, jq -c . for one object")
    if not isinstance(record, dict) or text_field not in record:
        raise InputError(f"{path}:{lineno}: no '{text_field}' field in the JSON object",
                         hint="set text_field to the key that holds the text")
    value = record[text_field]
    if not isinstance(value, str):
        raise InputError(f"{path}:{lineno}: field '{text_field}' is {type(value).__name__}, expected a string",
                         hint="every line's text field must be a JSON string")
    return value


def _whole_lines(pieces: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """A line's pieces joined again: a JSON record must be parsed whole, however long (it is one document)."""
    held: list[str] = []
    held_lineno = 0
    for lineno, text in pieces:
        if held and lineno != held_lineno:
            yield held_lineno, "".join(held)
            held = []
        held.append(text)
        held_lineno = lineno
    if held:
        yield held_lineno, "".join(held)


def _record_sentences(value: str | list[str], layout: str, language: str) -> list[str]:
    """The sentences of a record's text: its lines (sentence-per-line) or sentencex's split; a list as given."""
    if isinstance(value, list):
        return [s.strip() for s in value if s.strip()]
    if layout == "sentence-per-line":
        # "\n" only, as in a text file: str.splitlines would also split at \v, \f, \x1c-\x1e, \x85, U+2028/9
        return [s for s in (line.strip() for line in value.split("\n")) if s]
    return split_sentences(value, language)


# ---------------------------------------------------------------- documents

def iter_documents(
    paths: Iterable[str | os.PathLike],
    layout: str = "sentence-per-line",
    format: str = "auto",
    text_field: str = "text",
    errors: str = "strict",
    language: str = "auto",
    stats: CorpusStats | None = None,
) -> Iterator[list[str]]:
    """Stream documents, each a list of non-empty sentences, in file order then line (row) order.

    sentence-per-line: a line is a sentence, a blank line (or a file's end) ends a document.
    document-per-line: a line is a document, split into sentences by sentencex.
    A record — a JSON line, a Parquet or Arrow row — is a document: its text is split by lines
    (sentence-per-line) or by sentencex (document-per-line); a list of strings is the document's sentences.
    """
    stats = stats if stats is not None else CorpusStats()
    files = resolve_inputs(paths, stats)
    kinds = [detect_format(path, format) for path in files]
    for path, kind in zip(files, kinds):
        if kind in _RECORD_FORMATS:
            require_pyarrow(path)  # before reading anything: not after an hour of text files
            break
    for path, kind in zip(files, kinds):
        stats.files += 1
        stats.file_names.append(str(path))
        if kind in _RECORD_FORMATS:
            for value in iter_records(path, kind, text_field, errors, stats):
                yield from _emit(_record_sentences(value, layout, language), stats)
        elif kind == "jsonl":
            for lineno, line in _whole_lines(iter_lines(path, errors, stats)):
                text = _jsonl_text(path, lineno, line, text_field)
                if text is not None:
                    yield from _emit(_record_sentences(text, layout, language), stats)
        elif layout == "document-per-line":
            for _, line in _merge_long_line_pieces(iter_lines(path, errors, stats)):
                if not line.strip():
                    stats.empty_documents += 1
                    continue
                yield from _emit(split_sentences(line, language), stats)
        else:
            doc: list[str] = []
            for _, line in _merge_long_line_pieces(iter_lines(path, errors, stats)):
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


def check_what_was_read(stats: CorpusStats, paths: Iterable[str]) -> None:
    """After reading: an InputError when it found no text at all (empty files, only blank lines); a warning when
    errors: replace had to replace bytes in many lines (a file in another encoding, read as mojibake)."""
    names = ", ".join(str(p) for p in paths)
    if stats.sentences == 0:
        raise InputError(
            f"the corpus ({names}) holds no text: {stats.files} file(s), {stats.lines} line(s), all empty",
            hint="point --input at files with text in them",
        )
    if stats.replaced_invalid_utf8_lines > 0.1 * stats.lines:
        warn(f"{stats.replaced_invalid_utf8_lines:,} of the corpus's {stats.lines:,} lines held bytes that are not "
             f"UTF-8, read as U+FFFD (errors: replace): the corpus ({names}) is likely in another encoding; convert "
             "it, e.g. iconv -f CP949 -t UTF-8 (CP1252, Shift_JIS, GB18030 for others)")


_BLANK_RUN = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_WHITESPACE_LINE = re.compile(rb"\n[ \t\r\f\v]+(?=\n|\Z)")
_SCAN_CHUNK = 1 << 20


def scan_plain_file(path: Path, errors: str, stats: CorpusStats) -> bool:
    """Check a plain sentence-per-line file at C speed, filling stats; False when only our reader can read it.

    True means: valid UTF-8, no line above MAX_LINE_BYTES, not compressed (gzip or zstd) — so a native reader (the
    `tokenizers` trainer's) sees the same sentences. Invalid UTF-8 under errors=strict raises the usual InputError.
    """
    with open(path, "rb") as f:
        head = f.read(4)
        if is_compressed(head):
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
