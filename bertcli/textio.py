"""Reading the text files users bring to the model tools: regular files, UTF-8 lines, JSON lines, encodable text;
every problem named by file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from bertcli.errors import InputError


def parse_json_line(path: Path, line_no: int, line: str, hint: str) -> Any:
    """One line of a JSON-lines file, every way it can fail named by file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{line_no}: not valid JSON ({exc.msg})", hint=hint) from exc
    except (RecursionError, ValueError) as exc:  # brackets nested thousands deep; a number of 5,000 digits
        raise InputError(f"{path}:{line_no}: JSON too deeply nested or with a number too long to read",
                         hint=hint) from exc


def check_unicode(text: str, what: str) -> str:
    """The text, if it is Unicode that can be encoded: a lone surrogate (a broken \\ud800 escape in JSON, or bytes
    that are not UTF-8 in a command-line argument, which Python keeps as surrogates) fails inside the tokenizer
    with a TypeError that names nothing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{what} holds {text[exc.start]!r} at character {exc.start + 1}, which is not a character (a lone "
            "surrogate: a broken \\u escape in JSON, or bytes that are not UTF-8 on the command line)",
            hint="write the text as UTF-8",
        ) from None
    return text


def check_regular_file(path: Path, what: str, hint: str) -> None:
    if not path.is_file():
        raise InputError(f"{what}'{path}' " + (
            "does not exist" if not path.exists() else "is a directory" if path.is_dir()
            else "is not a regular file (a pipe or a device)"), hint=hint)


def looks_utf16(head: bytes) -> bool:
    """A byte-order mark of UTF-16, or (without one) NUL in most bytes of one parity and few of the other, as
    ASCII text has in UTF-16 (a binary file's NULs fall on both)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    half = len(head) // 2
    even, odd = head[0::2].count(0), head[1::2].count(0)
    return len(head) >= 8 and max(even, odd) > half // 2 and min(even, odd) <= half // 10


def refuse_utf16(path: Path, head: bytes) -> None:
    """An InputError naming a UTF-16 file (its first bytes `head`): UTF-16 of ASCII is valid UTF-8, NUL-interleaved,
    so no decoding error would say what it is."""
    if looks_utf16(head[:8192]):
        raise InputError(f"{path}: is UTF-16 text; bertcli reads UTF-8",
                         hint=f"convert it, e.g. iconv -f UTF-16 -t UTF-8 '{path}' > converted{path.suffix}")


def not_utf8(path: Path, line_no: int, exc: UnicodeDecodeError, head: bytes) -> InputError:
    """The error for a file that is not UTF-8, saying which encoding it likely is and how to convert it."""
    refuse_utf16(path, head)
    return InputError(f"{path}:{line_no}: not UTF-8 text ({exc.reason})",
                      hint=f"save the file as UTF-8, e.g. iconv -f CP949 -t UTF-8 '{path}' > converted{path.suffix} "
                      "(CP949 for Korean; CP1252, Shift_JIS, GB18030 for others)")


def text_lines(path: Path, what: str, hint: str = "pass a text file, one a line") -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, blank lines skipped: sentences to score, texts to classify, JSON
    lines. hint: what to pass instead of a missing file or a directory."""
    check_regular_file(path, f"{what} ", hint)
    with path.open("rb") as fh:
        refuse_utf16(path, fh.read(8192))
        fh.seek(0)
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                with path.open("rb") as again:
                    raise not_utf8(path, line_no, exc, again.read(8192)) from exc
            if line_no == 1:
                line = line.lstrip("\ufeff")
            if line.strip():
                yield line_no, line
