"""Word counting for WordPiece training: the same words the saved tokenizer sees, in corpus order, any worker count."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertcli import word_counts
from bertcli.schemas import TrainVocabConfig
from bertcli.vocab import build_normalizer, build_pre_tokenizer
from bertcli.word_counts import count_words, split_words

NORMALIZATIONS = [
    dict(lowercase=True, strip_accents="none", clean_text=True, handle_chinese_chars=True),
    dict(lowercase=False, strip_accents="none", clean_text=False, handle_chinese_chars=False),
    dict(lowercase=True, strip_accents="latin", clean_text=True, handle_chinese_chars=True),
    dict(lowercase=True, strip_accents="all", clean_text=False, handle_chinese_chars=True),
]


def library_words(sentences, norm):
    normalizer = build_normalizer(
        norm["lowercase"], norm["strip_accents"], norm["clean_text"], norm["handle_chinese_chars"]
    )
    pre = build_pre_tokenizer()
    return [w for s in sentences for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(s))]


# Every ASCII character (controls and the blanks Python and Rust disagree on included), plus non-ASCII
# whitespace, punctuation, accents, Hangul, kana and CJK.
CHARS = st.one_of(
    st.characters(max_codepoint=127),
    st.sampled_from(
        list("\u00a0\u2003\u3000\u0085\u2014\u201c\u201d\u00bf\u00e9\u0301\ud55c\uae00\u304c\u6f22\u00df\u212a\ufffd")
    ),
)


@pytest.mark.parametrize("norm", NORMALIZATIONS)
@settings(max_examples=150, deadline=None)
@given(sentences=st.lists(st.text(CHARS, max_size=30), max_size=6))
def test_split_words_equals_the_tokenizers_library(norm, sentences):
    word_counts.init_word_splitter(tuple(norm.values()))
    assert word_counts._fast_ascii_split and word_counts._ascii_table is not None  # both fast paths are tested
    assert split_words(sentences) == library_words(sentences, norm)


def test_fast_path_self_check_rejects_a_different_pre_tokenizer():
    from tokenizers import pre_tokenizers

    assert not word_counts._fast_split_ok(pre_tokenizers.Whitespace())


def test_ascii_table_refuses_a_normalizer_that_is_not_one_character_to_one():
    from tokenizers import normalizers

    assert word_counts.ascii_translation(normalizers.Replace("a", "aa")) is None  # one to two
    assert word_counts.ascii_translation(normalizers.Replace("ab", "x")) is None  # depends on the neighbour
    assert word_counts.ascii_translation(normalizers.Replace("a", "\u00e4")) is None  # leaves ASCII
    assert word_counts.ascii_translation(normalizers.Lowercase()) is not None


def _cfg(paths, workers, **norm):
    return TrainVocabConfig(input=[str(p) for p in paths], num_workers=workers, **norm)


def test_counts_are_the_same_for_any_worker_count_and_chunking(tiny_corpus, multilingual_corpus):
    paths = [tiny_corpus, multilingual_corpus]
    cfg1 = _cfg(paths, 1)
    one = count_words(paths, cfg1)
    sentences = [line.strip() for p in paths for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = list(Counter(library_words(sentences, NORMALIZATIONS[0])).items())
    assert one == expected  # counts and first-appearance order
    assert count_words(paths, cfg1, chunk_chars=500) == expected
    assert word_counts.counting_processes(tiny_corpus.stat().st_size, 2, chunk_chars=1000) == 2
    assert count_words(paths, _cfg(paths, 2), chunk_chars=1000) == expected


def test_a_counting_process_is_started_only_for_enough_text():
    mb = 1 << 20
    assert word_counts.counting_processes(12 * mb - 1, 2) == 1  # its fixed memory would outweigh the words
    assert word_counts.counting_processes(48 * mb, 2) == 2
    assert word_counts.counting_processes(48 * mb, 8) == 4
    assert word_counts.counting_processes(25 * mb, 2) == 2
    assert word_counts.counting_processes(0, 4) == 1


def test_counting_records_corpus_stats(tiny_corpus):
    from bertcli.corpus import CorpusStats

    stats = CorpusStats()
    result = count_words([tiny_corpus], _cfg([tiny_corpus], 1), stats)
    assert stats.sentences > 0 and stats.bytes == tiny_corpus.stat().st_size
    assert sum(c for _, c in result) > stats.sentences
