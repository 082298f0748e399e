"""Score-based WordPiece training (textbook, likelihood or count score): exact, deterministic and incremental."""

from __future__ import annotations

import bisect
import heapq
import math
from array import array
from collections import Counter
from typing import Collection, Iterable, Literal, Sequence

ScoreName = Literal["textbook", "likelihood", "count"]
SCORES: tuple[str, ...] = ("textbook", "likelihood", "count")

# The trainer rebuilds its heap and floor watches when their entries outnumber the live pairs' by this factor, so
# stale entries never dominate memory.
_HEAP_SLACK = 3
# Bits of a heap version: pair_version is an int32 array, so a version never outgrows them.
_VERSION_BITS = 31


def merged_token(left: str, right: str, prefix: str = "##") -> str:
    """The token a merge of `left` and `right` makes: `a` + `##b` → `ab`, `##a` + `##b` → `##ab`."""
    return left + right[len(prefix) :] if right.startswith(prefix) else left + right


def _xlogx_decrease(c: int, k: int) -> float:
    """f(c - k) - f(c) for f(x) = x·ln x, 0 <= k <= c, without the cancellation of the naive difference."""
    if k == 0:
        return 0.0
    if k == c:
        return -c * math.log(c)
    return (c - k) * math.log1p(-k / c) - k * math.log(c)


def _xlogx_increase(c: int, k: int) -> float:
    """f(c + k) - f(c) for f(x) = x·ln x, c >= 0, k >= 0."""
    if k == 0:
        return 0.0
    if c == 0:
        return k * math.log(k)
    return k * math.log(c + k) + c * math.log1p(k / c)


def likelihood_gain(merges: int, count_left: int, count_right: int, count_merged: int, total: int, same: bool) -> float:
    """Exact change of the corpus's unigram log-likelihood (nats) when a pair is merged `merges` times.

    L = Σ_s c_s·ln(c_s / N) = Σ_s f(c_s) - f(N) with f(x) = x·ln x. A merge performed k times changes only
    c_left, c_right (each by -k; by -2k when both are the same token), c_merged (+k; it may already exist) and
    N (-k), so ΔL = Δf(c_left) + Δf(c_right) + Δf(c_merged) - Δf(N). See docs/wordpiece.md for the derivation.
    The evaluation order is fixed, so the same counts always give the same float.
    """
    if same:
        gain = _xlogx_decrease(count_left, 2 * merges)
    else:
        gain = _xlogx_decrease(count_left, merges) + _xlogx_decrease(count_right, merges)
    return (gain + _xlogx_increase(count_merged, merges)) - _xlogx_decrease(total, merges)


def select_alphabet(word_counts: Collection[tuple[str, int]], limit_alphabet: int) -> set[str] | None:
    """The characters kept when the alphabet is limited: the `limit_alphabet` most frequent (ties: lower code
    point first); None when there is no limit (0) or the corpus has no more distinct characters than that."""
    if limit_alphabet <= 0:
        return None
    chars: set[str] = set()
    for word, _ in word_counts:
        chars.update(word)
    if len(chars) <= limit_alphabet:
        return None
    char_counts: Counter[str] = Counter()
    for word, count in word_counts:
        for ch, n in Counter(word).items():
            char_counts[ch] += n * count
    ranked = sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {ch for ch, _ in ranked[:limit_alphabet]}


def train_wordpiece(
    word_counts: Sequence[tuple[str, int]] | Iterable[tuple[str, int]],
    vocab_size: int,
    special_tokens: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    score: ScoreName = "likelihood",
    min_frequency: int = 0,
    limit_alphabet: int = 0,
    continuing_subword_prefix: str = "##",
    progress: bool = False,
) -> list[str]:
    """Learn a WordPiece vocabulary from word counts; returns the tokens in id order.

    word_counts: (word, count) in order of the word's first appearance in the corpus (the tie rule depends on it).
    The vocabulary is the special tokens, then the initial alphabet (first characters and prefixed following
    characters, sorted by code point), then one token per merge in merge order (a merge whose token is already
    present adds nothing). Each step merges the pair with the highest score:
      textbook    freq(ab) / (freq(a)·freq(b))                  (Hugging Face course, chapter 6)
      likelihood  exact gain in the unigram log-likelihood of the training corpus (see likelihood_gain)
      count       freq(ab), BPE's criterion
    Ties go to the pair met first when scanning the words in order, each left to right. Training stops at
    vocab_size tokens or when no pair is left. min_frequency > 0: a pair occurring fewer times is never merged.
    limit_alphabet > 0: only that many characters (the most frequent) are kept, and words containing any other
    character are left out of training (greedy WordPiece encodes such words as the unknown token anyway); the
    kept characters of those words still enter the alphabet.
    If the special tokens and the alphabet alone exceed vocab_size, they are all returned (the caller decides).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if vocab_size < 0 or min_frequency < 0 or limit_alphabet < 0:
        raise ValueError("vocab_size, min_frequency and limit_alphabet must be >= 0")
    if not continuing_subword_prefix:
        raise ValueError("continuing_subword_prefix must not be empty")
    # The summed counts live only while the trainer is built: it keeps the words as symbol arrays, not strings.
    trainer = _Trainer(_summed(word_counts), score, min_frequency, limit_alphabet, continuing_subword_prefix)
    return trainer.train(vocab_size, list(special_tokens), progress)


def _summed(word_counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Word → total count, in order of first appearance (a word listed twice is counted at its first place)."""
    summed: dict[str, int] = {}
    for word, count in word_counts:
        summed[word] = summed.get(word, 0) + count
    return summed


class _Trainer:
    """Incremental pair statistics over the distinct words, with a lazily invalidated max-heap of pair scores.

    Symbols are interned by their string (two merges that spell the same token make the same symbol, as in the
    textbook loop). Memory grows with the distinct words' characters and pairs, so everything kept per character
    or per pair lives in flat typed arrays (1 to 8 bytes an entry) rather than one Python object each:

    - Words: the kept words are laid end to end, one slot per character (a *position*): word w holds positions
      word_start[w] .. word_start[w + 1] - 1. A symbol lives at the position of its first character: sym[p] is
      its id (-1 at the other positions of a merged symbol), and its length in characters is span[p] and also
      span at its last position, so the next symbol starts at p + span[p] and the previous one at
      p - span[p - 1]. A merge keeps the left symbol's position, so positions never move: their order is the
      scan order of the tie rule, and a pair's first occurrence is a position.
    - Pairs: a pair (x, y) is the int key x·shift + y; pair_id maps each present pair to its index into the
      per-pair arrays: pair_count, pair_first (lower bound of its first position), pair_version (heap version),
      pair_left / pair_right (x, y; pair_left -1 for a free index) and the words holding it, a superset (a word
      is not removed when it loses the pair): pair_words[i], a sorted array of word indices, or, while it is
      None, the one word pair_word[i] (most pairs are held by one word: an array object would cost 80 bytes
      more). The index of a pair that disappears is reused by the next new pair, so the arrays are as long as
      the most pairs ever present at once.
    - Heap entries: for the count score an entry is one int packing (-count, first position, pair, version) in
      that order of significance (40 bytes on en-dev, against 152 for a tuple and its items); for the other
      scores the tuple (-bound, first position, pair, version).

    Heap invariant: every mergeable pair has exactly one current entry (its version) whose key
    (-bound, first position) is <= the pair's true key (-score, first position): the bound is an upper bound of
    the score (see _bound), the position a lower bound of the first occurrence. Changes that can only raise the
    true key (a count going down for the count score, N shrinking, a merged token getting rarer, the first
    occurrence being merged away) are left lazy and repaired when the entry surfaces; everything else pushes a
    new entry: a changed count (textbook, likelihood), a symbol falling below a floor that a bound assumed
    (watched per symbol), a merged token becoming more frequent (likelihood), an earlier first occurrence.
    pair_version[i] > 0 is the version of pair i's current entry; <= 0 (minus the last version) means it has
    none; versions only grow, so an older entry never passes for the current one.
    """

    def __init__(
        self, word_counts: dict[str, int], score: str, min_frequency: int, limit_alphabet: int, prefix: str
    ) -> None:
        self.score = score
        self.min_frequency = max(min_frequency, 1)
        self.prefix = prefix
        keep = select_alphabet(word_counts.items(), limit_alphabet)
        self.sym_str: list[str] = []
        self.sym_index: dict[str, int] = {}
        self.sym_freq: list[int] = []
        # int32 positions unless the words hold 2^31 characters or more.
        self.pos_type = "i" if sum(len(word) for word in word_counts) < 2**31 else "q"
        sym = array("i")  # (positions,) symbol ids: at most the alphabet plus one per merge
        word_start = array(self.pos_type)  # (words + 1,)
        freqs = array("q")  # (words,) corpus count of each kept word
        max_word_chars = 0
        cont_cache: dict[str, int] = {}
        first_cache: dict[str, int] = {}
        for word, count in word_counts.items():
            if count <= 0 or not word:
                continue
            if keep is not None and not keep.issuperset(word):
                # Left out of training, but its kept characters still enter the alphabet in the positions they
                # take (first, or ##-continued), as the tokenizers trainer's alphabet would have them.
                for i, ch in enumerate(word):
                    if ch in keep:
                        self._intern(ch if i == 0 else prefix + ch)
                continue
            word_start.append(len(sym))
            sid = first_cache.get(word[0])
            if sid is None:
                sid = first_cache[word[0]] = self._intern(word[0])
            sym.append(sid)
            for ch in word[1:]:
                sid = cont_cache.get(ch)
                if sid is None:
                    sid = cont_cache[ch] = self._intern(prefix + ch)
                sym.append(sid)
            freqs.append(count)
            max_word_chars = max(max_word_chars, len(word))
        num_positions = len(sym)
        word_start.append(num_positions)
        # (positions,) symbol lengths: one byte for words up to 255 characters (train-vocab's are at most 100).
        span_type = "B" if max_word_chars < 1 << 8 else "H" if max_word_chars < 1 << 16 else "i"
        span = array(span_type, [1]) * num_positions
        self.sym, self.span, self.word_start, self.freqs = sym, span, word_start, freqs
        freq = [0] * len(self.sym_str)
        for w, count in enumerate(freqs):
            for s in sym[word_start[w] : word_start[w + 1]]:
                freq[s] += count
        self.sym_freq = freq
        self.total = sum(freq)
        # Every merge removes at least one symbol occurrence, so there are fewer merges than characters.
        self.shift = 1 << max(20, (2 * num_positions + 2).bit_length())
        # Packed count-score heap entries: a field for a position and one for a pair index (fewer pairs are ever
        # made than the initial ones plus two per merge site, each at most one per position), the count stored
        # as count_cap - count so that a higher count sorts first.
        self.pos_bits = num_positions.bit_length()
        self.pair_bits = (3 * num_positions).bit_length()
        self.count_cap = self.total

    def _intern(self, s: str) -> int:
        sid = self.sym_index.get(s)
        if sid is None:
            sid = self.sym_index[s] = len(self.sym_str)
            self.sym_str.append(s)
            self.sym_freq.append(0)
        return sid

    # ---------------------------------------------------------------- pair statistics
    def _build_pairs(self) -> None:
        shift = self.shift
        sym, word_start, freqs = self.sym, self.word_start, self.freqs
        self.pair_id: dict[int, int] = {}
        self.pair_count = array("q")
        self.pair_first = array(self.pos_type)
        self.pair_version = array("i")
        self.pair_left = array("i")
        self.pair_right = array("i")
        self.pair_word = array("i")
        self.pair_words: list[array | None] = []
        self.free_pairs: list[int] = []  # indices of pairs that disappeared, to reuse
        self.num_queued = 0  # pairs with a current heap entry
        self.dirty: set[int] = set()  # pairs whose pair_first may be below their true first position
        # likelihood: merges performed for a self pair (x, x) (a run of L x's merges floor(L/2) times), and
        # the pairs whose merged token already exists (its frequency enters the gain).
        self.self_merges: dict[int, int] = {}
        self.result_pairs: dict[str, set[int]] = {}
        self.pair_result: dict[int, str] = {}
        pair_id, count, one, words = self.pair_id, self.pair_count, self.pair_word, self.pair_words
        for w, f in enumerate(freqs):
            lo, hi = word_start[w], word_start[w + 1]
            x = sym[lo]
            for p in range(lo + 1, hi):
                y = sym[p]
                i = pair_id.get(x * shift + y)
                if i is None:
                    self._new_pair(x, y, f, p - 1, w)
                else:
                    count[i] += f
                    # Words are visited in order: the arrays stay sorted.
                    ws = words[i]
                    if ws is None:
                        if one[i] != w:
                            words[i] = array("i", (one[i], w))
                    elif ws[-1] != w:
                        ws.append(w)
                x = y
        if self.score == "likelihood":
            for w, f in enumerate(freqs):
                for pk, k in _self_pair_merges(sym[word_start[w] : word_start[w + 1]], shift).items():
                    i = pair_id[pk]
                    self.self_merges[i] = self.self_merges.get(i, 0) + k * f

    def _new_pair(self, x: int, y: int, count: int, first: int, w: int) -> int:
        """Index a pair that has just appeared (count, first position, the word holding it); returns its index."""
        if self.free_pairs:
            # A reused index keeps its (negated) last version: its stale heap entries stay stale.
            i = self.free_pairs.pop()
            self.pair_count[i] = count
            self.pair_first[i] = first
            self.pair_left[i] = x
            self.pair_right[i] = y
            self.pair_word[i] = w
        else:
            i = len(self.pair_count)
            self.pair_count.append(count)
            self.pair_first.append(first)
            self.pair_version.append(0)
            self.pair_left.append(x)
            self.pair_right.append(y)
            self.pair_word.append(w)
            self.pair_words.append(None)
        self.pair_id[x * self.shift + y] = i
        if self.score == "likelihood":
            m = merged_token(self.sym_str[x], self.sym_str[y], self.prefix)
            self.pair_result[i] = m
            self.result_pairs.setdefault(m, set()).add(i)
        return i

    def _score(self, i: int) -> float:
        """Pair i's score now."""
        c = self.pair_count[i]
        if self.score == "count":
            return float(c)
        x, y = self.pair_left[i], self.pair_right[i]
        fr = self.sym_freq
        if self.score == "textbook":
            return c / (fr[x] * fr[y])
        same = x == y
        m = self.sym_index.get(self.pair_result[i])
        k = self.self_merges[i] if same else c
        return likelihood_gain(k, fr[x], fr[y], fr[m] if m is not None else 0, self.total, same)

    def _bound(self, i: int, exact: float, slack: float) -> tuple[float, int, int]:
        """An upper bound of pair i's score, about `exact + slack`, and the floors (Fx, Fy) it assumes.

        Every score grows as the frequency of a part of the pair falls (likelihood also shrinks as N falls), so
        the score computed with the parts' frequencies lowered to floors bounds it from above for as long as
        the parts stay at or above their floors and the pair's count (and merged token's frequency) are
        unchanged: the trainer watches the floors and pushes the pair again when one is crossed. A part's
        frequency is never below the pair's count (twice its merges, for a self pair), so floors go no lower.
        """
        c = self.pair_count[i]
        x, y = self.pair_left[i], self.pair_right[i]
        fr = self.sym_freq
        same = x == y
        if self.score == "textbook":
            # k/(Fx·Fy) = exact/r² with F = c·r: choose r² = exact / (exact + slack).
            r = math.sqrt(exact / (exact + slack)) if slack > 0 else 1.0
            fx = min(fr[x], max(c, math.ceil(fr[x] * r)))
            fy = fx if same else min(fr[y], max(c, math.ceil(fr[y] * r)))
            return c / (fx * fy), fx, fy
        m = self.sym_index.get(self.pair_result[i])
        k = self.self_merges[i] if same else c
        cm = fr[m] if m is not None else 0
        # (Floors are clamped to the current frequency: rounding must never put one above it.)
        # d/dF [f(F-k) - f(F)] = ln(1 - k/F) >= -k/(F-k), so lowering F from c to k(c+d)/(k+d) adds at most d.
        if same:
            kx = 2 * k
            fx = fr[x] if slack <= 0 else min(fr[x], max(kx, math.ceil(kx * (fr[x] + slack) / (kx + slack))))
            return likelihood_gain(k, fx, fx, cm, self.total, True), fx, fx
        d = slack / 2
        fx = fr[x] if d <= 0 else min(fr[x], max(k, math.ceil(k * (fr[x] + d) / (k + d))))
        fy = fr[y] if d <= 0 else min(fr[y], max(k, math.ceil(k * (fr[y] + d) / (k + d))))
        return likelihood_gain(k, fx, fy, cm, self.total, False), fx, fy

    def _exact_first(self, i: int) -> int:
        """Position of pair i's first occurrence in scan order (drops the words before it from its word array)."""
        words = self.pair_words[i]
        candidates = words if words is not None else (self.pair_word[i],)
        x, y = self.pair_left[i], self.pair_right[i]
        sym, span, word_start = self.sym, self.span, self.word_start
        j = 0
        while True:
            w = candidates[j]
            p, hi = word_start[w], word_start[w + 1]
            while True:
                try:
                    p = sym.index(x, p, hi)
                except ValueError:
                    break
                q = p + span[p]
                if q < hi and sym[q] == y:
                    if j:  # (only an array holds more than one word)
                        del words[:j]
                    return p
                p += 1
            j += 1

    # ---------------------------------------------------------------- heap
    def _dequeue(self, i: int) -> None:
        """Pair i has no current heap entry any more (its entries and watches become stale)."""
        if self.pair_version[i] > 0:
            self.pair_version[i] = -self.pair_version[i]
            self.num_queued -= 1

    def _push(self, i: int, exact: float | None = None) -> None:
        """Give pair i a fresh heap entry (a new version; older entries and watches become stale)."""
        c = self.pair_count[i]
        if c < self.min_frequency:
            self._dequeue(i)
            return
        v = self.pair_version[i]
        if v <= 0:
            self.num_queued += 1
        v = abs(v) + 1
        self.pair_version[i] = v
        if self.score == "count":
            heapq.heappush(self.heap, self._packed_entry(c, self.pair_first[i], i, v))
            return
        if exact is None:
            exact = self._score(i)
        # A pair far below the current best can take a loose bound: it is looked at again only when the best
        # comes down to it or a floor is crossed.
        slack = (self.best_score - exact) / 2 if self.best_score > exact else 0.0
        if slack == math.inf:
            slack = 0.0
        ub, fx, fy = self._bound(i, exact, slack)
        heapq.heappush(self.heap, (-ub, self.pair_first[i], i, v))
        x, y = self.pair_left[i], self.pair_right[i]
        watch = self.watch
        heapq.heappush(watch[x], (-fx, i, v))
        if y != x:
            heapq.heappush(watch[y], (-fy, i, v))
        self.num_watches += 2

    def _packed_entry(self, count: int, first: int, i: int, v: int) -> int:
        """A count-score heap entry: these ints compare as the tuples (-count, first, i, v) would."""
        return ((((self.count_cap - count) << self.pos_bits | first) << self.pair_bits | i) << _VERSION_BITS) | v

    def _entry_key(self, entry: int | tuple) -> tuple[float, int]:
        """(-bound, first position) of a heap entry."""
        if isinstance(entry, tuple):
            return entry[0], entry[1]
        rest = entry >> (_VERSION_BITS + self.pair_bits)
        return float((rest >> self.pos_bits) - self.count_cap), rest & ((1 << self.pos_bits) - 1)

    def _entry_pair(self, entry: int | tuple) -> tuple[int, int]:
        """(pair index, version) of a heap entry."""
        if isinstance(entry, tuple):
            return entry[2], entry[3]
        return (entry >> _VERSION_BITS) & ((1 << self.pair_bits) - 1), entry & ((1 << _VERSION_BITS) - 1)

    def _crossed(self, s: int) -> list[int]:
        """Pairs whose bound assumed a floor that symbol s has now fallen below."""
        out = []
        watch = self.watch[s]
        f = self.sym_freq[s]
        version = self.pair_version
        while watch and -watch[0][0] > f:
            _, i, v = heapq.heappop(watch)
            if version[i] == v:
                out.append(i)
        return out

    def _rebuild_heap(self) -> None:
        """All entries afresh (start, and whenever stale entries pile up)."""
        self.heap = []
        self.watch = [[] for _ in self.sym_str]
        self.num_watches = 0
        for i in self.pair_id.values():
            self._dequeue(i)
        count, min_frequency = self.pair_count, self.min_frequency
        mergeable = [i for i in self.pair_id.values() if count[i] >= min_frequency]
        if self.best_score == math.inf and mergeable:
            self.best_score = max(self._score(i) for i in mergeable)
        for i in mergeable:
            self._push(i)

    def _pop_best(self) -> int | None:
        """The mergeable pair with the highest score, ties to the first met; None when none is left.

        Entries surface in order of their keys (-upper bound, lower bound of the first position); exact scores
        are computed until the next key cannot beat the best exact (score, position), so the winner has been
        seen. First positions are made exact only where a tie needs them.
        """
        heap = self.heap
        version = self.pair_version
        count = self.pair_count
        first = self.pair_first
        dirty = self.dirty
        min_frequency = self.min_frequency
        seen: list[tuple[int, float]] = []
        best = -1
        best_score = -math.inf
        best_pos = 0
        while heap:
            if best >= 0:
                top_bound, top_first = self._entry_key(heap[0])
                if top_bound > -best_score:
                    break
                if top_bound == -best_score:
                    if best in dirty:
                        best_pos = first[best] = self._exact_first(best)
                        dirty.discard(best)
                    if top_first > best_pos:
                        break
            i, v = self._entry_pair(heapq.heappop(heap))
            if version[i] != v:
                continue
            if count[i] < min_frequency:
                self._dequeue(i)
                continue
            e = self._score(i)
            seen.append((i, e))
            if e > best_score:
                best, best_score, best_pos = i, e, first[i]
            elif e == best_score:
                if best in dirty:
                    best_pos = first[best] = self._exact_first(best)
                    dirty.discard(best)
                if i in dirty:
                    first[i] = self._exact_first(i)
                    dirty.discard(i)
                if first[i] < best_pos:
                    best, best_pos = i, first[i]
        if best < 0:
            return None
        self.best_score = best_score
        for i, e in seen:
            if i != best:
                self._push(i, e)  # a fresh bound: N and the floors have moved
        self._dequeue(best)
        return best

    # ---------------------------------------------------------------- merging
    def _merge(self, merged: int) -> tuple[str, int]:
        """Merge pair `merged` in every word holding it; returns (merged token, times merged).

        Only the pairs next to each merge site change: (L, a) → (L, m) and (b, R) → (m, R). The words are
        edited in place: m takes a's position, b's position is emptied. Word arrays are supersets (a word is
        not removed when it loses a pair; it is skipped when visited), which saves a scan of the word after
        each edit.
        """
        shift = self.shift
        a, b = self.pair_left[merged], self.pair_right[merged]
        m_str = merged_token(self.sym_str[a], self.sym_str[b], self.prefix)
        existed = m_str in self.sym_index
        m = self._intern(m_str)
        likelihood = self.score == "likelihood"
        sym, span, word_start, freqs = self.sym, self.span, self.word_start, self.freqs
        pair_id, count, first, dirty = self.pair_id, self.pair_count, self.pair_first, self.dirty
        one, words, pair_left = self.pair_word, self.pair_words, self.pair_left  # pair_left[i] < 0: i is free
        up: set[int] = set()
        down: set[int] = set()
        self_syms = (a, m) if a == b else (a, b, m)
        self_delta: dict[int, int] = {}  # self pair key → change of its merges
        merges_total = 0
        for w in words[merged] if words[merged] is not None else (one[merged],):
            lo, hi = word_start[w], word_start[w + 1]
            try:
                p = sym.index(a, lo, hi)
            except ValueError:
                continue
            f = freqs[w]
            if likelihood:
                live = [s for s in sym[lo:hi] if s >= 0]
                for x in self_syms:
                    if live.count(x) > 1:
                        self_delta[x * shift + x] = self_delta.get(x * shift + x, 0) - f * _run_merges(live, x)
            k = 0
            while True:
                q = p + span[p]
                if q < hi and sym[q] == b:
                    if p > lo:
                        pos = p - span[p - 1]
                        left = sym[pos]
                        i = pair_id[left * shift + a]
                        count[i] -= f
                        down.add(i)
                        if first[i] == pos:
                            dirty.add(i)
                        i = pair_id.get(left * shift + m)
                        if i is None:
                            i = self._new_pair(left, m, f, pos, w)
                        else:
                            count[i] += f
                            ws = words[i]
                            if ws is None:
                                if one[i] != w:
                                    words[i] = array("i", sorted((one[i], w)))
                            elif ws[-1] < w:
                                ws.append(w)
                            elif ws[-1] != w:
                                _insert_word(ws, w)
                            if pos < first[i]:
                                first[i] = pos
                                dirty.discard(i)
                        up.add(i)
                    r = q + span[q]
                    if r < hi:
                        right = sym[r]
                        i = pair_id[b * shift + right]
                        count[i] -= f
                        down.add(i)
                        if first[i] == q:
                            dirty.add(i)
                        i = pair_id.get(m * shift + right)
                        if i is None:
                            i = self._new_pair(m, right, f, p, w)
                        else:
                            count[i] += f
                            ws = words[i]
                            if ws is None:
                                if one[i] != w:
                                    words[i] = array("i", sorted((one[i], w)))
                            elif ws[-1] < w:
                                ws.append(w)
                            elif ws[-1] != w:
                                _insert_word(ws, w)
                            if p < first[i]:
                                first[i] = p
                                dirty.discard(i)
                        up.add(i)
                    span[p] = span[r - 1] = r - p  # m covers a and b: its length at both ends
                    sym[p] = m
                    sym[q] = -1
                    k += 1
                try:
                    p = sym.index(a, p + 1, hi)
                except ValueError:
                    break
            merges_total += k * f
            if likelihood:
                live = [s for s in sym[lo:hi] if s >= 0]
                for x in self_syms:
                    if live.count(x) > 1:
                        self_delta[x * shift + x] = self_delta.get(x * shift + x, 0) + f * _run_merges(live, x)
        fr = self.sym_freq
        fr[a] -= merges_total
        fr[b] -= merges_total
        fr[m] += merges_total
        self.total -= merges_total
        if not existed:
            self.watch.append([])
        self._drop_pair(merged)
        for i in down:
            if pair_left[i] >= 0 and count[i] == 0:
                self._drop_pair(i)
        if likelihood:
            for pk, d in self_delta.items():
                i = pair_id.get(pk)
                if d and i is not None:
                    self.self_merges[i] = self.self_merges.get(i, 0) + d
                    up.add(i)
        if self.score != "count":
            # Bounds hold only for fixed counts: pairs whose count moved either way get a fresh one.
            up.update(i for i in down if pair_left[i] >= 0)
            up.update(self._crossed(a))
            if b != a:
                up.update(self._crossed(b))
            if likelihood:  # pairs that also spell m gain from its higher frequency
                up.update(self.result_pairs.get(m_str, ()))
        for i in up:
            if pair_left[i] >= 0:
                self._push(i)
        return m_str, merges_total

    def _drop_pair(self, i: int) -> None:
        del self.pair_id[self.pair_left[i] * self.shift + self.pair_right[i]]
        self.pair_words[i] = None
        self.pair_left[i] = -1
        self.free_pairs.append(i)
        self._dequeue(i)
        self.dirty.discard(i)
        self.self_merges.pop(i, None)
        m = self.pair_result.pop(i, None)
        if m is not None:
            self.result_pairs[m].discard(i)

    # ---------------------------------------------------------------- main loop
    def train(self, vocab_size: int, special_tokens: list[str], progress: bool) -> list[str]:
        vocab: list[str] = []
        present: set[str] = set()
        for t in special_tokens + sorted(self.sym_str):
            if t not in present:
                present.add(t)
                vocab.append(t)
        if len(vocab) >= vocab_size:
            return vocab
        self._build_pairs()
        self.best_score = math.inf
        self._rebuild_heap()
        entries_per_pair = 1 if self.score == "count" else 3  # a heap entry, and two floor watches for a bound
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=vocab_size, initial=len(vocab), unit="tok", desc=f"wordpiece ({self.score})")
        while len(vocab) < vocab_size:
            if len(self.heap) + self.num_watches > _HEAP_SLACK * entries_per_pair * self.num_queued + 4096:
                self._rebuild_heap()
            i = self._pop_best()
            if i is None:
                break
            token, _ = self._merge(i)
            if token not in present:
                present.add(token)
                vocab.append(token)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return vocab


def _insert_word(words: array, w: int) -> None:
    """Insert word index w into a sorted array of word indices that holds a later one, unless w is there.

    (A pair meets an earlier word than its last only when it was there before the merge at hand: an earlier merge
    spelled the same token.)
    """
    j = bisect.bisect_left(words, w)
    if words[j] != w:
        words.insert(j, w)


def _run_merges(syms: list[int], x: int) -> int:
    """Merges (x, x) makes in one word, left to right: floor(L / 2) for each run of L x's."""
    total = 0
    run = 0
    for s in syms:
        if s == x:
            run += 1
        else:
            total += run // 2
            run = 0
    return total + run // 2


def _self_pair_merges(syms: list[int], shift: int) -> dict[int, int]:
    """For each symbol x repeated in a run: floor(run length / 2), the merges (x, x) makes left to right."""
    out: dict[int, int] = {}
    n = len(syms)
    i = 0
    while i < n - 1:
        if syms[i] == syms[i + 1]:
            j = i + 1
            while j + 1 < n and syms[j + 1] == syms[i]:
                j += 1
            pk = syms[i] * shift + syms[i]
            out[pk] = out.get(pk, 0) + (j - i + 1) // 2
            i = j + 1
        else:
            i += 1
    return out
