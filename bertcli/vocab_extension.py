"""Extending a WordPiece vocabulary for a new domain: which learned tokens to append, and how the old vocabulary
spells each of them (the pieces whose embeddings initialise its row). Pure logic: no file I/O, no torch."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence


def is_continuation(token: str, prefix: str = "##") -> bool:
    """True for a piece that continues a word (`##ing`); the bare prefix itself is a word-initial token."""
    return token.startswith(prefix) and len(token) > len(prefix)


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


def select_extension_tokens(
    old_vocab: Sequence[str],
    learned: Sequence[str],
    char_counts: Mapping[str, int],
    extra_tokens: int,
    prefix: str = "##",
) -> list[str]:
    """The tokens to append to `old_vocab`, best first, at most `extra_tokens` of them.

    `learned` is our WordPiece trainer's output on the new corpus (special tokens, then the alphabet, then one token
    per merge in merge order). The trainer takes, at each step, the pair with the highest score (count, likelihood
    gain or textbook ratio, as configured) given everything merged before, so merge order *is* its ranking: an
    earlier merge was the better one when it was made. Candidates are every learned token that the old vocabulary
    cannot already produce as a single piece (the exact string, `##` included, is not in it), ranked:

    1. single characters first, the most frequent (in `char_counts`) first, ties by code point: greedy WordPiece
       encodes a whole word as [UNK] when one of its characters is not in the vocabulary, so a missing character
       costs more than any merge can save, and a merged token holding it helps no other word;
    2. then merged tokens in the trainer's merge order.

    Nothing is returned twice; special tokens are never candidates (the old vocabulary has its own).
    """
    if extra_tokens <= 0:
        return []
    old = set(old_vocab)
    chars: list[str] = []
    merges: list[str] = []
    seen: set[str] = set()
    for token in learned:
        if token in old or token in seen:
            continue
        seen.add(token)
        core = token[len(prefix) :] if is_continuation(token, prefix) else token
        if len(core) == 1:
            chars.append(token)
        else:
            merges.append(token)
    chars.sort(key=lambda t: (-char_counts.get(t, 0), t))
    return (chars + merges)[:extra_tokens]


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
