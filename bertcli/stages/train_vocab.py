"""`bert train-vocab`: corpus → tokenizer directory (vocab.txt, tokenizer.json, transformers config files)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

from bertcli.artifacts import atomic_output_dir, check_output, file_fingerprints, write_manifest
from bertcli.corpus import CorpusStats, check_what_was_read, detect_format, iter_texts, resolve_inputs, scan_plain_file
from bertcli.errors import ConfigError, warn
from bertcli.schemas import TrainVocabConfig
from bertcli.vocab import (
    BaseTokenizer,
    build_normalizer,
    build_pre_tokenizer,
    build_tokenizer,
    canonical_order,
    is_jamo_vocabulary,
    read_base_tokenizer,
    save_tokenizer,
)

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

    return _wordpiece_from_counts(cfg, count_words(paths, cfg, stats), cfg.vocab_size)


def _wordpiece_from_counts(cfg: TrainVocabConfig, word_counts: list[tuple[str, int]], vocab_size: int) -> list[str]:
    """Our WordPiece trainer with the config's settings, stopping at vocab_size tokens."""
    from bertcli.wordpiece import train_wordpiece

    return train_wordpiece(
        word_counts,
        vocab_size=vocab_size,
        special_tokens=list(cfg.special_tokens),
        score=cfg.score,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        continuing_subword_prefix=cfg.continuing_subword_prefix,
        progress=True,
    )


# The keys a tokenizer extending another takes from it (TrainVocabConfig name → BaseTokenizer attribute).
KEPT_FROM_BASE = ("lowercase", "strip_accents", "clean_text", "handle_chinese_chars", "continuing_subword_prefix",
                  "max_input_chars_per_word", "special_tokens")


def settings_from_base(cfg: TrainVocabConfig, base: BaseTokenizer) -> TrainVocabConfig:
    """cfg with the base tokenizer's normalization, prefix and special tokens. A key left at its default takes the
    base's value; a key set to anything else must agree with it (a config cannot tell a default written out from
    one left out, so `lowercase: true` over a cased base is taken as the default, and the base wins)."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
                for f in dataclasses.fields(TrainVocabConfig)}
    if cfg.vocab_size != defaults["vocab_size"]:
        raise ConfigError(
            f"key 'vocab_size': {cfg.vocab_size} is not used with extend_from: the new vocabulary is the "
            f"{len(base.vocab):,} tokens of '{base.path}' plus at most extra_tokens",
            hint="leave vocab_size out and set extra_tokens",
        )
    changes = {}
    for key in KEPT_FROM_BASE:
        given, kept = getattr(cfg, key), getattr(base, key)
        if given != kept and given != defaults[key]:
            raise ConfigError(
                f"key '{key}': {given!r} conflicts with the tokenizer extended, '{base.path}' ({key} {kept!r})",
                hint=f"leave {key} out to keep the extended tokenizer's, or train a new vocabulary without extend_from",
            )
        changes[key] = kept
    return dataclasses.replace(cfg, **changes)


def _extend(cfg: TrainVocabConfig, base: BaseTokenizer, paths: list[Path], stats: CorpusStats) -> list[str]:
    """The tokens to append to base.vocab: our WordPiece trainer on the corpus ranks the candidates
    (vocab_extension.rank_extension_candidates: new characters, then merges in the order the score chose them), and
    the best that the extended vocabulary would use at least min_frequency times (at least once) are kept
    (vocab_extension.select_extension_tokens)."""
    from bertcli.vocab_extension import character_counts, rank_extension_candidates, select_extension_tokens
    from bertcli.word_counts import count_words

    word_counts = count_words(paths, cfg, stats)
    chars = character_counts(word_counts, cfg.continuing_subword_prefix)
    # Merge order does not depend on where training stops, so a short run that yields enough candidates gives the
    # same answer as a long one. The long one (room for every old token to be learned again on top) is taken when
    # the short one's candidates run out and the corpus has more pairs.
    first = len(cfg.special_tokens) + len(chars) + 3 * cfg.extra_tokens
    for budget in (first, first + len(base.vocab)):
        learned = _wordpiece_from_counts(cfg, word_counts, budget)
        candidates = rank_extension_candidates(base.vocab, learned, chars, cfg.continuing_subword_prefix)
        appended, ran_out = select_extension_tokens(
            base.vocab, candidates, cfg.extra_tokens, word_counts, cfg.continuing_subword_prefix,
            min_uses=max(cfg.min_frequency, 1), max_input_chars_per_word=cfg.max_input_chars_per_word,
        )
        if not ran_out or len(learned) < budget:  # enough, or the corpus has no more pairs to merge
            break
    return appended


def run(cfg: TrainVocabConfig, overwrite: bool = False) -> dict:
    """Train the vocabulary (or extend one, extend_from) and write the tokenizer directory; returns the manifest."""
    given = cfg
    base = read_base_tokenizer(cfg.extend_from) if cfg.extend_from else None
    if base is not None:
        cfg = settings_from_base(cfg, base)
    stats = CorpusStats()
    paths = resolve_inputs(cfg.input, stats)  # stats records what expanding a directory skipped
    inputs = (*cfg.input, *paths)
    check_output(cfg.output, overwrite, inputs, stage="train-vocab")
    if cfg.num_workers:
        # The tokenizers trainer sizes its thread pool from this variable when it first runs.
        os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.num_workers))
    with atomic_output_dir(cfg.output, overwrite, inputs, stage="train-vocab") as tmp:
        appended: list[str] = []
        if base is not None:
            appended = _extend(cfg, base, paths, stats)
            learned = base.vocab + appended
        elif cfg.algorithm == "bpe":
            learned = _train_bpe(cfg, paths, stats)
        else:
            learned = _train_wordpiece(cfg, paths, stats)
        check_what_was_read(stats, cfg.input)
        prefix = cfg.continuing_subword_prefix
        alphabet = {t[len(prefix) :] if t.startswith(prefix) and len(t) > len(prefix) else t for t in learned}
        alphabet = {t for t in alphabet if len(t) == 1} - set(cfg.special_tokens)
        if base is None and len(learned) > cfg.vocab_size:
            raise ConfigError(
                f"key 'vocab_size': {cfg.vocab_size} is smaller than the {len(cfg.special_tokens)} special tokens "
                f"plus the corpus's alphabet ({len(learned) - len(cfg.special_tokens)} character pieces)",
                hint=f"raise vocab_size to at least {len(learned)}, or lower limit_alphabet",
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
            **({"model_max_length": base.model_max_length} if base is not None else {}),
        )
        special_ids = {t: tok.token_to_id(t) for t in cfg.special_tokens}
        reproducible = cfg.algorithm != "bpe"
        extension = {} if base is None else {
            "extended_from": {"path": str(base.path), "vocab_sha256": base.vocab_sha256, "vocab_size": len(base.vocab)},
            "added_tokens": len(appended),
            "requested_extra_tokens": cfg.extra_tokens,
            "kept_from_base": {key: getattr(cfg, key) for key in KEPT_FROM_BASE},
        }
        manifest = write_manifest(
            tmp,
            "train-vocab",
            given,
            stats={
                "vocab_size": len(vocab),
                "alphabet_size": len(alphabet),
                "requested_vocab_size": cfg.vocab_size if base is None else len(base.vocab) + cfg.extra_tokens,
                **stats.as_dict(),
            },
            inputs={"corpus": file_fingerprints(paths),
                    **({"extend_from": extension["extended_from"]} if base is not None else {})},
            extra={
                **extension,
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
    if base is None and len(vocab) < cfg.vocab_size:
        # Not an error (the model is sized from the vocabulary), but a user who asked for 30,522 should know.
        if cfg.min_frequency > 1:
            why = f"more pieces that occur at least min_frequency ({cfg.min_frequency}) times"
            remedy = "more text, or a lower min_frequency, gives more"
        else:  # 0 and 1 keep every piece already: only more text gives more
            why, remedy = "more pieces", "more text gives more"
        warn(f"the vocabulary has {len(vocab):,} tokens, not the {cfg.vocab_size:,} of vocab_size: the corpus gave no "
             f"{why}; a model trained with it has this smaller vocabulary ({remedy})")
    if is_jamo_vocabulary(vocab):
        if cfg.strip_accents == "all":  # decomposed on purpose, but never meant for Hangul
            warn("strip_accents: all spells Hangul as jamo (and drops the voicing marks of kana): a vocabulary of "
                 "jamo wastes its pieces; set strip_accents: none or latin for Korean (docs/korean.md)")
        else:  # NFD Korean: composed text would read as [UNK]
            warn("the vocabulary spells Hangul as jamo: the corpus is in decomposed Unicode (NFD), and composed "
                 "Korean text will read as [UNK]; compose the corpus to NFC and train again (docs/korean.md)")
    return manifest
