"""NSP sentence pairs and FULL-SENTENCES packing from tokenized documents (Google BERT's semantics, fixed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Protocol, Sequence

import numpy as np

IS_NEXT = 0
"""next_sentence_label of a real continuation (the transformers convention)."""
RANDOM_NEXT = 1
"""next_sentence_label of a segment B taken from another document."""
NO_NSP_LABEL = -1
"""next_sentence_label of a packed single-segment sequence (nsp: false); never a class to train on."""

# Plan flags (bit field).
FLAG_FORCED = 1  # random next forced: a one-sentence document, no sentence before or after to pair with
FLAG_LOOKBACK = 2  # IsNext pair whose A is the sentences before a lone last sentence (see plan_document)
FLAG_SHORT = 4  # the document drew a short target length (short_seq_prob)
FLAG_FOLLOWING = 8  # IsNext pair of a one-sentence chunk whose B was taken from the sentences after it


@dataclass(frozen=True)
class PairingParams:
    """The knobs of pair construction (a subset of PairsConfig, so the pure logic needs no config object)."""

    max_seq_length: int
    short_seq_prob: float = 0.1
    nsp_probability: float = 0.5

    @property
    def max_num_tokens(self) -> int:
        """Room for A and B: [CLS] A [SEP] B [SEP] spends three tokens on specials."""
        return self.max_seq_length - 3


class DocumentStore(Protocol):
    """Tokenized documents by global index: flat tokens and sentence offsets into them."""

    def sentence_count(self, doc: int) -> int: ...

    def document(self, doc: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (T,), offsets (n_sentences + 1,) int64 into tokens) of one document."""
        ...


class UniformStream:
    """Uniform draws from a Generator, fetched in batches: a scalar numpy draw costs microseconds, this far less.

    The consumption order is fixed by the algorithm alone, so results do not depend on batching.
    """

    def __init__(self, rng: np.random.Generator, batch: int = 1024):
        self._rng = rng
        self._batch = batch
        self._buf: list[float] = []
        self._pos = 0

    def uniform(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._rng.random(self._batch).tolist()
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return u

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high], both included."""
        return low + min(int(self.uniform() * (high - low + 1)), high - low)


class PairPlan(NamedTuple):
    """One planned pair: sentence indices of the own document for A; for B, sentence indices of b_doc."""

    a_start: int
    a_stop: int
    b_doc: int
    b_start: int
    b_stop: int  # -1: "from b_start until target_b_length tokens" (random next; resolved when tokens are at hand)
    target_b_length: int
    label: int
    flags: int


def plan_document(
    sentence_lengths: Sequence[int],
    doc: int,
    num_documents: int,
    sentence_counts: Sequence[int] | np.ndarray,
    stream: UniformStream,
    params: PairingParams,
) -> list[PairPlan]:
    """Plan the sentence pairs of one document, Google's algorithm with its NSP label bias fixed.

    As create_pretraining_data.py: one target length per document (max_num_tokens, or with short_seq_prob a random
    length from 2 up); sentences gather into a chunk until it reaches the target (or the document ends); A is a
    random non-empty prefix of the chunk; with nsp_probability B is a span of another document, drawn uniformly
    from the whole corpus, and the chunk's unused sentences go back to be paired again; otherwise B is the rest of
    the chunk. Differences, so that the IsNext share stays near 1 - nsp_probability:
    - a one-sentence chunk whose coin says IsNext takes B from the sentences after it (Google forces random);
    - a one-sentence chunk at the document's end whose coin says IsNext pairs with the sentences before it as A
      (a real continuation; those sentences were already in an earlier pair of this pass);
    - only a document of a single sentence, whose coin says IsNext, gets a forced random next (FLAG_FORCED).
    The random draws depend on sentence lengths of this document and on the corpus's sentence counts only, never
    on another document's tokens, so the plan can be made before those tokens are read.
    """
    lens = list(sentence_lengths)
    n = len(lens)
    max_num_tokens = params.max_num_tokens
    target = max_num_tokens
    base_flags = 0
    if stream.uniform() < params.short_seq_prob:
        target = stream.randint(2, max_num_tokens)
        base_flags = FLAG_SHORT
    plans: list[PairPlan] = []
    chunk_start = 0
    chunk_len = 0
    i = 0
    while i < n:
        chunk_len += lens[i]
        if i == n - 1 or chunk_len >= target:
            chunk_size = i + 1 - chunk_start
            a_end = chunk_start + 1 if chunk_size == 1 else stream.randint(chunk_start + 1, i)
            a_len = sum(lens[chunk_start:a_end])
            coin_random = stream.uniform() < params.nsp_probability
            if coin_random or n == 1:
                r = stream.randint(0, num_documents - 2)
                if r >= doc:  # never the own document: skip over it
                    r += 1
                s = stream.randint(0, int(sentence_counts[r]) - 1)
                flags = base_flags | (FLAG_FORCED if not coin_random else 0)
                plans.append(PairPlan(chunk_start, a_end, r, s, -1, target - a_len, RANDOM_NEXT, flags))
                i = a_end - 1  # the chunk's unused sentences are paired again
            elif chunk_size > 1:
                plans.append(PairPlan(chunk_start, a_end, doc, a_end, i + 1, 0, IS_NEXT, base_flags))
            elif i < n - 1:
                # A lone sentence (it reached the target by itself) with sentences after it: B follows it.
                j = i + 1
                b_len = 0
                while j < n:
                    b_len += lens[j]
                    j += 1
                    if a_len + b_len >= target:
                        break
                plans.append(PairPlan(chunk_start, a_end, doc, i + 1, j, 0, IS_NEXT, base_flags | FLAG_FOLLOWING))
                i = j - 1
            else:
                # A lone last sentence: it becomes B, and the sentences before it (back to the target) become A.
                k = chunk_start
                back_len = 0
                while k > 0:
                    k -= 1
                    back_len += lens[k]
                    if back_len + lens[i] >= target:
                        break
                plans.append(PairPlan(k, chunk_start, doc, chunk_start, i + 1, 0, IS_NEXT, base_flags | FLAG_LOOKBACK))
            chunk_start = i + 1
            chunk_len = 0
        i += 1
    return plans


def truncation_counts(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    """Tokens Google's truncate_seq_pair removes from A and from B: always from the longer one (B on a tie)."""
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return 0, 0
    # Phase 1 trims the longer segment down to the other's length (B one further on a tie, as the loop does);
    # phase 2 alternates B, A, B, ... between two segments of equal length.
    if len_a > len_b:
        first = min(excess, len_a - len_b)
        cut_a, cut_b = first, 0
    else:
        first = min(excess, len_b - len_a + 1)
        cut_a, cut_b = 0, first
    rest = excess - first
    if rest:
        if len_a > len_b:  # equal now; the loop's tie rule trims B first
            cut_b += (rest + 1) // 2
            cut_a += rest // 2
        else:  # B is one shorter than A now: A first
            cut_a += (rest + 1) // 2
            cut_b += rest // 2
    return cut_a, cut_b


@dataclass
class PairsBlock:
    """Sequences built from one block of documents: flat ids with lengths, and the per-sequence scalars."""

    input_ids: np.ndarray  # (total_tokens,) token dtype, sequences back to back
    lengths: np.ndarray  # (num_sequences,) int64
    type_boundary: np.ndarray  # (num_sequences,) int32: index of B's first token (== length without B)
    next_sentence_label: np.ndarray  # (num_sequences,) int8
    stats: dict[str, int] = field(default_factory=dict)


PAIR_STAT_KEYS = (
    "pairs",
    "tokens",
    "is_next",
    "random_next",
    "forced_random_next",
    "following_pairs",
    "lookback_pairs",
    "short_target_pairs",
    "truncated_pairs",
    "truncated_tokens",
    "padding_tokens",
    "dropped_empty_pairs",
    "split_sentences",
)


def build_pairs(
    plans: Iterable[tuple[int, PairPlan]],
    store: DocumentStore,
    trunc_rng: np.random.Generator,
    params: PairingParams,
    cls_id: int,
    sep_id: int,
    dtype: np.dtype,
) -> PairsBlock:
    """Turn plans (doc index, plan) into `[CLS] A [SEP] B [SEP]` sequences, truncating as Google does.

    The truncation side (front or back, per removed token) is random: Binomial(k, 1/2) of the k removed tokens
    come off the front, the same law as Google's token-by-token coin, from `trunc_rng`.
    """
    stats = dict.fromkeys(PAIR_STAT_KEYS, 0)
    max_num_tokens = params.max_num_tokens
    cls = np.array([cls_id], dtype=dtype)
    sep = np.array([sep_id], dtype=dtype)
    pieces: list[np.ndarray] = []
    lengths: list[int] = []
    boundaries: list[int] = []
    labels: list[int] = []
    cache_doc = -1
    tokens = offsets = None
    for doc, (a0, a1, b_doc, b0, b1, target_b, label, flags) in plans:
        if doc != cache_doc:
            tokens, offsets = store.document(doc)
            cache_doc = doc
        a = tokens[offsets[a0] : offsets[a1]]
        b_tokens, b_offsets = (tokens, offsets) if b_doc == doc else store.document(b_doc)
        if b1 < 0:
            # Random next: sentences from b0 until B reaches its target length (at least one sentence).
            want = int(b_offsets[b0]) + target_b
            b1 = max(b0 + 1, int(np.searchsorted(b_offsets, want, side="left")))
            b1 = min(b1, len(b_offsets) - 1)
        b = b_tokens[b_offsets[b0] : b_offsets[b1]]
        if len(a) == 0 or len(b) == 0:  # only sentences that tokenize to nothing can cause this
            stats["dropped_empty_pairs"] += 1
            continue
        cut_a, cut_b = truncation_counts(len(a), len(b), max_num_tokens)
        if cut_a or cut_b:
            front_a = int(trunc_rng.binomial(cut_a, 0.5)) if cut_a else 0
            front_b = int(trunc_rng.binomial(cut_b, 0.5)) if cut_b else 0
            a = a[front_a : len(a) - (cut_a - front_a)]
            b = b[front_b : len(b) - (cut_b - front_b)]
            stats["truncated_pairs"] += 1
            stats["truncated_tokens"] += cut_a + cut_b
        pieces += (cls, a, sep, b, sep)
        length = len(a) + len(b) + 3
        lengths.append(length)
        boundaries.append(len(a) + 2)
        labels.append(label)
        stats["pairs"] += 1
        stats["tokens"] += length
        stats["padding_tokens"] += params.max_seq_length - length
        if label == IS_NEXT:
            stats["is_next"] += 1
        else:
            stats["random_next"] += 1
        if flags & FLAG_FORCED:
            stats["forced_random_next"] += 1
        if flags & FLAG_LOOKBACK:
            stats["lookback_pairs"] += 1
        if flags & FLAG_FOLLOWING:
            stats["following_pairs"] += 1
        if flags & FLAG_SHORT:
            stats["short_target_pairs"] += 1
    return PairsBlock(
        input_ids=np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype),
        lengths=np.asarray(lengths, dtype=np.int64),
        type_boundary=np.asarray(boundaries, dtype=np.int32),
        next_sentence_label=np.asarray(labels, dtype=np.int8),
        stats=stats,
    )


def pack_documents(
    documents: Iterable[tuple[np.ndarray, np.ndarray]],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    dtype: np.dtype,
) -> PairsBlock:
    """Full-length single segments for MLM-only training (RoBERTa's FULL-SENTENCES, packed to the last token).

    The block's documents are laid end to end with a [SEP] between documents, and the stream is cut into
    `[CLS] … [SEP]` sequences of exactly max_seq_length (the block's last one shorter): no padding, no token lost.
    A sentence that straddles a cut continues in the next sequence (counted as split_sentences); a document
    separator that would open or close a sequence is left out. Deterministic: no randomness at all.
    """
    room = max_seq_length - 2  # [CLS] … [SEP]
    stats = dict.fromkeys(PAIR_STAT_KEYS, 0)
    parts: list[np.ndarray] = []
    is_sep: list[np.ndarray] = []
    boundaries: list[np.ndarray] = []  # stream positions where a sentence starts
    pos = 0
    for tokens, offsets in documents:
        if len(tokens) == 0:
            continue
        if parts:
            parts.append(np.array([sep_id], dtype=dtype))
            is_sep.append(np.ones(1, bool))
            pos += 1
        parts.append(np.asarray(tokens, dtype=dtype))
        is_sep.append(np.zeros(len(tokens), bool))
        boundaries.append(pos + np.asarray(offsets[:-1], dtype=np.int64))
        pos += len(tokens)
    if not parts:
        empty = np.zeros(0, np.int64)
        return PairsBlock(np.zeros(0, dtype), empty, empty.astype(np.int32), empty.astype(np.int8), stats)
    stream = np.concatenate(parts)
    separator = np.concatenate(is_sep)
    cuts = np.arange(room, len(stream), room)
    starts_sentence = np.zeros(len(stream) + 1, bool)
    starts_sentence[np.concatenate(boundaries)] = True
    starts_sentence[separator.nonzero()[0]] = True
    starts_sentence[np.flatnonzero(separator) + 1] = True
    stats["split_sentences"] = int((~starts_sentence[cuts]).sum())
    seqs = []
    for lo in range(0, len(stream), room):
        hi = min(lo + room, len(stream))
        if separator[lo]:
            lo += 1
        if hi > lo and separator[hi - 1]:
            hi -= 1
        if hi > lo:
            seqs.append(stream[lo:hi])
    lengths = np.fromiter((len(q) + 2 for q in seqs), dtype=np.int64, count=len(seqs))
    out = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out[starts] = cls_id
    out[ends - 1] = sep_id
    for q, s0 in zip(seqs, starts.tolist()):
        out[s0 + 1 : s0 + 1 + len(q)] = q
    stats["pairs"] = len(seqs)
    stats["tokens"] = int(lengths.sum())
    stats["padding_tokens"] = int(max_seq_length * len(seqs) - lengths.sum())
    return PairsBlock(
        input_ids=out,
        lengths=lengths,
        type_boundary=lengths.astype(np.int32),
        next_sentence_label=np.full(len(seqs), NO_NSP_LABEL, dtype=np.int8),
        stats=stats,
    )


def share(part: int, whole: int) -> float:
    """A rounded ratio for the manifest (0.0 when there is nothing)."""
    return round(part / whole, 6) if whole else 0.0


# ---------------------------------------------------------------- tokenizing sentences, fast

def _safe_punctuation() -> frozenset[str]:
    """Typographic punctuation that a BERT pipeline treats like ASCII punctuation: a word of its own, unchanged by
    lowercasing, accent stripping and text cleaning (checked here, not assumed)."""
    import unicodedata

    chars = "’‘“”–—…‹›«»„‚•′″‐‑‒―¡¿§¶†‡⟨⟩‖·"
    return frozenset(
        c
        for c in chars
        if unicodedata.category(c).startswith("P")
        and c.lower() == c == c.upper()
        and unicodedata.normalize("NFD", c) == c
    )


class _Growing:
    """An int64 array with amortised appends (the word table of SentenceTokenizer)."""

    def __init__(self, values: list[int]):
        self.data = np.asarray(values, dtype=np.int64)
        self.size = len(values)

    def extend(self, values: list[int]) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)), dtype=np.int64)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class SentenceTokenizer:
    """Token ids of many sentences at once: the `tokenizers` pipeline's result, several times faster on plain text.

    For a BERT pipeline (BertNormalizer, BertPreTokenizer, WordPiece), a sentence of printable ASCII (plus common
    typographic punctuation such as ’ “ ” – —) with no added token in it tokenizes word by word: lowercase (if the
    normalizer does), split into runs of letters/digits and single punctuation marks, WordPiece each word — and a
    word's pieces never depend on its neighbours. So we split the whole batch with one regex and look the words up
    in a table filled by the real tokenizer (one batched call for the words not seen before). Any other sentence
    (other non-ASCII text, control characters, an added token's text, another pipeline) goes to `encode_batch`
    unchanged. The table holds at most `cache_words` words and starts over when full: memory stays bounded.
    """

    _MARK = "\n"  # sentence separator in the joined batch; never inside an accepted sentence

    def __init__(self, tokenizer, cache_words: int = 200_000):
        import json
        import re

        self.tokenizer = tokenizer
        self.cache_words = cache_words
        spec = json.loads(tokenizer.to_str())
        normalizer, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        self.fast = (
            normalizer.get("type") == "BertNormalizer"
            and pre.get("type") == "BertPreTokenizer"
            and model.get("type") == "WordPiece"
        )
        self.lowercase = bool(normalizer.get("lowercase"))
        added = [t["content"] for t in spec.get("added_tokens") or [] if t.get("content")]
        self._added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None
        self._words = re.compile(r"[a-z0-9]+|[^a-z0-9 ]" if self.lowercase else r"[A-Za-z0-9]+|[^A-Za-z0-9 ]")
        self._safe = _safe_punctuation()
        self._reset()

    def _reset(self) -> None:
        self._index: dict[str, int] = {self._MARK: 0}  # word -> row of the table
        self._ids = _Growing([-1])  # the mark's single "id" -1 ends a sentence
        self._offsets = _Growing([0, 1])  # row k's ids are _ids[_offsets[k]:_offsets[k+1]]

    def _plain(self, sentence: str) -> bool:
        if sentence.isascii():
            ok = sentence.isprintable()
        else:
            ok = sentence.isprintable() and all(c.isascii() or c in self._safe for c in set(sentence))
        return ok and not (self._added and self._added.search(sentence))

    def _lookup(self, words: list[str]) -> np.ndarray:
        """Concatenated ids of `words` (the mark gives -1)."""
        unseen = set(words).difference(self._index)
        if len(self._index) + len(unseen) > self.cache_words:
            self._reset()
            unseen = set(words).difference(self._index)
        if unseen:
            new = sorted(unseen)
            # One sequence of space-separated words (each stays one pre-token), split back by word_ids: far
            # cheaper than an Encoding per word.
            encoding = self.tokenizer.encode(" ".join(new), add_special_tokens=False)
            word_of = np.asarray(encoding.word_ids, dtype=np.int64)
            lengths = np.bincount(word_of, minlength=len(new))
            base = len(self._index)
            self._index.update(zip(new, range(base, base + len(new))))
            self._ids.extend(encoding.ids)
            self._offsets.extend((self._offsets.data[self._offsets.size - 1] + np.cumsum(lengths)).tolist())
        rows = np.fromiter(map(self._index.__getitem__, words), dtype=np.int64, count=len(words))
        offsets = self._offsets.view()
        starts, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
        return self._ids.view()[_ragged_index(starts, counts)]

    def encode(self, sentences: list[str], dtype: np.dtype = np.dtype(np.int64)) -> tuple[np.ndarray, np.ndarray]:
        """(lengths (n,) int32, ids of all sentences back to back (dtype)); no special tokens added."""
        import itertools

        n = len(sentences)
        plain = np.fromiter(map(self._plain, sentences), dtype=bool, count=n) if self.fast else np.zeros(n, bool)
        lengths = np.zeros(n, np.int64)
        fast_ids = np.zeros(0, np.int64)
        if plain.any():
            text = self._MARK.join(itertools.compress(sentences, plain)) + self._MARK
            flat = self._lookup(self._words.findall(text.lower() if self.lowercase else text))
            marks = np.flatnonzero(flat < 0)  # one mark after each sentence
            lengths[plain] = np.diff(marks, prepend=-1) - 1
            fast_ids = flat[flat >= 0]
        if plain.all():
            return lengths.astype(np.int32), fast_ids.astype(dtype, copy=False)
        slow = [e.ids for e in self.tokenizer.encode_batch(
            list(itertools.compress(sentences, ~plain)), add_special_tokens=False)]
        lengths[~plain] = np.fromiter(map(len, slow), dtype=np.int64, count=len(slow))
        out = np.empty(int(lengths.sum()), dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        out[_ragged_index(starts[plain], lengths[plain])] = fast_ids
        slow_flat = np.fromiter(itertools.chain.from_iterable(slow), dtype=np.int64)
        out[_ragged_index(starts[~plain], lengths[~plain])] = slow_flat
        return lengths.astype(np.int32), out.astype(dtype, copy=False)


def _ragged_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices starts[0]..starts[0]+counts[0]-1, starts[1]..., concatenated (a vectorised ragged gather)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(total, dtype=np.int64)
