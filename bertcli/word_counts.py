"""Word counts of a corpus for WordPiece training: streamed, split exactly as the saved tokenizer splits text."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from bertcli.corpus import CorpusStats, iter_texts
from bertcli.executors import open_executor

# Sentences are sent to the workers in chunks of about this many characters.
CHUNK_CHARS = 1 << 20
# A counting process costs about 45 MB that no word needs (its interpreter and imports, ~27 MB, and
# multiprocessing's resource tracker, 12 MB, which then lives for the whole run) and half a second to start, so
# one is started for each CHUNKS_PER_WORKER chunks (12 MB) of the corpus. Measured against the bare tokenizers
# trainer on English (docs/benchmarks.md, "Counting in one process when the corpus is small"): on 12 MB one
# process peaks at 1.05x its memory, two at 1.35x; on 25 MB one at 0.95x but 1.35x its time, two at 1.13x and
# 1.13x.
CHUNKS_PER_WORKER = 12
# A worker splits and counts a chunk this many sentences at a time: the word list of a whole 1 MB chunk would hold
# about 220,000 strings (13 MB per worker); at 256 sentences it stays under 1 MB, at the same speed.
SPLIT_SENTENCES = 256

# BertPreTokenizer on ASCII text: split at Rust's char::is_whitespace (the six ASCII blanks below; U+001C..U+001F
# are not whitespace there, unlike Python's str.split) and isolate ASCII punctuation. The regex does the same in
# one C pass; non-ASCII sentences go through the library itself. _fast_split_ok() checks this on every start.
_ASCII_PUNCT = r"!-/:-@\[-`{-~"
_ASCII_WORD = re.compile(r"[^\t\n\x0b\x0c\r " + _ASCII_PUNCT + r"]+|[" + _ASCII_PUNCT + r"]")
_PROBE = "".join(chr(i) for i in range(128)) + " a.b,c  d\te\nf-g_h(i)j\x1cK\x1dl\x1f m\x7fn 1.5 x'y"

# Per-process state, set by init_word_splitter (in each worker, or in the caller): the tokenizer's normalizer and
# pre-tokenizer, whether the regex split may stand in for the pre-tokenizer on ASCII text, and the bytes.translate
# table (and bytes to delete) that stands in for the normalizer on ASCII text, or None.
_normalizer: Any = None
_pre_tokenizer: Any = None
_fast_ascii_split = False
_ascii_table: tuple[bytes, bytes] | None = None


def normalizer_args(cfg: Any) -> tuple:
    return (cfg.lowercase, cfg.strip_accents, cfg.clean_text, cfg.handle_chinese_chars)


def init_word_splitter(normalizer_args: tuple) -> None:
    from tokenizers import pre_tokenizers

    from bertcli.vocab import build_normalizer, build_pre_tokenizer

    global _normalizer, _pre_tokenizer, _fast_ascii_split, _ascii_table
    _pre_tokenizer = build_pre_tokenizer()
    _normalizer = build_normalizer(*normalizer_args)
    _fast_ascii_split = isinstance(_pre_tokenizer, pre_tokenizers.BertPreTokenizer) and _fast_split_ok(_pre_tokenizer)
    _ascii_table = ascii_translation(_normalizer) if _fast_ascii_split else None


def ascii_translation(normalizer: Any) -> tuple[bytes, bytes] | None:
    """A bytes.translate table and the bytes it deletes that do to ASCII text what `normalizer` does, or None.

    The library's normalizer tracks an alignment for every character and costs about 8 µs per 1,000 characters,
    a quarter of the counting time on English; bytes.translate does the same in a memcpy. The table is read from
    the normalizer itself, one ASCII character at a time, and kept only if each maps to at most one ASCII character
    and the whole probe string normalizes to the same as the table makes of it. That check catches a rule that
    looks at neighbours only if the probe holds its pattern: the table is for normalizers that work character by
    character on ASCII, as every one vocab.build_normalizer makes does (BERT's cleaning, lowercasing, accent
    stripping, NFD/NFC); the property test in tests/test_wordpiece_counts.py holds them to it.
    """
    mapped = [normalizer.normalize_str(chr(i)) for i in range(128)]
    if any(len(m) > 1 or not m.isascii() for m in mapped):
        return None
    table = bytes(ord(m) if m else i for i, m in enumerate(mapped)) + bytes(range(128, 256))
    deleted = bytes(i for i, m in enumerate(mapped) if not m)
    translation = (table, deleted)
    return translation if _translate(_PROBE, translation) == normalizer.normalize_str(_PROBE) else None


def _translate(ascii_text: str, translation: tuple[bytes, bytes]) -> str:
    return ascii_text.encode("ascii").translate(*translation).decode("ascii")


def _fast_split_ok(pre_tokenizer: Any) -> bool:
    """The regex split agrees with the library's pre-tokenizer on every ASCII character."""
    return _ASCII_WORD.findall(_PROBE) == [w for w, _ in pre_tokenizer.pre_tokenize_str(_PROBE)]


def split_words(sentences: Sequence[str]) -> list[str]:
    """Normalize each sentence and split it into words, as the tokenizer does (the worker state must be set).

    Runs of ASCII sentences are joined and normalized and split in one C pass each (the table and the regex that
    init_word_splitter checked against the library); other sentences go through the library one by one.
    """
    normalize = _normalizer.normalize_str
    pre_tokenize = _pre_tokenizer.pre_tokenize_str
    table = _ascii_table
    words: list[str] = []
    raw_run: list[str] = []  # ASCII sentences not yet normalized (with the table)
    for sentence in sentences:
        if table is not None and sentence.isascii():
            raw_run.append(sentence)
            continue
        if raw_run:  # keep corpus order: words of earlier sentences first
            words.extend(_ASCII_WORD.findall(_translate("\n".join(raw_run), table)))
            raw_run = []
        text = normalize(sentence)
        if _fast_ascii_split and text.isascii():
            words.extend(_ASCII_WORD.findall(text))
        else:
            words.extend(w for w, _ in pre_tokenize(text))
    if raw_run:
        words.extend(_ASCII_WORD.findall(_translate("\n".join(raw_run), table)))
    return words


def _count_chunk(task: tuple[list[str], int]) -> tuple[dict[str, int], int]:
    """Word counts of a chunk of sentences (in order of first appearance: the parent merges chunks in corpus
    order), leaving out words longer than max_word_chars, and how many such words were left out."""
    sentences, max_word_chars = task
    counts: Counter[str] = Counter()
    for start in range(0, len(sentences), SPLIT_SENTENCES):
        counts.update(split_words(sentences[start : start + SPLIT_SENTENCES]))
    # BERT encodes a word over max_input_chars_per_word as [UNK]: counting it would only spend vocabulary slots on
    # pieces of junk (one 1 MB base64 line took 1,506 of 2,000 slots), and merging it costs minutes.
    long_words = [w for w in counts if len(w) > max_word_chars]
    skipped = sum(counts.pop(w) for w in long_words)
    return dict(counts), skipped


def _chunks(sentences_iter, chunk_chars: int):
    chunk: list[str] = []
    size = 0
    for s in sentences_iter:
        chunk.append(s)
        size += len(s)
        if size >= chunk_chars:
            yield chunk
            chunk = []
            size = 0
    if chunk:
        yield chunk


def counting_processes(total_bytes: int, num_workers: int, chunk_chars: int = CHUNK_CHARS) -> int:
    """How many of num_workers processes count a corpus of total_bytes on this machine: one per CHUNKS_PER_WORKER
    chunks, at least one (the caller itself). total_bytes is the files' size, so a compressed corpus (.gz, .zst,
    Parquet) gets fewer processes than its text would: slower to count, never more memory."""
    return max(1, min(num_workers, total_bytes // (CHUNKS_PER_WORKER * chunk_chars)))


def count_words(
    paths: Sequence[str | Path], cfg: Any, stats: CorpusStats | None = None, chunk_chars: int = CHUNK_CHARS
) -> list[tuple[str, int]]:
    """(word, count) pairs in order of each word's first appearance in the corpus.

    The corpus is streamed; `cfg` gives the reading options (layout, format, text_field, errors, language), the
    normalization (lowercase, strip_accents, clean_text, handle_chinese_chars), max_input_chars_per_word (longer
    words are left out and counted in stats.long_words_skipped), num_workers and the executor keys. Chunks of
    sentences are counted by up to num_workers processes (counting_processes), or as Ray tasks (executor ray), and
    merged in corpus order, so the result is identical for any number of workers and either executor. Memory: the
    distinct words plus a few chunks in flight.
    """
    from tqdm.auto import tqdm

    stats = stats if stats is not None else CorpusStats()
    total_bytes = sum(Path(p).stat().st_size for p in paths)
    sentences = iter_texts(paths, cfg.layout, cfg.format, cfg.text_field, cfg.errors, cfg.language, stats)
    counts: Counter[str] = Counter()
    args = normalizer_args(cfg)
    workers = max(1, int(getattr(cfg, "num_workers", 1) or 1))
    if getattr(cfg, "executor", "local") == "local":  # executor ray was asked for: use it as asked
        workers = counting_processes(total_bytes, workers, chunk_chars)
    # The executor first: a missing Ray is one line, not one line after a progress bar.
    # The main process counts too (one spawned worker fewer): it would otherwise only merge, and every spawned
    # worker is an interpreter with its own imports (docs/benchmarks.md, "Memory against the number of distinct
    # words").
    with open_executor(cfg, num_workers=workers, caller_works=True) as pool:  # bounded read-ahead: flat memory
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="counting words", dynamic_ncols=True)
        seen_bytes = 0
        try:
            tasks = ((chunk, cfg.max_input_chars_per_word) for chunk in _chunks(sentences, chunk_chars))
            for part, skipped in pool.map(_count_chunk, tasks, init_word_splitter, (args,)):
                counts.update(part)  # in corpus order: a word's first appearance decides its place
                stats.long_words_skipped += skipped
                done = min(stats.bytes, total_bytes)
                bar.update(done - seen_bytes)
                seen_bytes = done
        finally:
            bar.update(max(total_bytes - seen_bytes, 0))
            bar.close()
    return list(counts.items())
