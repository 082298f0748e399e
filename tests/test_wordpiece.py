"""The score-based WordPiece trainer against a plain, slow implementation of the textbook loop."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertcli.wordpiece import likelihood_gain, merged_token, select_alphabet, train_wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

COURSE_SENTENCES = [
    "This is the Hugging Face Course.",
    "This chapter is about tokenization.",
    "This section shows several tokenizer algorithms.",
    "Hopefully, you will be able to understand how they are trained and generate tokens.",
]


# ------------------------------------------------------------------------------------------ the reference
def reference_loop(
    word_counts, vocab_size, special_tokens=SPECIALS, score="textbook", prefix="##", min_frequency=0, first_merges=None
):
    """The textbook loop (Hugging Face course, chapter 6), recounting everything at every step.

    Scores: textbook freq(ab)/(freq(a)·freq(b)); count freq(ab); likelihood the gain computed from counts found by
    brute force (the merge is applied to a copy of the corpus). Ties: strict ">" while scanning the pairs in the
    order they are first met (words in order, each left to right). `first_merges`, a list, receives (pair, score).
    """
    word_freqs: dict[str, int] = {}
    for w, c in word_counts:
        word_freqs[w] = word_freqs.get(w, 0) + c
    splits = {w: [w[0]] + [prefix + ch for ch in w[1:]] for w in word_freqs}
    alphabet = sorted({s for split in splits.values() for s in split})
    vocab: list[str] = []
    for t in list(special_tokens) + alphabet:
        if t not in vocab:
            vocab.append(t)

    def merge_split(split, a, b):
        i = 0
        while i < len(split) - 1:
            if split[i] == a and split[i + 1] == b:
                split = split[:i] + [merged_token(a, b, prefix)] + split[i + 2 :]
            else:
                i += 1
        return split

    while len(vocab) < vocab_size:
        letter_freqs: dict[str, int] = defaultdict(int)
        pair_freqs: dict[tuple[str, str], int] = defaultdict(int)
        for word, freq in word_freqs.items():
            split = splits[word]
            for i in range(len(split) - 1):
                pair_freqs[(split[i], split[i + 1])] += freq
            for s in split:
                letter_freqs[s] += freq
        total = sum(letter_freqs.values())
        best, best_score = None, None
        for pair, freq in pair_freqs.items():
            if freq < min_frequency:
                continue
            a, b = pair
            if score == "textbook":
                s = freq / (letter_freqs[a] * letter_freqs[b])
            elif score == "count":
                s = freq
            else:
                merges = freq
                if a == b:  # overlapping occurrences: count the merges themselves
                    merges = 0
                    for word, wf in word_freqs.items():
                        before = len(splits[word])
                        merges += (before - len(merge_split(splits[word], a, b))) * wf
                m = merged_token(a, b, prefix)
                s = likelihood_gain(merges, letter_freqs[a], letter_freqs[b], letter_freqs.get(m, 0), total, a == b)
            if best_score is None or best_score < s:
                best, best_score = pair, s
        if best is None:
            break
        if first_merges is not None:
            first_merges.append((best, best_score))
        for word in word_freqs:
            splits[word] = merge_split(splits[word], *best)
        token = merged_token(*best, prefix)
        if token not in vocab:
            vocab.append(token)
    return vocab


def bert_word_counts(sentences, lowercase=False):
    """Words in order of first appearance, split as BERT's pre-tokenizer does."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for s in sentences:
        counts.update(w for w, _ in pre.pre_tokenize_str(s.lower() if lowercase else s))
    return list(counts.items())


# ------------------------------------------------------------------------------------------ the course example
def test_course_first_merge_is_a_b_with_score_0_2():
    merges: list = []
    reference_loop(bert_word_counts(COURSE_SENTENCES), 48, first_merges=merges)
    (pair, score), *_ = merges
    assert pair == ("a", "##b")
    assert score == pytest.approx(0.2)


def test_course_vocab_70_encodes_as_the_course_says():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordPiece

    wc = bert_word_counts(COURSE_SENTENCES)
    vocab = train_wordpiece(wc, 70, SPECIALS, score="textbook")
    assert vocab == reference_loop(wc, 70)
    assert len(vocab) == 70
    assert vocab[:5] == SPECIALS
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    expected = "Th ##i ##s is th ##e Hugg ##i ##n ##g Fac ##e c ##o ##u ##r ##s ##e [UNK]".split()
    assert tok.encode("This is the Hugging Face course!").tokens == expected


# ------------------------------------------------------------------------------------------ exactness
WORD_ALPHABET = "abc#é"


@st.composite
def corpora(draw, alphabet=WORD_ALPHABET, max_words=14, max_len=7):
    words = draw(
        st.lists(st.text(alphabet=alphabet, min_size=1, max_size=max_len), min_size=1, max_size=max_words, unique=True)
    )
    counts = draw(st.lists(st.integers(1, 6), min_size=len(words), max_size=len(words)))
    return list(zip(words, counts))


@pytest.mark.parametrize("score", ["textbook", "count", "likelihood"])
@settings(max_examples=300, deadline=None)
@given(wc=corpora(), vocab_size=st.integers(0, 70), min_frequency=st.sampled_from([0, 0, 2, 3]))
def test_fast_trainer_equals_reference_loop(score, wc, vocab_size, min_frequency):
    expected = reference_loop(wc, vocab_size, score=score, min_frequency=min_frequency)
    got = train_wordpiece(wc, vocab_size, SPECIALS, score=score, min_frequency=min_frequency)
    assert got == expected


@pytest.mark.parametrize("score", ["textbook", "likelihood"])
@settings(max_examples=150, deadline=None)
@given(wc=corpora(alphabet="ab", max_words=10, max_len=9))
def test_exact_on_highly_tied_corpora(score, wc):
    # Two letters and repeated runs: many equal scores and self pairs (aa, ##a##a) whose merges overlap.
    assert train_wordpiece(wc, 60, SPECIALS, score=score) == reference_loop(wc, 60, score=score)


@pytest.mark.parametrize("score", ["textbook", "likelihood"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_exact_with_large_counts(score, data):
    # Large counts: bounds and float comparisons far from the small-integer regime.
    words = data.draw(st.lists(st.text("abcd", min_size=1, max_size=8), min_size=1, max_size=12, unique=True))
    counts = data.draw(st.lists(st.integers(1, 10**7), min_size=len(words), max_size=len(words)))
    wc = list(zip(words, counts))
    assert train_wordpiece(wc, 60, SPECIALS, score=score) == reference_loop(wc, 60, score=score)


def test_custom_prefix_and_prefix_characters_inside_words():
    wc = [("a##b", 3), ("##", 2), ("b#a#", 1), ("@@x", 2), ("x@@", 4)]
    for prefix in ("##", "@@"):
        for score in ("textbook", "likelihood", "count"):
            got = train_wordpiece(wc, 60, SPECIALS, score=score, continuing_subword_prefix=prefix)
            assert got == reference_loop(wc, 60, score=score, prefix=prefix)


def test_real_text_slice_matches_reference(tiny_corpus):
    text = tiny_corpus.read_text(encoding="utf-8")[:6000].splitlines()
    wc = bert_word_counts(text, lowercase=True)
    for score in ("textbook", "likelihood", "count"):
        assert train_wordpiece(wc, 400, SPECIALS, score=score) == reference_loop(wc, 400, score=score)


def test_pair_meeting_an_earlier_word_when_a_merge_spells_an_existing_token():
    # Merge 2 is '#' + '####' → '###', a token that already exists (the continued '#'), so the pair ('###', '##a'),
    # held by word 1 until then, meets word 0: the one path where a pair's sorted word array takes an insertion
    # (skipping it loses the pair's occurrence there). Found by search: only words of prefix characters spelled a
    # token twice, in random corpora and on en-dev.
    wc = [("###a##", 1), ("b#a", 1)]
    for score in ("count", "textbook", "likelihood"):
        assert train_wordpiece(wc, 200, SPECIALS, score=score) == reference_loop(wc, 200, score=score)


# The vocabularies of the list-and-set trainer (before its words and pairs became flat arrays, commit d999530) on the
# whole bundled Jargon File (16,475 distinct words, lowercase) at vocab 8,000 with min_frequency 2 and an alphabet
# cut to 60 of its 101 characters: sha256 of the tokens joined by newlines. The array trainer must give the same.
LIST_AND_SET_TRAINER_JARGON_8000 = {
    "count": "4eed49b25dab15ceac58e80194ed43bb3afcc761f9fa7dc89113fdf1e1df76b2",
    "textbook": "fef1ffd1bb3084823deb9c8ab33fda51d31560c815cbd1d6fb846449e4358701",
    "likelihood": "0c533d9fc0aeac50f7115944b8e95ec97663548e07da01120cbf76fb9073cb0c",
}


def whole_jargon_file_sentences() -> list[str]:
    """The bundled Jargon File in its original order: jargon-heldout.txt holds every 20th entry (SOURCE.md)."""

    def entries(path: Path) -> list[list[str]]:
        blocks = path.read_text(encoding="utf-8").split("\n\n")
        return [[line.strip() for line in b.splitlines() if line.strip()] for b in blocks if b.strip()]

    kept, held = entries(SAMPLE), entries(SAMPLE.with_name("jargon-heldout.txt"))
    kept.reverse(), held.reverse()
    sentences: list[str] = []
    for number in range(1, len(kept) + len(held) + 1):  # the 20th, 40th, ... entry was held out
        sentences += (held if number % 20 == 0 else kept).pop()
    return sentences


@pytest.mark.parametrize("score", ["count", "textbook", "likelihood"])
def test_same_vocabulary_as_the_list_and_set_trainer(score):
    wc = bert_word_counts(whole_jargon_file_sentences(), lowercase=True)
    vocab = train_wordpiece(wc, 8000, SPECIALS, score=score, min_frequency=2, limit_alphabet=60)
    assert len(vocab) == 8000
    assert hashlib.sha256("\n".join(vocab).encode()).hexdigest() == LIST_AND_SET_TRAINER_JARGON_8000[score]


# ------------------------------------------------------------------------------------------ options
def test_duplicate_words_are_summed_at_first_position():
    wc = [("ab", 1), ("cd", 2), ("ab", 3)]
    assert train_wordpiece(wc, 20, SPECIALS, score="count") == train_wordpiece(
        [("ab", 4), ("cd", 2)], 20, SPECIALS, score="count"
    )


def test_min_frequency_blocks_rare_pairs():
    wc = [("ab", 5), ("cd", 1)]
    vocab = train_wordpiece(wc, 50, SPECIALS, score="textbook", min_frequency=2)
    assert "ab" in vocab and "cd" not in vocab
    assert "cd" in train_wordpiece(wc, 50, SPECIALS, score="textbook", min_frequency=0)


def test_limit_alphabet_keeps_most_frequent_characters_and_drops_other_words():
    wc = [("aab", 10), ("zq", 1), ("ba", 3), ("q", 1)]
    assert select_alphabet(wc, 2) == {"a", "b"}
    assert select_alphabet(wc, 0) is None and select_alphabet(wc, 4) is None
    vocab = train_wordpiece(wc, 50, SPECIALS, score="count", limit_alphabet=2)
    assert not any("z" in t or "q" in t for t in vocab)
    assert vocab == reference_loop([("aab", 10), ("ba", 3)], 50, score="count")
    # A left-out word's kept characters still enter the alphabet where they stand ("##a" from "za").
    vocab = train_wordpiece([("bb", 5), ("za", 1), ("b", 2)], 50, SPECIALS, score="count", limit_alphabet=2)
    assert vocab == SPECIALS + ["##a", "##b", "b", "bb"]


def test_alphabet_larger_than_vocab_size_is_returned_whole():
    vocab = train_wordpiece([("abcdef", 1)], 3, SPECIALS)
    assert vocab == SPECIALS + ["##b", "##c", "##d", "##e", "##f", "a"]


def test_stops_when_no_pair_is_left():
    vocab = train_wordpiece([("ab", 1), ("c", 4)], 1000, SPECIALS, score="likelihood")
    assert vocab == SPECIALS + ["##b", "a", "c", "ab"]


def test_bad_arguments():
    with pytest.raises(ValueError):
        train_wordpiece([("ab", 1)], 10, SPECIALS, score="bpe")
    with pytest.raises(ValueError):
        train_wordpiece([("ab", 1)], 10, SPECIALS, continuing_subword_prefix="")


# ------------------------------------------------------------------------------------------ the likelihood score
def _log_likelihood(token_counts: Counter) -> float:
    n = sum(token_counts.values())
    return sum(c * math.log(c / n) for c in token_counts.values() if c)


@settings(max_examples=200, deadline=None)
@given(wc=corpora(alphabet="abc", max_words=8, max_len=8), pick=st.integers(0, 1000))
def test_likelihood_gain_is_the_change_in_log_likelihood(wc, pick):
    """ΔL from the closed form equals L(after) − L(before) computed from the segmented corpus."""
    splits = {w: [w[0]] + ["##" + ch for ch in w[1:]] for w, _ in wc}
    freqs = dict(wc)
    pairs = sorted({(s[i], s[i + 1]) for s in splits.values() for i in range(len(s) - 1)})
    if not pairs:
        return
    a, b = pairs[pick % len(pairs)]
    before: Counter = Counter()
    after: Counter = Counter()
    m = merged_token(a, b)
    merges = 0
    for w, split in splits.items():
        new: list[str] = []
        i = 0
        while i < len(split):
            if i + 1 < len(split) and split[i] == a and split[i + 1] == b:
                new.append(m)
                i += 2
                merges += freqs[w]
            else:
                new.append(split[i])
                i += 1
        for s in split:
            before[s] += freqs[w]
        for s in new:
            after[s] += freqs[w]
    gain = likelihood_gain(merges, before[a], before[b], before.get(m, 0), sum(before.values()), a == b)
    assert gain == pytest.approx(_log_likelihood(after) - _log_likelihood(before), rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------------------------------ acceptance scale (slow)
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "jargon.txt"


def _slice_word_counts(size_bytes: int) -> list[tuple[str, int]]:
    lines, size = [], 0
    with SAMPLE.open(encoding="utf-8") as f:
        for line in f:
            size += len(line.encode("utf-8"))
            if size > size_bytes:
                break
            lines.append(line.strip())
    return bert_word_counts([line for line in lines if line], lowercase=True)


@pytest.mark.slow
def test_200kb_slice_textbook_matches_reference_up_to_vocab_5000():
    wc = _slice_word_counts(200_000)
    expected = reference_loop(wc, 5000, score="textbook")
    # A run that stops earlier is a prefix of a longer one, so one reference run checks every size.
    for size in (1000, 2000, 5000):
        assert train_wordpiece(wc, size, SPECIALS, score="textbook") == expected[:size]


@pytest.mark.slow
@pytest.mark.parametrize("score, size_bytes", [("likelihood", 50_000), ("count", 100_000)])
def test_real_text_slice_other_scores_match_reference(score, size_bytes):
    wc = _slice_word_counts(size_bytes)  # the likelihood reference evaluates logs for every pair at every step
    assert train_wordpiece(wc, 2000, SPECIALS, score=score) == reference_loop(wc, 2000, score=score)
