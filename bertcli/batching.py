"""Which sequences train and which are held out, in what order, and how rows become padded micro-batches
(logic only: no file I/O of its own)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from bertcli.artifacts import DataArtifact
from bertcli.masking import MaskingSpec, mask_batch
from bertcli.model import BatchWork, PretrainingBatch, query_layout
from bertcli.shards import ShardedArrays

# Held-out membership is a hash of the sequence index with this fixed salt, not of the training seed, so runs
# with different seeds are evaluated on the same sequences.
HELD_OUT_SALT = 0x5EED_0F_E7A1
# Shuffling works on windows of shards holding at least this many sequences: memory stays bounded by the window,
# never by the artifact, while batches still mix sequences from several shards.
SHUFFLE_WINDOW_SEQUENCES = 1 << 19
# Length-aware batching sorts chunks of this many global batches by length before cutting batches.
BUCKET_BATCHES = 50
# A unigram prior needs no more tokens than this; counting more would only make start-up grow with the corpus.
UNIGRAM_MAX_TOKENS = 50_000_000
_COUNT_CHUNK_TOKENS = 1 << 22


# ---------------------------------------------------------------------------------------------- held-out split

def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed 64-bit hash of each integer (vectorised, deterministic)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def held_out_mask(indices: np.ndarray, fraction: float) -> np.ndarray:
    """True for the sequences held out for evaluation: a fixed hash of the global index below `fraction`."""
    if fraction <= 0:
        return np.zeros(len(indices), dtype=bool)
    with np.errstate(over="ignore"):
        h = _mix64(indices.astype(np.uint64) + np.uint64(HELD_OUT_SALT))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (seed, epoch, step, …): independent streams without shared state."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- data order

class EpochPlan:
    """Which sequences form global batch b of epoch e, computable directly for any (e, b): no replaying.

    Per epoch the shards are permuted (seeded by seed and epoch) and cut into windows of at least
    SHUFFLE_WINDOW_SEQUENCES sequences; each window's training sequences are permuted, sorted by length in
    chunks of BUCKET_BATCHES batches (so a batch wastes little on padding), cut into batches of batch_size, and
    the batches shuffled. Memory is one window's index, never the whole artifact.
    """

    def __init__(self, arrays: ShardedArrays, seed: int, batch_size: int, eval_fraction: float):
        self.arrays = arrays
        self.seed = seed
        self.batch_size = batch_size
        self.eval_fraction = eval_fraction
        self.num_shards = len(arrays.shards)
        # (num_shards,) training sequences per shard: one vectorised hash pass, O(shards) memory
        self.train_counts = np.array(
            [int((~self.held_out_of_shard(s)).sum()) for s in range(self.num_shards)], dtype=np.int64
        )
        self._window_cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._epoch_cache: tuple[int, list[list[int]], np.ndarray] | None = None

    @property
    def num_train_sequences(self) -> int:
        return int(self.train_counts.sum())

    def held_out_of_shard(self, shard: int) -> np.ndarray:
        """(sequences in shard,) bool: which of the shard's sequences are held out."""
        start, count = int(self.arrays.starts[shard]), int(self.arrays.counts[shard])
        return held_out_mask(np.arange(start, start + count, dtype=np.int64), self.eval_fraction)

    def _train_indices_of_shard(self, shard: int) -> np.ndarray:
        start, count = int(self.arrays.starts[shard]), int(self.arrays.counts[shard])
        idx = np.arange(start, start + count, dtype=np.int64)
        return idx[~self.held_out_of_shard(shard)]

    def _lengths_of(self, shard: int) -> np.ndarray:
        offsets = self.arrays.shards[shard]["input_ids.offsets"]
        return np.diff(np.asarray(offsets))

    def windows(self, epoch: int) -> tuple[list[list[int]], np.ndarray]:
        """The epoch's windows (lists of shard numbers) and the cumulative batch count before each window."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(self.num_shards)
        windows: list[list[int]] = []
        current: list[int] = []
        size = 0
        for shard in order:
            current.append(int(shard))
            size += int(self.train_counts[shard])
            if size >= SHUFFLE_WINDOW_SEQUENCES:
                windows.append(current)
                current, size = [], 0
        if current:
            if windows and size < SHUFFLE_WINDOW_SEQUENCES // 2:
                windows[-1].extend(current)  # a small tail joins the last window instead of losing its batches
            else:
                windows.append(current)
        batches = [int(self.train_counts[w].sum()) // self.batch_size for w in windows]
        cumulative = np.concatenate([[0], np.cumsum(batches)]).astype(np.int64)
        self._epoch_cache = (epoch, windows, cumulative)
        return windows, cumulative

    def batches_per_epoch(self, epoch: int = 0) -> int:
        return int(self.windows(epoch)[1][-1])

    def _window_batches(self, epoch: int, window: int) -> np.ndarray:
        if self._window_cache is not None and self._window_cache[0] == (epoch, window):
            return self._window_cache[1]
        windows, cumulative = self.windows(epoch)
        shards = windows[window]
        idx = np.concatenate([self._train_indices_of_shard(s) for s in shards])
        lengths = np.concatenate(
            [self._lengths_of(s)[~self.held_out_of_shard(s)] for s in shards]
        )
        rng = np.random.default_rng([self.seed, epoch, 2, window])
        perm = rng.permutation(len(idx))
        n_batches = int(cumulative[window + 1] - cumulative[window])
        keep = perm[: n_batches * self.batch_size]
        idx, lengths = idx[keep], lengths[keep]
        chunk = self.batch_size * BUCKET_BATCHES
        for start in range(0, len(idx), chunk):
            order = np.argsort(lengths[start : start + chunk], kind="stable")
            idx[start : start + chunk] = idx[start : start + chunk][order]
        batches = idx.reshape(n_batches, self.batch_size)[rng.permutation(n_batches)]  # (n_batches, B)
        self._window_cache = ((epoch, window), batches)
        return batches

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Global indices (batch_size,) of batch `index` of `epoch`, sorted by length."""
        windows, cumulative = self.windows(epoch)
        window = int(np.searchsorted(cumulative, index, side="right") - 1)
        return self._window_batches(epoch, window)[index - int(cumulative[window])]

    def held_out_indices(self, limit: int) -> np.ndarray:
        """The first `limit` held-out sequences in artifact order (the same for every run and seed)."""
        found: list[np.ndarray] = []
        total = 0
        for shard in range(self.num_shards):
            if total >= limit:
                break
            start = int(self.arrays.starts[shard])
            picked = np.nonzero(self.held_out_of_shard(shard))[0] + start
            found.append(picked[: limit - total])
            total += len(found[-1])
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- unigram prior

# Tokens a run looks at to tell that some prediction target exists (the first of each shard: a quick, bounded probe).
NO_TARGETS_PROBE_TOKENS = 1 << 20


def target_token_counts(
    data: DataArtifact, plan: EpochPlan, masking: MaskingSpec | None = None, max_tokens: int = UNIGRAM_MAX_TOKENS
) -> np.ndarray:
    """(vocab_size,) int64: how often each id is a prediction target in the training split (held-out sequences
    excluded) — the masked labels of a masked artifact, or for a pairs artifact the tokens that `masking` (the
    dynamic MaskingSpec) may select. Each shard contributes its first sequences up to an equal share of max_tokens,
    read in chunks, so time and memory stay bounded whatever the size of the corpus."""
    field = "masked_labels" if data.kind == "masked" else "input_ids"
    counts = np.zeros(data.vocab_size, dtype=np.int64)
    share = max(1, max_tokens // max(plan.num_shards, 1))
    for shard in range(plan.num_shards):
        arrays = data.arrays.shards[shard]
        offsets = np.asarray(arrays[f"{field}.offsets"], dtype=np.int64)
        values = arrays[field]
        train = ~plan.held_out_of_shard(shard)
        last = max(int(np.searchsorted(offsets, share, side="right")) - 1, min(1, len(offsets) - 1))
        first = 0
        while first < last:
            end = max(int(np.searchsorted(offsets, offsets[first] + _COUNT_CHUNK_TOKENS, side="right")) - 1, first + 1)
            end = min(end, last)
            ids = np.asarray(values[offsets[first] : offsets[end]])
            keep = np.repeat(train[first:end], np.diff(offsets[first : end + 1]))
            counts += np.bincount(ids[keep], minlength=data.vocab_size)[: data.vocab_size]
            first = end
    if masking is not None:
        counts[~masking.is_candidate] = 0
    return counts


def unigram_log_prior(counts: np.ndarray) -> np.ndarray:
    """log p(token) with add-one smoothing, so an id never seen as a target still gets a finite bias."""
    return np.log((counts + 1.0) / (counts.sum() + len(counts))).astype(np.float32)


# ---------------------------------------------------------------------------------------------- micro-batches

def length_buckets(max_seq_length: int) -> tuple[int, ...]:
    """The sequence widths a compiled step pads its micro-batches to: steps of max(64, a quarter of max_seq_length
    rounded up to a multiple of 64), ending at max_seq_length: (64, 128) at 128, (128, 256, 384, 512) at 512.

    Length-aware batching gives micro-batches of many widths (up to 16 at length 128 with padding to a multiple of
    8); torch.compile would build a graph for each. With buckets it builds one per bucket, at the price of a little
    more padding inside the shorter ones."""
    step = max(64, -(-(max_seq_length // 4) // 64) * 64)
    return tuple(range(step, max_seq_length, step)) + (max_seq_length,)


def max_predictions_of(data: DataArtifact, masking: MaskingSpec | None) -> int:
    """The query width P for an artifact: masking's max_predictions_per_seq for dynamic masking, else the most
    masked positions any sequence of the masked artifact has (read from the offsets, as load_data's checks do)."""
    if masking is not None:
        return masking.max_predictions_per_seq
    most = 0
    for shard in data.arrays.shards:
        counts = np.diff(np.asarray(shard["masked_positions.offsets"], dtype=np.int64))
        if len(counts):
            most = max(most, int(counts.max()))
    return max(most, 1)


@dataclass
class Collator:
    """Turns artifact rows into a padded micro-batch (dynamic masking applied for pairs artifacts), with the query
    layout of model.PretrainingBatch computed here, on the host (in the loader workers), so that a training step
    never has to ask the device where the masked positions are."""

    pad_id: int
    has_nsp: bool
    dynamic: bool
    masking: MaskingSpec | None = None  # for dynamic masking
    pad_to_multiple_of: int = 1
    max_predictions: int | None = None  # P: the most predictions a sequence may have (None: no limit)
    fixed_width: bool = False  # query width P for every micro-batch (torch.compile); else the micro-batch's most
    length_buckets: tuple[int, ...] = ()  # pad the width up to the smallest bucket that fits (torch.compile)
    max_width: int | None = None  # never pad beyond this (the model's max_position_embeddings)

    def width(self, longest: int) -> int:
        """The padded width T of a micro-batch whose longest row has `longest` tokens."""
        width = next((b for b in self.length_buckets if b >= longest), longest)
        if self.pad_to_multiple_of > 1:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if self.max_width is not None:
            width = min(width, max(self.max_width, longest))
        return width

    def __call__(self, rows: list[dict[str, Any]], mask_seed: int | None = None) -> dict[str, Any]:
        """mask_seed: for dynamic masking, the seed of this micro-batch's masks (fixed by its data position)."""
        n = len(rows)
        lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
        longest = int(lengths.max())
        width = self.width(longest)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)  # (B, T)
        token_type_ids = np.zeros((n, width), dtype=np.int64)
        attention_mask = np.zeros((n, width), dtype=np.int64)
        for i, row in enumerate(rows):
            length = lengths[i]
            input_ids[i, :length] = row["input_ids"]
            attention_mask[i, :length] = 1
            token_type_ids[i, int(row["type_boundary"]) : length] = 1
        if self.dynamic:
            # the same code as `bert mask`; its draws depend only on the seed and the shape, so masks are drawn at
            # the longest row's width: padding (buckets, multiples of 8) never changes them
            masked = mask_batch(input_ids[:, :longest], lengths, np.random.default_rng(mask_seed), self.masking)
            rows_of, cols = np.nonzero(masked.selected)  # row-major: ascending within each row
            labels = masked.original[rows_of, cols]  # before the write below (original is a view of input_ids)
            input_ids[:, :longest] = masked.input_ids
        else:
            counts = np.array([len(r["masked_positions"]) for r in rows], dtype=np.int64)
            rows_of = np.repeat(np.arange(n), counts)
            cols = np.concatenate([np.asarray(r["masked_positions"], dtype=np.int64) for r in rows])
            labels = np.concatenate([np.asarray(r["masked_labels"], dtype=np.int64) for r in rows])
        # eager steps take the micro-batch's own width (no slot wasted on padding; shapes may vary freely there),
        # compiled ones the fixed width P, so their shapes depend on (B, T) alone
        most = int(np.bincount(rows_of, minlength=n).max()) if n else 0
        if self.max_predictions is not None and most > self.max_predictions:
            raise ValueError(f"a sequence has {most} masked positions, more than max_predictions "
                             f"{self.max_predictions}")
        width = self.max_predictions if self.fixed_width else most
        query, masked_labels, masked_index = query_layout(n, rows_of, cols, labels, width)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "query_positions": torch.from_numpy(query),
            "masked_labels": torch.from_numpy(masked_labels),
            "masked_index": torch.from_numpy(masked_index),
            "next_sentence_label": (
                torch.tensor([int(r["next_sentence_label"]) for r in rows], dtype=torch.int64)
                if self.has_nsp
                else None
            ),
            "num_tokens": int(lengths.sum()),
            "work": BatchWork.of(lengths, np.bincount(rows_of, minlength=n)),
        }


def to_model_batch(collated: dict[str, Any], device: torch.device, fixed_width: bool = False) -> PretrainingBatch:
    """A Collator's micro-batch as the model's PretrainingBatch, on `device`. fixed_width: leave out masked_index,
    so the head runs on every query slot and every shape depends on (B, T) alone (what torch.compile is given)."""
    return PretrainingBatch(
        collated["input_ids"], collated["token_type_ids"], collated["attention_mask"], collated["query_positions"],
        collated["masked_labels"], None if fixed_width else collated["masked_index"], collated["next_sentence_label"],
    ).to(device)


class MicroBatches(torch.utils.data.Dataset):
    """Item (e, b, a) = this rank's micro-batch at accumulation step a of global batch b of epoch e.

    Micro-batch j of a global batch holds its sequences [j·mb, (j+1)·mb), which are sorted by length. At step a the
    world's ranks take j = a·world + s with slot s = (rank + b + a) mod world: the slots rotate with the batch and
    the step, so no rank always gets the longest sequences (and the most memory and time). Which sequences form j,
    its masks and its dropout depend on j alone, whatever the world size: a 2-process run equals 1 process with
    twice the accumulation.
    """

    def __init__(self, plan: EpochPlan, collate: Collator, micro_batch_size: int, accum: int, rank: int,
                 world_size: int, seed: int):
        self.plan, self.collate = plan, collate
        self.micro_batch_size, self.accum, self.rank, self.world_size, self.seed = (
            micro_batch_size, accum, rank, world_size, seed)

    def micro_batch_of(self, batch_index: int, step: int) -> int:
        """j: which micro-batch of global batch `batch_index` this rank trains at accumulation step `step`."""
        return step * self.world_size + (self.rank + batch_index + step) % self.world_size

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        epoch, b, a = (int(x) for x in key)
        j = self.micro_batch_of(b, a)
        indices = self.plan.batch(epoch, b)[j * self.micro_batch_size : (j + 1) * self.micro_batch_size]
        rows = [self.plan.arrays[int(i)] for i in indices]
        batch = self.collate(rows, derive_seed(self.seed, epoch, 3, b, j))
        batch["epoch"], batch["batch_index"], batch["micro_batch"] = epoch, b, j
        return batch


def micro_batch_keys(plan: EpochPlan, epoch: int, start_batch: int, accum: int,
                     skipped: set[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(epoch, batch, accumulation step) of this rank's micro-batches from global batch start_batch of `epoch` on,
    through every later epoch (endless), leaving out the batches in `skipped`."""
    while True:
        for b in range(start_batch, plan.batches_per_epoch(epoch)):
            if (epoch, b) not in skipped:
                for a in range(accum):
                    yield epoch, b, a
        epoch, start_batch = epoch + 1, 0


def iterate_micro_batches(dataset: MicroBatches, keys: Iterator[tuple[int, int, int]], num_workers: int,
                          pin: bool) -> Iterator[dict]:
    """The micro-batches of `keys`, in order: built by num_workers loader processes (0: here), into pinned memory
    when `pin` (CUDA). One DataLoader for the whole run, whose workers live until the run ends: epochs do not
    restart them."""
    if num_workers == 0 and not pin:
        for key in keys:
            yield dataset[key]
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=keys,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=num_workers > 0,
    )
    yield from loader


# Held-out sequences of pairs data are masked at this rate whatever rate the run trains at (Wettig et al. 2023 evaluate
# every training rate at 15%): runs that train at different rates compare, and eval_* agree with `bert evaluate`.
EVAL_MASKED_LM_PROB = 0.15


def held_out_micro_batches(
    plan: EpochPlan, collate: Collator, indices: np.ndarray, micro_batch_size: int, rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict]:
    """This rank's micro-batches of the held-out sequences `indices` (EpochPlan.held_out_indices), sorted by length
    so they carry little padding; micro-batch i goes to rank i % world_size and its dynamic masks are seeded by i
    alone and drawn at EVAL_MASKED_LM_PROB, so every evaluation of every run sees the same masks."""
    if collate.masking is not None and collate.masking.masked_lm_prob != EVAL_MASKED_LM_PROB:
        collate = replace(collate, masking=replace(collate.masking, masked_lm_prob=EVAL_MASKED_LM_PROB))
    rows = [plan.arrays[int(k)] for k in indices]
    order = np.argsort([len(r["input_ids"]) for r in rows], kind="stable")
    for i, start in enumerate(range(0, len(indices), micro_batch_size)):
        if i % world_size != rank:
            continue
        yield collate([rows[int(o)] for o in order[start : start + micro_batch_size]], derive_seed(HELD_OUT_SALT, i))
