"""Extending a WordPiece vocabulary for a new domain: which learned tokens to append, and how the old vocabulary
spells each of them (the pieces whose embeddings initialise its row). Pure logic: no file I/O, no torch."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence


def is_continuation(token: str, prefix: str = "##") -> bool:
    """True for a piece that continues a word (`##ing`); the bare prefix itself is a word-initial token."""
    return token.startswith(prefix) and len(token) > len(prefix)


def is_character(token: str, prefix: str = "##") -> bool:
    """True for a single-character piece, word-initial (`a`) or continuing (`##a`)."""
    return len(token[len(prefix) :] if is_continuation(token, prefix) else token) == 1


def character_counts(word_counts: Iterable[tuple[str, int]], prefix: str = "##") -> Counter[str]:
    """How often each single-character piece occurs in the words: the first character as itself, every other one
    with the prefix (`cat` counts `c`, `##a`, `##t`), weighted by the word's count."""
    counts: Counter[str] = Counter()
    for word, count in word_counts:
        if not word or count <= 0:
            continue
        counts[word[0]] += count
        for ch, n in Counter(word[1:]).items():
            counts[prefix + ch] += n * count
    return counts


def rank_extension_candidates(
    old_vocab: Sequence[str], learned: Sequence[str], char_counts: Mapping[str, int], prefix: str = "##"
) -> list[str]:
    """Every token worth appending to `old_vocab`, best first.

    `learned` is our WordPiece trainer's output on the new corpus (special tokens, then the alphabet, then one token
    per merge in merge order). The trainer takes, at each step, the pair with the highest score (count, likelihood
    gain or textbook ratio, as configured) given everything merged before, so merge order *is* its ranking: an
    earlier merge was the better one when it was made. Candidates are every learned token that the old vocabulary
    cannot already produce as a single piece (the exact string, `##` included, is not in it), ranked:

    1. single characters first, the most frequent (in `char_counts`) first, ties by code point: greedy WordPiece
       encodes a whole word as [UNK] when one of its characters is not in the vocabulary, so a missing character
       costs more than any merge can save, and a merged token holding it helps no other word;
    2. then merged tokens in the trainer's merge order.

    Nothing is listed twice; special tokens are never candidates (the old vocabulary has its own).
    """
    old = set(old_vocab)
    chars: list[str] = []
    merges: list[str] = []
    seen: set[str] = set()
    for token in learned:
        if token in old or token in seen:
            continue
        seen.add(token)
        if is_character(token, prefix):
            chars.append(token)
        else:
            merges.append(token)
    chars.sort(key=lambda t: (-char_counts.get(t, 0), t))
    return chars + merges


def token_uses(
    vocab: Mapping[str, int], word_counts: Iterable[tuple[str, int]], prefix: str = "##",
    max_input_chars_per_word: int = 100,
) -> Counter[int]:
    """How often the greedy WordPiece encoding of the words (weighted by their counts) uses each id of `vocab`."""
    uses: Counter[int] = Counter()
    for word, count in word_counts:
        ids = wordpiece_split(word, vocab, prefix, max_input_chars_per_word)
        for i in ids or ():
            uses[i] += count
    return uses


MAX_PRUNING_ROUNDS = 20


def select_extension_tokens(
    old_vocab: Sequence[str],
    candidates: Sequence[str],
    extra_tokens: int,
    word_counts: Sequence[tuple[str, int]],
    prefix: str = "##",
    min_uses: int = 1,
    max_input_chars_per_word: int = 100,
) -> tuple[list[str], bool]:
    """The tokens to append, at most `extra_tokens`, in the candidates' rank order (rank_extension_candidates):
    every single character among them, and each merged token that the extended vocabulary actually uses at least
    `min_uses` times on the corpus's words; and whether the candidates ran out before `extra_tokens` were found.

    The trainer's vocabulary holds every intermediate merge on the way to a word (`peop` before `people`), and
    greedy longest-match never uses one whose longer form is in the vocabulary too, old or new. So: take the best
    `extra_tokens` candidates, encode the corpus's distinct words with the old vocabulary plus them, drop the
    merged tokens used fewer than `min_uses` times (dropping a token that is never chosen changes no encoding),
    fill the gap with the next candidates, and repeat until nothing is dropped (at most MAX_PRUNING_ROUNDS rounds;
    then the unused ones are dropped without refilling). Characters are kept whatever their use: a word is [UNK]
    until all its characters are in, so a character's use depends on which other characters the cap let in.
    """
    if extra_tokens <= 0:
        return [], False
    selected = list(candidates[:extra_tokens])
    next_index = len(selected)
    ids = {t: i for i, t in enumerate(old_vocab)}
    for round_ in range(MAX_PRUNING_ROUNDS + 1):
        vocab = {**ids, **{t: len(old_vocab) + j for j, t in enumerate(selected)}}
        uses = token_uses(vocab, word_counts, prefix, max_input_chars_per_word)
        kept = [t for t in selected if uses[vocab[t]] >= min_uses or is_character(t, prefix)]
        if len(kept) == len(selected) or round_ == MAX_PRUNING_ROUNDS:
            return kept, next_index >= len(candidates) and len(kept) < extra_tokens
        refill = list(candidates[next_index : next_index + extra_tokens - len(kept)])
        next_index += len(refill)
        selected = kept + refill
    raise AssertionError("unreachable")


def wordpiece_split(
    token: str, vocab: Mapping[str, int], prefix: str = "##", max_input_chars_per_word: int = 100
) -> list[int] | None:
    """The ids of the pieces a WordPiece vocabulary splits `token` into, greedy longest-match-first as the
    `tokenizers` WordPiece model does; None where that model would give [UNK] (a character no piece covers).

    A continuation token (`##ernetes`) is spelled as the rest of a word: its first piece is looked up with the
    prefix too, which the model's own tokenize (always at the start of a word) cannot do.
    """
    cont = is_continuation(token, prefix)
    text = token[len(prefix) :] if cont else token
    if len(text) > max_input_chars_per_word:
        return None
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = len(text)
        found = None
        while end > start:
            piece = text[start:end]
            if start > 0 or cont:
                piece = prefix + piece
            found = vocab.get(piece)
            if found is not None:
                break
            end -= 1
        if found is None:
            return None
        ids.append(found)
        start = end
    return ids


def is_vocab_prefix(old_vocab: Sequence[str], new_vocab: Sequence[str]) -> bool:
    """True when `new_vocab` keeps every token of `old_vocab` at its id (and may append more)."""
    return len(old_vocab) <= len(new_vocab) and list(new_vocab[: len(old_vocab)]) == list(old_vocab)


def spell_new_tokens(
    old_vocab: Sequence[str], new_vocab: Sequence[str], prefix: str = "##", max_input_chars_per_word: int = 100
) -> list[list[int]]:
    """For each token new_vocab appends to old_vocab (in id order): the old ids of the pieces the old vocabulary
    splits it into; an empty list where the old vocabulary cannot spell it (see wordpiece_split)."""
    old_ids = {t: i for i, t in enumerate(old_vocab)}
    return [
        wordpiece_split(t, old_ids, prefix, max_input_chars_per_word) or []
        for t in new_vocab[len(old_vocab) :]
    ]
