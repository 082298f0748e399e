"""Columnar corpora: Parquet files, Arrow IPC files and Hugging Face `save_to_disk` directories, read with pyarrow
(an optional extra) one text column at a time, a few MB per batch, so memory stays flat whatever the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from bertcli.errors import InputError, one_line

if TYPE_CHECKING:
    from bertcli.corpus import CorpusStats

# Rows are decoded and turned into Python strings this many bytes of text at a time (estimated from the file's
# metadata), so a row group or record batch of any size costs a bounded amount of memory. Reading en-small's
# Parquet ×1, ×10 and ×30 (a row group per copy), the reader's peak anonymous memory was +21, +22 and +24 MiB
# with 1 MiB batches, +23, +37 and +37 MiB with 8 MiB ones (pyarrow's allocator keeps what it has used).
RECORD_CHUNK_BYTES = 1 << 20
_MAX_RECORD_CHUNK_ROWS = 65536
_ARROW_FILE_MAGIC = b"ARROW1"  # an Arrow IPC file starts with it; a stream does not
PYARROW_HINT = "install the extra: pip install 'bertcli[parquet]' (it adds pyarrow)"


def hf_dataset_files(directory: Path) -> list[Path] | None:
    """The data files of a Hugging Face `datasets` directory (save_to_disk), in order; None if it is not one.

    A Dataset directory holds state.json ({"_data_files": [{"filename": …}, …]}) and Arrow stream files; a
    DatasetDict directory holds dataset_dict.json ({"splits": [...]}) and a Dataset directory per split, read in
    that order.
    """
    splits_file = directory / "dataset_dict.json"
    if splits_file.is_file():
        splits = _json_object(splits_file).get("splits")
        if isinstance(splits, list) and all(isinstance(s, str) for s in splits):
            files: list[Path] = []
            for split in splits:
                split_files = hf_dataset_files(directory / split)
                if split_files is None:
                    raise InputError(
                        f"{splits_file}: split '{split}' has no dataset directory ({directory / split}/state.json)",
                        hint="save the dataset again with save_to_disk",
                    )
                files.extend(split_files)
            return files
    state_file = directory / "state.json"
    if not state_file.is_file():
        return None
    state = _json_object(state_file)
    if "_data_files" not in state:
        return None  # some other program's state.json
    entries = state["_data_files"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("filename"), str)
                                                for e in entries):
        raise InputError(
            f"{state_file}: key '_data_files' is not a list of {{\"filename\": …}} entries",
            hint="save the dataset again with save_to_disk",
        )
    files = [directory / e["filename"] for e in entries]
    for path in files:
        if not path.is_file():
            raise InputError(f"{state_file}: names data file '{path.name}', which is missing",
                             hint="copy the whole dataset directory")
    return files


def _json_object(path: Path) -> dict:
    """The JSON object in `path`, or {} when it holds none (another program's file of the same name)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def require_pyarrow(path: Path) -> Any:
    """The pyarrow module, or an InputError naming the extra that installs it."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"{path}: reading Parquet and Arrow files needs pyarrow, which is not installed", hint=PYARROW_HINT
        ) from exc
    return pyarrow


def iter_records(
    path: Path, kind: str, text_field: str, errors: str, stats: CorpusStats
) -> Iterator[str | list[str]]:
    """The `text_field` value of each row of a Parquet (kind parquet) or Arrow IPC (kind arrow) file, in order.

    A value is a string, or a list of strings for a list column. Only that column is decoded, about
    RECORD_CHUNK_BYTES of text at a time. A null or non-string value is an InputError naming the row (counted from
    0, as pyarrow and pandas count) and its row group or record batch.
    """
    pa = require_pyarrow(path)
    parts = _parquet_parts(pa, path, text_field) if kind == "parquet" else _arrow_parts(pa, path, text_field)
    first_row = 0
    for where, column in parts:
        rows_per_chunk = _rows_per_chunk(len(column), column.nbytes)
        for start in range(0, len(column), rows_per_chunk):
            # slice (free), then convert: a record batch written whole can be as large as its file
            chunk = _as_plain_text(pa, column.slice(start, rows_per_chunk))
            is_list = not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type))
            values = _chunk_values(pa, chunk, is_list, (path, where, first_row + start, text_field), errors, stats)
            stats.lines += len(values)
            yield from values
        first_row += len(column)


def _rows_per_chunk(rows: int, nbytes: int) -> int:
    """Rows that hold about RECORD_CHUNK_BYTES, if `rows` rows take `nbytes`."""
    return max(1, min(_MAX_RECORD_CHUNK_ROWS, RECORD_CHUNK_BYTES * rows // max(nbytes, 1)))


def _parquet_parts(pa: Any, path: Path, text_field: str) -> Iterator[tuple[str, Any]]:
    """("row group g", column array) batches of the text column, a few MB each."""
    try:
        parquet = pa.parquet.ParquetFile(str(path), pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"{path}: not a readable Parquet file ({one_line(exc)})",
            hint="check that the file is complete; if it is not Parquet, set format to what it is",
        ) from exc
    with parquet:
        _check_text_column(pa, path, parquet.schema_arrow, text_field)
        for group in range(parquet.num_row_groups):
            meta = parquet.metadata.row_group(group)
            # the group's uncompressed bytes per row (all columns: an upper bound for ours) sets the batch size
            rows = _rows_per_chunk(meta.num_rows, meta.total_byte_size)
            where = f"row group {group}"
            try:
                # one thread: with pyarrow's thread pool (each thread keeps its own allocator arenas) the same
                # reads took +21, +62 and +82 MiB: memory grew with the file instead of staying flat
                batches = parquet.iter_batches(batch_size=rows, row_groups=[group], columns=[text_field],
                                               use_threads=False)
                for batch in batches:
                    yield where, batch.column(0)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(
                    f"{path}: {where}: cannot read column '{text_field}' ({one_line(exc)})",
                    hint="the file is damaged or incomplete: write it again",
                ) from exc


def _arrow_parts(pa: Any, path: Path, text_field: str) -> Iterator[tuple[str, Any]]:
    """("record batch i", column array) for each batch of an Arrow IPC file or stream, memory-mapped."""
    try:
        source = pa.memory_map(str(path), "r")
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: cannot open ({one_line(exc)})", hint="check the file's permissions") from exc
    with source:
        try:
            if source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                source.seek(0)
                reader = pa.ipc.open_stream(source)  # what Hugging Face datasets writes
                batches = iter(reader)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{path}: not a readable Arrow IPC file or stream ({one_line(exc)})",
                hint="check that the file is complete; if it is not Arrow, set format to what it is",
            ) from exc
        _check_text_column(pa, path, reader.schema, text_field)
        index = reader.schema.get_field_index(text_field)
        number = 0
        while True:
            where = f"record batch {number}"
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(
                    f"{path}: {where}: cannot read ({one_line(exc)})",
                    hint="the file is damaged or incomplete: write it again",
                ) from exc
            if batch is None:
                return
            yield where, batch.column(index)
            number += 1


def _check_text_column(pa: Any, path: Path, schema: Any, text_field: str) -> None:
    if schema.get_field_index(text_field) < 0:
        raise InputError(
            f"{path}: no column '{text_field}' (columns: {', '.join(schema.names) or 'none'})",
            hint="set text_field to the column that holds the text",
        )
    value_type = schema.field(text_field).type
    if _is_text(pa, value_type):
        return
    if _is_list(pa, value_type) and _is_text(pa, value_type.value_type):
        return
    raise InputError(
        f"{path}: column '{text_field}' is {value_type}, expected a string or a list of strings",
        hint="set text_field to the column that holds the text",
    )


def _is_text(pa: Any, value_type: Any) -> bool:
    return pa.types.is_string(value_type) or pa.types.is_large_string(value_type) or pa.types.is_string_view(value_type)


def _is_list(pa: Any, value_type: Any) -> bool:
    types = pa.types
    return (types.is_list(value_type) or types.is_large_list(value_type) or types.is_fixed_size_list(value_type)
            or types.is_list_view(value_type) or types.is_large_list_view(value_type))


def _as_plain_text(pa: Any, column: Any) -> Any:
    """string / large_string, or a large_list of them: the types that compute kernels and to_pylist all take."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    if _is_text(pa, column.type):
        return column.cast(pa.large_string())
    value_type = column.type.value_type
    if pa.types.is_large_list(column.type) and not pa.types.is_string_view(value_type):
        return column
    return column.cast(pa.large_list(pa.large_string()))


def _chunk_values(pa: Any, chunk: Any, is_list: bool, at: tuple, errors: str, stats: CorpusStats) -> list:
    """The chunk's values as Python strings (lists of strings), after checking for nulls; text bytes counted."""
    path, where, first_row, text_field = at
    compute = pa.compute
    if chunk.null_count:
        row = first_row + compute.index(chunk.is_null(), True).as_py()
        raise InputError(
            f"{path}: row {row} ({where}): column '{text_field}' is null, expected a string",
            hint="drop the rows without text, or fill them",
        )
    strings = compute.list_flatten(chunk) if is_list else chunk
    if is_list and strings.null_count:
        position = compute.index(strings.is_null(), True).as_py()
        row = first_row + compute.list_parent_indices(chunk)[position].as_py()
        raise InputError(
            f"{path}: row {row} ({where}): column '{text_field}' holds a null sentence, expected strings",
            hint="drop the null entries from the lists",
        )
    stats.bytes += compute.sum(compute.binary_length(strings)).as_py() or 0
    try:
        return chunk.to_pylist()
    except UnicodeDecodeError:
        return _decode_rows(pa, chunk, is_list, at, errors, stats)


def _decode_rows(pa: Any, chunk: Any, is_list: bool, at: tuple, errors: str, stats: CorpusStats) -> list:
    """Rows decoded one by one: Parquet and Arrow promise UTF-8, but not every writer checks what it writes."""
    path, where, first_row, text_field = at
    raw = chunk.cast(pa.large_list(pa.large_binary()) if is_list else pa.large_binary()).to_pylist()
    values: list = []
    for offset, value in enumerate(raw):
        items = value if is_list else [value]
        try:
            texts = [item.decode("utf-8") for item in items]
        except UnicodeDecodeError as exc:
            if errors == "strict":
                raise InputError(
                    f"{path}: row {first_row + offset} ({where}): column '{text_field}': invalid UTF-8 ({exc.reason})",
                    hint="write the file with valid UTF-8, or set errors: replace to read bad bytes as U+FFFD",
                ) from exc
            stats.replaced_invalid_utf8_lines += 1
            texts = [item.decode("utf-8", "replace") for item in items]
        values.append(texts if is_list else texts[0])
    return values
