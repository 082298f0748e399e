"""Pure pairing logic: Google's truncation, NSP label balance, never a random next from its own document."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bertcli import pairing

CLS, SEP = 2, 3
MAX_LEN = 64


class FakeStore:
    """Synthetic tokenized documents whose token ids are unique global positions (+ 100), so a token names its
    document and its place: we can tell where any segment came from."""

    def __init__(self, sentence_lengths: list[list[int]]):
        self.docs = []
        self.doc_of_token: list[int] = []
        start = 100
        for d, lens in enumerate(sentence_lengths):
            offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            tokens = np.arange(start, start + offsets[-1], dtype=np.int64)
            start += int(offsets[-1])
            self.docs.append((tokens, offsets))
        self.first = np.array([t[0] if len(t) else 0 for t, _ in self.docs])
        self.counts = np.array([len(lens) for lens in sentence_lengths])

    def sentence_count(self, doc: int) -> int:
        return int(self.counts[doc])

    def document(self, doc: int):
        return self.docs[doc]

    def doc_of(self, token: int) -> int:
        return int(np.searchsorted(self.first, token, side="right") - 1)


def _build(store: FakeStore, seed: int, params: pairing.PairingParams):
    stream = pairing.UniformStream(np.random.default_rng(seed))
    plans = []
    for d in range(len(store.docs)):
        lens = np.diff(store.docs[d][1])
        plans += [(d, p) for p in pairing.plan_document(lens, d, len(store.docs), store.counts, stream, params)]
    return plans, pairing.build_pairs(plans, store, np.random.default_rng(seed + 1), params, CLS, SEP, np.int64)


def _sequences(block: pairing.PairsBlock):
    ends = np.cumsum(block.lengths)
    for i, end in enumerate(ends):
        ids = block.input_ids[end - block.lengths[i] : end]
        yield ids, int(block.type_boundary[i]), int(block.next_sentence_label[i])


def _brute_truncation(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    cut_a = cut_b = 0
    while len_a + len_b > max_num_tokens:  # Google's truncate_seq_pair, sides aside
        if len_a > len_b:
            len_a, cut_a = len_a - 1, cut_a + 1
        else:
            len_b, cut_b = len_b - 1, cut_b + 1
    return cut_a, cut_b


def test_truncation_counts_match_googles_loop():
    for la, lb, m in itertools.product(range(40), range(40), range(1, 30)):
        assert pairing.truncation_counts(la, lb, m) == _brute_truncation(la, lb, m)


@pytest.fixture(scope="module")
def long_docs() -> FakeStore:
    """3,000 documents of 4-12 sentences of 3-40 tokens (≈ 1.6M tokens of structure, no text)."""
    rng = np.random.default_rng(7)
    return FakeStore([rng.integers(3, 41, size=rng.integers(4, 13)).tolist() for _ in range(3000)])


def test_nsp_balance_structure_and_provenance(long_docs):
    params = pairing.PairingParams(MAX_LEN, short_seq_prob=0.1, nsp_probability=0.5)
    plans, block = _build(long_docs, 1, params)
    n = len(block.lengths)
    assert n > 10_000 and block.stats["pairs"] == n
    is_next_share = block.stats["is_next"] / n
    assert abs(is_next_share - 0.5) <= 0.02, is_next_share
    assert block.stats["forced_random_next"] == 0  # no one-sentence documents here
    assert block.lengths.max() <= MAX_LEN
    for ids, boundary, label in _sequences(block):
        assert ids[0] == CLS and ids[boundary - 1] == SEP and ids[-1] == SEP
        a, b = ids[1 : boundary - 1], ids[boundary:-1]
        assert len(a) >= 1 and len(b) >= 1
        assert not np.isin(a, (CLS, SEP)).any() and not np.isin(b, (CLS, SEP)).any()
        doc_a = long_docs.doc_of(int(a[0]))
        assert long_docs.doc_of(int(a[-1])) == doc_a  # A is one document's span
        doc_b = long_docs.doc_of(int(b[0]))
        if label == pairing.IS_NEXT:
            assert doc_b == doc_a and b[0] > a[-1]  # B really continues A
        else:
            assert doc_b != doc_a  # never a "random" next from its own document


def test_same_seed_same_pairs_other_seed_other_pairs(long_docs):
    params = pairing.PairingParams(MAX_LEN)
    _, a = _build(long_docs, 3, params)
    _, b = _build(long_docs, 3, params)
    _, c = _build(long_docs, 4, params)
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.next_sentence_label, b.next_sentence_label)
    assert not np.array_equal(a.input_ids[: len(c.input_ids)], c.input_ids[: len(a.input_ids)])


def test_short_documents_stay_balanced_and_only_single_sentence_documents_are_forced():
    # Google's rule forces a random next for every one-sentence chunk: on 2-sentence documents that gives 33% IsNext.
    rng = np.random.default_rng(11)
    store = FakeStore([rng.integers(2, 10, size=2).tolist() for _ in range(4000)] + [[5]] * 400)
    _, block = _build(store, 5, pairing.PairingParams(MAX_LEN))
    n = block.stats["pairs"]
    assert 0.45 <= block.stats["is_next"] / n <= 0.55
    # Forced randoms: only the single-sentence documents whose coin said IsNext (≈ 200 of 400).
    assert 150 <= block.stats["forced_random_next"] <= 250
    assert block.stats["lookback_pairs"] > 0


def test_one_sentence_chunk_takes_b_from_the_sentences_after_it():
    # Every sentence is longer than the target, so every chunk holds one sentence; IsNext must still happen.
    store = FakeStore([[80, 70, 90, 75]] * 300)
    _, block = _build(store, 2, pairing.PairingParams(MAX_LEN, short_seq_prob=0.0))
    assert block.stats["following_pairs"] > 0
    assert 0.4 <= block.stats["is_next"] / block.stats["pairs"] <= 0.6
    assert block.lengths.max() == MAX_LEN and block.stats["truncated_pairs"] == block.stats["pairs"]


def test_truncation_trims_both_ends_at_random():
    store = FakeStore([[200, 200]] * 2 + [[200, 200]])
    params = pairing.PairingParams(16, short_seq_prob=0.0, nsp_probability=0.0)
    starts = set()
    for seed in range(20):
        _, block = _build(store, seed, params)
        ids, boundary, _ = next(_sequences(block))
        a = ids[1 : boundary - 1]
        assert len(ids) == 16 and np.all(np.diff(a) == 1)  # a contiguous window of the sentence
        starts.add(int(a[0]) - int(store.docs[0][0][0]))
    # Each removed token comes off the front or the back by a coin: the kept window wanders inside the sentence.
    assert len(starts) > 5 and min(starts) > 0 and max(starts) < 200 - 6


def test_pack_documents_keeps_every_token_in_order():
    rng = np.random.default_rng(3)
    store = FakeStore([rng.integers(1, 30, size=rng.integers(1, 8)).tolist() for _ in range(200)] + [[150]])
    block = pairing.pack_documents(store.docs, MAX_LEN, CLS, SEP, np.int64)
    assert block.lengths.max() <= MAX_LEN and np.mean(block.lengths[:-1] == MAX_LEN) > 0.9  # full length
    assert (block.next_sentence_label == pairing.NO_NSP_LABEL).all()
    assert np.array_equal(block.type_boundary, block.lengths)
    body = np.concatenate([ids[1:-1] for ids, _, _ in _sequences(block)])
    text = body[body != SEP]
    assert np.array_equal(text, np.concatenate([t for t, _ in store.docs]))  # no token lost, none repeated
    assert block.stats["split_sentences"] >= 1 and block.stats["padding_tokens"] < MAX_LEN


def _reference(tok, sentences):
    encodings = tok.encode_batch(sentences, add_special_tokens=False)
    return [len(e.ids) for e in encodings], [i for e in encodings for i in e.ids]


@pytest.mark.parametrize("variant", ["as-trained", "cased", "added-tokens", "small-cache"])
def test_sentence_tokenizer_gives_exactly_the_tokenizers_ids(tiny_tokenizer, tiny_corpus, multilingual_corpus, variant):
    from tokenizers import Tokenizer, normalizers

    tok = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    if variant == "cased":
        tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    if variant == "added-tokens":
        tok.add_special_tokens(["[MASK]", "[SEP]", "<doc>"])
    fast = pairing.SentenceTokenizer(tok, cache_words=50 if variant == "small-cache" else 200_000)
    assert fast.fast
    rng = np.random.default_rng(1)
    alphabet = list("abcXYZ019 .,;'\"()[]-_/\\#@!?") + list("’“”–—…")
    alphabet += ["\t", "\x07", "é", "ß", "İ", "한", "北", "\u00a0"]
    random_texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(400)]
    sentences = (
        tiny_corpus.read_text().splitlines()
        + multilingual_corpus.read_text().splitlines()
        + random_texts
        + ["a [MASK] b", "x<doc>y", "[sep] lower", "HELLO World", "x" * 150, ""]
    )
    for start in range(0, len(sentences), 97):  # several batches: the cache carries over (and restarts if small)
        batch = sentences[start : start + 97]
        lengths, ids = fast.encode(batch, np.dtype(np.int64))
        ref_lengths, ref_ids = _reference(tok, batch)
        assert lengths.tolist() == ref_lengths and ids.tolist() == ref_ids, batch


def test_sentence_tokenizer_falls_back_for_other_pipelines(tiny_tokenizer):
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = pairing.SentenceTokenizer(tok)
    assert not fast.fast
    batch = ["plain ascii text here.", "another one!"]
    lengths, ids = fast.encode(batch)
    assert (lengths.tolist(), ids.tolist()) == _reference(tok, batch)
