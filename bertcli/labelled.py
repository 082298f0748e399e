"""Reading labelled examples for classification from CSV, TSV or JSON-lines files; every problem names file and line."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bertcli.errors import InputError
from bertcli.textio import check_regular_file, check_unicode, not_utf8, parse_json_line, refuse_utf16

FORMATS = ("csv", "tsv", "jsonl")
# The text field when none is configured: GLUE's name first, then the common one.
DEFAULT_TEXT_FIELDS = ("sentence", "text")
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclass
class Example:
    """One row: its line in the file, its text (and second text for pair tasks) and its label as a string."""

    line: int
    text: str
    text_pair: str | None
    label: str | None  # None when the file is read without labels (prediction)


@dataclass
class LabelledFile:
    path: Path
    format: str
    text_field: str
    text_pair_field: str | None
    examples: list[Example]


def config_key(key: str) -> str:
    """How a hint tells a `bert finetune` user to change a key (`bert predict` passes options instead)."""
    return "set format: csv, tsv or jsonl" if key == "format" else f"set {key}"


def option_setting(key: str) -> str:
    """How a hint tells a `bert predict` or `bert score` user to name a field or the format (options, not keys)."""
    return "name a file of one text a line .txt" if key == "format" else f"pass --{key.replace('_', '-')}"


def is_labelled_file(path: Path) -> bool:
    """A file whose suffix says CSV, TSV or JSON lines: read by field, not line by line."""
    return path.suffix.lower() in _SUFFIX_FORMATS


def detect_format(path: Path, format: str = "auto", setting: Callable[[str], str] = config_key) -> str:
    """csv, tsv or jsonl: the configured format, else by the file's suffix."""
    if format != "auto":
        return format
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the suffix '{path.suffix}'",
            hint=f"name the file .csv, .tsv or .jsonl, or {setting('format')}",
        )
    return fmt


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    refuse_utf16(path, data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, data[: exc.start].count(b"\n") + 1, exc, data[:8192]) from exc


def _rows(path: Path, fmt: str, hint_format: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank row; CSV and TSV take their field names from the first line.
    hint_format: how the user chooses another format (said when the header is in another one's separator)."""
    text = _read_text(path)
    if fmt == "jsonl":
        seen_row = False
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if line.lstrip().startswith("[") and not seen_row:
                raise InputError(f"{path}:{line_no}: the file is a JSON array, not JSON lines",
                                 hint='write one JSON object a line, e.g. {"text": "…", "label": "…"}')
            obj = parse_json_line(path, line_no, line,
                                  hint='each line must be one JSON object, e.g. {"text": "…", "label": "…"}')
            seen_row = True
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}",
                                 hint='each line must be one JSON object, e.g. {"text": "…", "label": "…"}')
            yield line_no, obj
        return
    if fmt == "tsv":
        # TSV as GLUE writes it: one row a line, no quoting (quotes are part of the text).
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not lines:
            return
        header = _header(path, lines[0][0], lines[0][1].split("\t"), "csv", hint_format)
        for line_no, line in lines[1:]:
            values = line.split("\t")
            if len(values) != len(header):
                raise InputError(
                    f"{path}:{line_no}: {_columns(len(values), 'tab')}, the header has {len(header)}",
                    hint=_row_width_hint(len(values), len(header), "\t", "one tab between columns and none "
                                         "inside a text, or use CSV (quoting) or JSONL"),
                )
            yield line_no, dict(zip(header, values))
        return
    # strict: a quote closed in the middle of a field (`"a",b"c`) or never closed is an error, not a silent merge
    # of the rows up to the next quote into one text.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    start = 1
    try:
        for values in reader:
            line_no, start = start, reader.line_num + 1  # a quoted field may span lines: report where the row starts
            if not any(v.strip() for v in values):
                continue
            if header is None:
                header = _header(path, line_no, values, "tsv", hint_format)
                continue
            if len(values) != len(header):
                raise InputError(
                    f"{path}:{line_no}: {_columns(len(values), 'comma')}, the header has {len(header)}",
                    hint=_row_width_hint(len(values), len(header), ",", "quote a text that contains commas: \"a, b\""),
                )
            yield line_no, dict(zip(header, values))
    except csv.Error as exc:
        raise InputError(
            f"{path}:{start}: not valid CSV ({exc}; the row starting on this line ends on line {reader.line_num})",
            hint='close every quote opened at the start of a field, and double a quote inside one: "say ""hi"""',
        ) from exc


def _columns(count: int, separator_name: str) -> str:
    return f"{count} {separator_name}-separated column{'' if count == 1 else 's'}"


def _row_width_hint(width: int, header_width: int, separator: str, too_many: str) -> str:
    if width > header_width:
        return too_many
    return f"give every row all {header_width} columns (an empty value as {'a,,b' if separator == ',' else 'two tabs'})"


def _header(path: Path, line_no: int, names: list[str], other: str, hint_format: str) -> list[str]:
    """Column names of a CSV/TSV header line, stripped of spaces; a name given twice is an error, since one of the
    two columns would be dropped without a word. One name holding the `other` format's separator: a file of the
    other format (a .csv of tabs, or format: tsv set for a CSV), which would otherwise fail later on a field name
    that looks present."""
    names = [n.strip() for n in names]
    separator = {"csv": ",", "tsv": "\t"}[other]
    if len(names) == 1 and separator in names[0]:
        read_as = "TSV" if other == "csv" else "CSV"
        raise InputError(f"{path}:{line_no}: the header line is one column, {names[0]!r}, read as {read_as}",
                         hint=f"the file looks like {other.upper()}: {hint_format}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{path}:{line_no}: the header names the column '{name}' twice",
                             hint="give every column its own name in the first line")
        seen.add(name)
    return names


def _field_text(path: Path, line_no: int, row: dict[str, Any], field: str, hint: str) -> str:
    if field not in row:
        raise InputError(f"{path}:{line_no}: no field '{field}' (fields: {', '.join(map(str, row))})", hint=hint)
    value = row[field]
    if not isinstance(value, str):
        raise InputError(f"{path}:{line_no}: field '{field}' is not a string (got {json.dumps(value)})",
                         hint="texts must be JSON strings")
    if not value.strip():
        raise InputError(f"{path}:{line_no}: field '{field}' is empty", hint="every example needs text")
    return check_unicode(value, f"{path}:{line_no}: field '{field}'")


def _label(path: Path, line_no: int, row: dict[str, Any], field: str) -> str:
    if field not in row:
        raise InputError(f"{path}:{line_no}: no field '{field}' (fields: {', '.join(map(str, row))})",
                         hint="set label_field to the column holding the labels")
    value = row[field]
    # A label is a name or an integer class id; 1.0 or true would silently become a different class than 1.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{path}:{line_no}: label '{field}' is {json.dumps(value)}, expected a string or an integer",
                         hint="one label per example, as a name (\"positive\") or a class id (1)")
    # NFC: a label typed on one system and copied on another (macOS writes Hangul decomposed) is the same label
    label = unicodedata.normalize("NFC", str(value).strip())
    if not label:
        raise InputError(f"{path}:{line_no}: label '{field}' is empty", hint="every training example needs a label")
    return label


def load_examples(
    path: str | Path,
    format: str = "auto",
    text_field: str | None = None,
    text_pair_field: str | None = None,
    label_field: str | None = "label",
    setting: Callable[[str], str] = config_key,
) -> LabelledFile:
    """Every example of a labelled file. text_field None: `sentence` if the first row has it, else `text`.
    label_field None: labels are not read (prediction input; a label column is ignored)."""
    p = Path(path)
    check_regular_file(p, "", "pass a .csv, .tsv or .jsonl file")  # before its suffix is judged
    fmt = detect_format(p, format, setting)
    examples: list[Example] = []
    field = text_field
    other_format = "tsv" if fmt == "csv" else "csv"
    hint_format = (f"name it .{other_format}, or {setting('format')}" if format == "auto"  # went by the suffix
                   else f"set format: {other_format} (or auto, to go by the file's suffix)")
    for line_no, row in _rows(p, fmt, hint_format):
        if field is None:
            field = next((f for f in DEFAULT_TEXT_FIELDS if f in row), None)
            if field is None:
                where = "the header line" if fmt != "jsonl" else f"line {line_no}"
                raise InputError(
                    f"{p}:{line_no}: no field 'sentence' or 'text' ({where} has: {', '.join(map(str, row))})",
                    hint=f"{setting('text_field')} to the column holding the text"
                    + (", and start the file with a header line naming the columns" if fmt != "jsonl" else ""),
                )
            for other, key in ((text_pair_field, "text_pair_field"), (label_field, "label_field")):
                if other == field:
                    raise InputError(f"{p}: {key} '{other}' is also the text field ('{field}' by default)",
                                     hint=f"{setting(key)} to another column, or {setting('text_field')} to the one "
                                     "holding the text")
        text = _field_text(p, line_no, row, field, hint=f"{setting('text_field')} to the column holding the text")
        pair = None
        if text_pair_field is not None:
            pair = _field_text(p, line_no, row, text_pair_field,
                               hint=f"{setting('text_pair_field')} to the second text's column")
        label = _label(p, line_no, row, label_field) if label_field is not None else None
        examples.append(Example(line_no, text, pair, label))
    if not examples:
        raise InputError(f"{p}: no examples", hint="write one example a line" + (
            ", below a header line naming the columns" if fmt != "jsonl" else ""))
    return LabelledFile(p, fmt, field or DEFAULT_TEXT_FIELDS[-1], text_pair_field, examples)
