"""Score-based WordPiece training (textbook, likelihood or count score): exact, deterministic and incremental."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from typing import Iterable, Literal, Sequence

ScoreName = Literal["textbook", "likelihood", "count"]
SCORES: tuple[str, ...] = ("textbook", "likelihood", "count")

# The trainer rebuilds its heap and floor watches when their entries outnumber the live pairs' by this factor, so
# stale entries never dominate memory.
_HEAP_SLACK = 3


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


def select_alphabet(word_counts: Sequence[tuple[str, int]], limit_alphabet: int) -> set[str] | None:
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


def initial_split(word: str, prefix: str = "##") -> list[str]:
    """A word as characters, every character but the first carrying the continuation prefix."""
    return [word[0]] + [prefix + ch for ch in word[1:]]


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
    trainer = _Trainer(list(word_counts), score, min_frequency, limit_alphabet, continuing_subword_prefix)
    return trainer.train(vocab_size, list(special_tokens), progress)


class _Trainer:
    """Incremental pair statistics over the distinct words, with a lazily invalidated max-heap of pair scores.

    Symbols are interned by their string (two merges that spell the same token make the same symbol, as in the
    textbook loop). A pair (x, y) is the int key x·shift + y. The tie rule needs, for every pair, the position
    of its first occurrence in scan order; a symbol's start character offset inside its word never changes under
    merges, so (word offset + start offset) is a global, merge-stable position whose order is the scan order.

    Heap invariant: every mergeable pair has exactly one current entry (its version) whose key
    (-bound, first position) is <= the pair's true key (-score, first position): the bound is an upper bound of
    the score (see _bound), the position a lower bound of the first occurrence. Changes that can only raise the
    true key (a count going down for the count score, N shrinking, a merged token getting rarer, the first
    occurrence being merged away) are left lazy and repaired when the entry surfaces; everything else pushes a
    new entry: a changed count (textbook, likelihood), a symbol falling below a floor that a bound assumed
    (watched per symbol), a merged token becoming more frequent (likelihood), an earlier first occurrence.
    """

    def __init__(
        self, word_counts: list[tuple[str, int]], score: str, min_frequency: int, limit_alphabet: int, prefix: str
    ) -> None:
        merged: dict[str, int] = {}
        for word, count in word_counts:
            merged[word] = merged.get(word, 0) + count
        word_counts = list(merged.items())
        self.score = score
        self.min_frequency = max(min_frequency, 1)
        self.prefix = prefix
        keep = select_alphabet(word_counts, limit_alphabet)
        self.sym_str: list[str] = []
        self.sym_index: dict[str, int] = {}
        self.sym_freq: list[int] = []
        self.words: list[list[int]] = []
        self.starts: list[list[int]] = []
        self.freqs: list[int] = []
        self.offsets: list[int] = []
        cont_cache: dict[str, int] = {}
        first_cache: dict[str, int] = {}
        offset = 0
        for word, count in word_counts:
            if count <= 0 or not word:
                continue
            if keep is not None and not keep.issuperset(word):
                # Left out of training, but its kept characters still enter the alphabet in the positions they
                # take (first, or ##-continued), as the tokenizers trainer's alphabet would have them.
                for i, ch in enumerate(word):
                    if ch in keep:
                        self._intern(ch if i == 0 else prefix + ch)
                continue
            sid = first_cache.get(word[0])
            if sid is None:
                sid = first_cache[word[0]] = self._intern(word[0])
            syms = [sid]
            for ch in word[1:]:
                sid = cont_cache.get(ch)
                if sid is None:
                    sid = cont_cache[ch] = self._intern(prefix + ch)
                syms.append(sid)
            self.words.append(syms)
            self.starts.append(list(range(len(word))))
            self.freqs.append(count)
            self.offsets.append(offset)
            offset += len(word)
        self.num_initial = len(self.sym_str)
        freq = [0] * len(self.sym_str)
        for syms, count in zip(self.words, self.freqs):
            for s in syms:
                freq[s] += count
        self.sym_freq = freq
        self.total = sum(freq)
        # Every merge removes at least one symbol occurrence, so there are fewer merges than characters.
        self.shift = 1 << max(20, (2 * offset + 2).bit_length())

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
        count: dict[int, int] = {}
        where: dict[int, set[int]] = {}
        first: dict[int, int] = {}
        for w, syms in enumerate(self.words):
            if len(syms) < 2:
                continue
            f = self.freqs[w]
            off = self.offsets[w]
            st = self.starts[w]
            for i in range(len(syms) - 1):
                pk = syms[i] * shift + syms[i + 1]
                c = count.get(pk)
                if c is None:
                    count[pk] = f
                    where[pk] = {w}
                    first[pk] = off + st[i]
                else:
                    count[pk] = c + f
                    where[pk].add(w)
        self.count = count
        self.where = where
        self.first = first
        self.dirty: set[int] = set()
        # Symbol → pairs it is part of: their scores move when its frequency does.
        sym_pairs: dict[int, set[int]] = {}
        for pk in count:
            x, y = divmod(pk, shift)
            sym_pairs.setdefault(x, set()).add(pk)
            sym_pairs.setdefault(y, set()).add(pk)
        self.sym_pairs = sym_pairs
        # likelihood: merges performed for a self pair (x, x) (a run of L x's merges floor(L/2) times), and
        # the pairs whose merged token already exists (its frequency enters the gain).
        self.self_merges: dict[int, int] = {}
        self.result_pairs: dict[str, set[int]] = {}
        self.pair_result: dict[int, str] = {}
        if self.score == "likelihood":
            for w, syms in enumerate(self.words):
                for pk, k in _self_pair_merges(syms, shift).items():
                    self.self_merges[pk] = self.self_merges.get(pk, 0) + k * self.freqs[w]
            for pk in count:
                self._register_result(pk)

    def _register_result(self, pk: int) -> None:
        x, y = divmod(pk, self.shift)
        m = merged_token(self.sym_str[x], self.sym_str[y], self.prefix)
        self.pair_result[pk] = m
        self.result_pairs.setdefault(m, set()).add(pk)

    def _score(self, pk: int) -> float:
        """The pair's score now."""
        c = self.count[pk]
        if self.score == "count":
            return float(c)
        x, y = divmod(pk, self.shift)
        fr = self.sym_freq
        if self.score == "textbook":
            return c / (fr[x] * fr[y])
        same = x == y
        m = self.sym_index.get(self.pair_result[pk])
        k = self.self_merges[pk] if same else c
        return likelihood_gain(k, fr[x], fr[y], fr[m] if m is not None else 0, self.total, same)

    def _bound(self, pk: int, exact: float, slack: float) -> tuple[float, int, int]:
        """An upper bound of the pair's score, about `exact + slack`, and the floors (Fx, Fy) it assumes.

        Every score grows as the frequency of a part of the pair falls (likelihood also shrinks as N falls), so
        the score computed with the parts' frequencies lowered to floors bounds it from above for as long as
        the parts stay at or above their floors and the pair's count (and merged token's frequency) are
        unchanged: the trainer watches the floors and pushes the pair again when one is crossed. A part's
        frequency is never below the pair's count (twice its merges, for a self pair), so floors go no lower.
        """
        c = self.count[pk]
        x, y = divmod(pk, self.shift)
        fr = self.sym_freq
        same = x == y
        if self.score == "textbook":
            # k/(Fx·Fy) = exact/r² with F = c·r: choose r² = exact / (exact + slack).
            r = math.sqrt(exact / (exact + slack)) if slack > 0 else 1.0
            fx = min(fr[x], max(c, math.ceil(fr[x] * r)))
            fy = fx if same else min(fr[y], max(c, math.ceil(fr[y] * r)))
            return c / (fx * fy), fx, fy
        m = self.sym_index.get(self.pair_result[pk])
        k = self.self_merges[pk] if same else c
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

    def _exact_first(self, pk: int) -> int:
        """Position of the pair's first occurrence in scan order (drops stale words from its `where` set)."""
        ws = self.where[pk]
        x, y = divmod(pk, self.shift)
        while True:
            w = min(ws)
            syms = self.words[w]
            for i in range(len(syms) - 1):
                if syms[i] == x and syms[i + 1] == y:
                    return self.offsets[w] + self.starts[w][i]
            ws.discard(w)

    # ---------------------------------------------------------------- heap
    def _push(self, pk: int, exact: float | None = None) -> None:
        """Give the pair a fresh heap entry (a new version; older entries and watches become stale)."""
        if self.count[pk] < self.min_frequency:
            self.version.pop(pk, None)
            return
        v = self.version.get(pk, 0) + 1
        self.version[pk] = v
        if self.score == "count":
            heapq.heappush(self.heap, (-float(self.count[pk]), self.first[pk], pk, v))
            return
        if exact is None:
            exact = self._score(pk)
        # A pair far below the current best can take a loose bound: it is looked at again only when the best
        # comes down to it or a floor is crossed.
        slack = (self.best_score - exact) / 2 if self.best_score > exact else 0.0
        if slack == math.inf:
            slack = 0.0
        ub, fx, fy = self._bound(pk, exact, slack)
        heapq.heappush(self.heap, (-ub, self.first[pk], pk, v))
        x, y = divmod(pk, self.shift)
        watch = self.watch
        heapq.heappush(watch[x], (-fx, pk, v))
        if y != x:
            heapq.heappush(watch[y], (-fy, pk, v))
        self.num_watches += 2

    def _crossed(self, s: int) -> list[int]:
        """Pairs whose bound assumed a floor that symbol s has now fallen below."""
        out = []
        watch = self.watch[s]
        f = self.sym_freq[s]
        version = self.version
        while watch and -watch[0][0] > f:
            _, pk, v = heapq.heappop(watch)
            if version.get(pk) == v:
                out.append(pk)
        return out

    def _rebuild_heap(self) -> None:
        """All entries afresh (start, and whenever stale entries pile up)."""
        self.version = {}
        self.heap = []
        self.watch = [[] for _ in self.sym_str]
        self.num_watches = 0
        exact = {pk: self._score(pk) for pk, c in self.count.items() if c >= self.min_frequency}
        if self.best_score == math.inf and exact:
            self.best_score = max(exact.values())
        for pk, e in exact.items():
            self._push(pk, e)

    def _pop_best(self) -> int | None:
        """The mergeable pair with the highest score, ties to the first met; None when none is left.

        Entries surface in order of their keys (-upper bound, lower bound of the first position); exact scores
        are computed until the next key cannot beat the best exact (score, position), so the winner has been
        seen. First positions are made exact only where a tie needs them.
        """
        heap = self.heap
        version = self.version
        count = self.count
        first = self.first
        dirty = self.dirty
        min_frequency = self.min_frequency
        seen: list[tuple[int, float]] = []
        best_pk = -1
        best_score = -math.inf
        best_pos = 0
        while heap:
            if best_pk >= 0:
                top = heap[0]
                if top[0] > -best_score:
                    break
                if top[0] == -best_score:
                    if best_pk in dirty:
                        best_pos = first[best_pk] = self._exact_first(best_pk)
                        dirty.discard(best_pk)
                    if top[1] > best_pos:
                        break
            _, _, pk, v = heapq.heappop(heap)
            if version.get(pk) != v:
                continue
            if count[pk] < min_frequency:
                del version[pk]
                continue
            e = self._score(pk)
            seen.append((pk, e))
            if e > best_score:
                best_pk, best_score, best_pos = pk, e, first[pk]
            elif e == best_score:
                if best_pk in dirty:
                    best_pos = first[best_pk] = self._exact_first(best_pk)
                    dirty.discard(best_pk)
                if pk in dirty:
                    first[pk] = self._exact_first(pk)
                    dirty.discard(pk)
                if first[pk] < best_pos:
                    best_pk, best_pos = pk, first[pk]
        if best_pk < 0:
            return None
        self.best_score = best_score
        for pk, e in seen:
            if pk != best_pk:
                self._push(pk, e)  # a fresh bound: N and the floors have moved
        del version[best_pk]
        return best_pk

    # ---------------------------------------------------------------- merging
    def _merge(self, pk: int) -> tuple[str, int]:
        """Merge pair pk in every word containing it; returns (merged token, times merged).

        Only the pairs next to each merge site change: (L, a) → (L, m) and (b, R) → (m, R). The word lists are
        edited in place. `where` sets are supersets (a word is not removed when it loses a pair; it is skipped
        when visited), which saves a scan of the word after each edit.
        """
        shift = self.shift
        a, b = divmod(pk, shift)
        m_str = merged_token(self.sym_str[a], self.sym_str[b], self.prefix)
        existed = m_str in self.sym_index
        m = self._intern(m_str)
        likelihood = self.score == "likelihood"
        count, where, first, dirty = self.count, self.where, self.first, self.dirty
        words, starts, freqs, offsets = self.words, self.starts, self.freqs, self.offsets
        up: set[int] = set()
        down: set[int] = set()
        self_syms = (a, m) if a == b else (a, b, m)
        self_delta: dict[int, int] = {}
        merges_total = 0
        for w in where[pk]:
            syms = words[w]
            try:
                i = syms.index(a)
            except ValueError:
                continue
            st = starts[w]
            f = freqs[w]
            off = offsets[w]
            if likelihood:
                for x in self_syms:
                    if syms.count(x) > 1:
                        self_delta[x * shift + x] = self_delta.get(x * shift + x, 0) - f * _run_merges(syms, x)
            k = 0
            while True:
                n = len(syms)
                if i + 1 < n and syms[i + 1] == b:
                    if i > 0:
                        left = syms[i - 1]
                        pos = off + st[i - 1]
                        p = left * shift + a
                        count[p] -= f
                        down.add(p)
                        if first.get(p) == pos:
                            dirty.add(p)
                        p = left * shift + m
                        c = count.get(p)
                        if c is None:
                            count[p] = f
                            where[p] = {w}
                            first[p] = pos
                            self._register(p)
                        else:
                            count[p] = c + f
                            where[p].add(w)
                            if pos < first[p]:
                                first[p] = pos
                                dirty.discard(p)
                        up.add(p)
                    if i + 2 < n:
                        right = syms[i + 2]
                        p = b * shift + right
                        count[p] -= f
                        down.add(p)
                        if first.get(p) == off + st[i + 1]:
                            dirty.add(p)
                        p = m * shift + right
                        pos = off + st[i]
                        c = count.get(p)
                        if c is None:
                            count[p] = f
                            where[p] = {w}
                            first[p] = pos
                            self._register(p)
                        else:
                            count[p] = c + f
                            where[p].add(w)
                            if pos < first[p]:
                                first[p] = pos
                                dirty.discard(p)
                        up.add(p)
                    syms[i] = m
                    del syms[i + 1]
                    del st[i + 1]
                    k += 1
                i += 1
                try:
                    i = syms.index(a, i)
                except ValueError:
                    break
            merges_total += k * f
            if likelihood:
                for x in self_syms:
                    if syms.count(x) > 1:
                        self_delta[x * shift + x] = self_delta.get(x * shift + x, 0) + f * _run_merges(syms, x)
        fr = self.sym_freq
        fr[a] -= merges_total
        fr[b] -= merges_total
        fr[m] += merges_total
        self.total -= merges_total
        if not existed:
            self.watch.append([])
        self._drop_pair(pk)
        for p in down:
            if p in count and count[p] == 0:
                self._drop_pair(p)
        if likelihood:
            for p, d in self_delta.items():
                if d and p in count:
                    self.self_merges[p] = self.self_merges.get(p, 0) + d
                    up.add(p)
        if self.score != "count":
            # Bounds hold only for fixed counts: pairs whose count moved either way get a fresh one.
            up.update(p for p in down if p in count)
            up.update(self._crossed(a))
            if b != a:
                up.update(self._crossed(b))
            if likelihood:  # pairs that also spell m gain from its higher frequency
                up.update(self.result_pairs.get(m_str, ()))
        for p in up:
            if p in count:
                self._push(p)
        return m_str, merges_total

    def _register(self, p: int) -> None:
        """Index a pair that has just appeared."""
        x, y = divmod(p, self.shift)
        sp = self.sym_pairs
        if x in sp:
            sp[x].add(p)
        else:
            sp[x] = {p}
        if y in sp:
            sp[y].add(p)
        else:
            sp[y] = {p}
        if self.score == "likelihood":
            self._register_result(p)

    def _drop_pair(self, p: int) -> None:
        shift = self.shift
        del self.count[p]
        self.where.pop(p, None)
        self.first.pop(p, None)
        self.dirty.discard(p)
        self.version.pop(p, None)
        x, y = divmod(p, shift)
        self.sym_pairs[x].discard(p)
        self.sym_pairs[y].discard(p)
        self.self_merges.pop(p, None)
        m = self.pair_result.pop(p, None)
        if m is not None:
            self.result_pairs[m].discard(p)

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
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=vocab_size, initial=len(vocab), unit="tok", desc=f"wordpiece ({self.score})")
        while len(vocab) < vocab_size:
            if len(self.heap) + self.num_watches > _HEAP_SLACK * 3 * len(self.version) + 4096:  # entry + 2 watches
                self._rebuild_heap()
            pk = self._pop_best()
            if pk is None:
                break
            token, _ = self._merge(pk)
            if token not in present:
                present.add(token)
                vocab.append(token)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return vocab


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
