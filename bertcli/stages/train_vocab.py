"""`bert train-vocab`: corpus → tokenizer directory (vocab.txt, tokenizer.json, transformers config files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from bertcli.artifacts import atomic_output_dir, check_output, file_fingerprints, write_manifest
from bertcli.corpus import CorpusStats, detect_format, iter_texts, require_text, resolve_inputs, scan_plain_file
from bertcli.errors import ConfigError
from bertcli.schemas import TrainVocabConfig
from bertcli.vocab import build_normalizer, build_pre_tokenizer, build_tokenizer, canonical_order, save_tokenizer

BATCH_SENTENCES = 2048

BPE_REPRODUCIBILITY = (
    "algorithm bpe uses the tokenizers library's trainer, which breaks pair-count ties by hash order "
    "(huggingface/tokenizers #1794): two runs on the same corpus can learn a few different tokens at the margin "
    "(measured on a 48 MB English corpus at vocab 30,522: 0 to 2 tokens of 30,522 differed between two runs). "
    "Ids are put in a canonical order, so runs that learn the same token set get identical files. "
    "Use algorithm: wordpiece for byte-identical vocabularies."
)


def _batches(cfg: TrainVocabConfig, paths: list[Path], stats: CorpusStats) -> Iterator[list[str]]:
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="reading corpus", dynamic_ncols=True)
    seen = 0
    batch: list[str] = []
    for sentence in iter_texts(paths, cfg.layout, cfg.format, cfg.text_field, cfg.errors, cfg.language, stats):
        batch.append(sentence)
        if len(batch) >= BATCH_SENTENCES:
            yield batch
            batch = []
            bar.update(min(stats.bytes, total) - seen)
            seen = min(stats.bytes, total)
    if batch:
        yield batch
    bar.update(max(total - seen, 0))
    bar.close()


def _train_bpe(cfg: TrainVocabConfig, paths: list[Path], stats: CorpusStats) -> list[str]:
    from tokenizers import Tokenizer, trainers
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix=cfg.continuing_subword_prefix))
    tok.normalizer = build_normalizer(cfg.lowercase, cfg.strip_accents, cfg.clean_text, cfg.handle_chinese_chars)
    tok.pre_tokenizer = build_pre_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet or None,
        special_tokens=list(cfg.special_tokens),
        continuing_subword_prefix=cfg.continuing_subword_prefix,
        show_progress=True,
    )
    if _native_readable(cfg, paths, stats):
        # The trainer's own reader is parallel and sees exactly the sentences ours would (checked above).
        tok.train([str(p) for p in paths], trainer=trainer)
    else:
        tok.train_from_iterator(_batches(cfg, paths, stats), trainer=trainer)
    return list(tok.get_vocab())


def _native_readable(cfg: TrainVocabConfig, paths: list[Path], stats: CorpusStats) -> bool:
    """True when every file is plain sentence-per-line UTF-8 that the `tokenizers` reader handles like ours.

    clean_text is needed because it is what removes the BOM, NUL bytes and \\r that our reader drops.
    """
    if cfg.layout != "sentence-per-line" or not cfg.clean_text:
        return False
    scanned = CorpusStats()
    resolve_inputs(cfg.input, scanned)  # records what expanding a directory skipped
    for path in paths:
        if detect_format(path, cfg.format) != "text" or not scan_plain_file(path, cfg.errors, scanned):
            return False
    for key, value in scanned.__dict__.items():
        setattr(stats, key, value)
    return True


def _train_wordpiece(cfg: TrainVocabConfig, paths: list[Path], stats: CorpusStats) -> list[str]:
    from bertcli.word_counts import count_words
    from bertcli.wordpiece import train_wordpiece

    word_counts = count_words(paths, cfg, stats)
    return train_wordpiece(
        word_counts,
        vocab_size=cfg.vocab_size,
        special_tokens=list(cfg.special_tokens),
        score=cfg.score,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        continuing_subword_prefix=cfg.continuing_subword_prefix,
        progress=True,
    )


def run(cfg: TrainVocabConfig, overwrite: bool = False) -> dict:
    """Train the vocabulary and write the tokenizer directory; returns the manifest."""
    stats = CorpusStats()
    paths = resolve_inputs(cfg.input, stats)  # stats records what expanding a directory skipped
    inputs = (*cfg.input, *paths)
    check_output(cfg.output, overwrite, inputs)
    if cfg.num_workers:
        # The tokenizers trainer sizes its thread pool from this variable when it first runs.
        os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.num_workers))
    with atomic_output_dir(cfg.output, overwrite, inputs) as tmp:
        if cfg.algorithm == "bpe":
            learned = _train_bpe(cfg, paths, stats)
        else:
            learned = _train_wordpiece(cfg, paths, stats)
        require_text(stats, cfg.input)
        prefix = cfg.continuing_subword_prefix
        alphabet = {t[len(prefix) :] if t.startswith(prefix) and len(t) > len(prefix) else t for t in learned}
        alphabet = {t for t in alphabet if len(t) == 1} - set(cfg.special_tokens)
        if len(learned) > cfg.vocab_size:
            raise ConfigError(
                f"key 'vocab_size': {cfg.vocab_size} is smaller than the {len(cfg.special_tokens)} special tokens "
                f"plus the corpus's alphabet ({len(learned) - len(cfg.special_tokens)} character pieces)",
                hint=f"raise vocab_size above {len(learned)}, or lower limit_alphabet",
            )
        vocab = canonical_order(learned, cfg.special_tokens, prefix) if cfg.algorithm == "bpe" else learned
        tok = build_tokenizer(
            vocab,
            lowercase=cfg.lowercase,
            strip_accents=cfg.strip_accents,
            clean_text=cfg.clean_text,
            handle_chinese_chars=cfg.handle_chinese_chars,
            continuing_subword_prefix=prefix,
            max_input_chars_per_word=cfg.max_input_chars_per_word,
        )
        save_tokenizer(
            tok,
            tmp,
            lowercase=cfg.lowercase,
            strip_accents=cfg.strip_accents,
            handle_chinese_chars=cfg.handle_chinese_chars,
            special_tokens=list(cfg.special_tokens),
        )
        special_ids = {t: tok.token_to_id(t) for t in cfg.special_tokens}
        reproducible = cfg.algorithm != "bpe"
        manifest = write_manifest(
            tmp,
            "train-vocab",
            cfg,
            stats={
                "vocab_size": len(vocab),
                "alphabet_size": len(alphabet),
                "requested_vocab_size": cfg.vocab_size,
                **stats.as_dict(),
            },
            inputs={"corpus": file_fingerprints(paths)},
            extra={
                "algorithm": cfg.algorithm,
                "score": cfg.score if cfg.algorithm == "wordpiece" else None,
                "special_token_ids": special_ids,
                "vocab_size": len(vocab),
                "reproducible": reproducible,
                "reproducibility_note": BPE_REPRODUCIBILITY if not reproducible else (
                    "deterministic: the same corpus and config give byte-identical vocab.txt and tokenizer.json"
                ),
            },
        )
    return manifest
