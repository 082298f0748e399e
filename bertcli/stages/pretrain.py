"""`bert pretrain`: masked or pairs artifact → BertForPreTraining checkpoints (single process or torchrun/DDP)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from bertcli import __version__, dist
from bertcli import model as M
from bertcli.artifacts import DataArtifact, file_sha256, library_versions, load_data
from bertcli.shards import ShardedArrays
from bertcli.config import config_hash, config_to_dict, config_to_yaml, keys_with_role, load_config
from bertcli.errors import ArtifactError, BertcliError, ConfigError, OutputExistsError
from bertcli.schemas import PretrainConfig
from bertcli.vocab import copy_tokenizer_files, load_tokenizer

STEP_PREFIX = "step-"
FINAL = "final"
MARKER = "checkpoint.json"  # written last inside a checkpoint: lists every file with size and sha256
STATE_DIR = "training_state"
METRICS = "metrics.jsonl"
RUN_CONFIG = "config.yaml"
RUN_MANIFEST = "manifest.json"
_TMP_MARK = ".tmp-"

# Held-out membership is a hash of the sequence index with this fixed salt, not of the training seed, so runs
# with different seeds are evaluated on the same sequences.
_HELD_OUT_SALT = 0x5EED_0F_E7A1
# Shuffling works on windows of shards holding at least this many sequences: memory stays bounded by the window,
# never by the artifact, while batches still mix sequences from several shards.
SHUFFLE_WINDOW_SEQUENCES = 1 << 19
# Length-aware batching sorts chunks of this many global batches by length before cutting batches.
BUCKET_BATCHES = 50
RESUMABLE_KEYS = keys_with_role(PretrainConfig, "resumable")  # may change between a run and its --resume
_TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
MAX_CONSECUTIVE_ROLLBACKS = 5
# A unigram prior needs no more tokens than this; counting more would only make start-up grow with the corpus.
UNIGRAM_MAX_TOKENS = 50_000_000
_COUNT_CHUNK_TOKENS = 1 << 22


def _log(ctx: dist.DistContext | None, message: str) -> None:
    if ctx is None or ctx.is_main:
        print(message, file=sys.stderr, flush=True)


def _warn(ctx: dist.DistContext | None, message: str) -> None:
    _log(ctx, f"warning: {message}")


# ---------------------------------------------------------------------------------------------- data

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
        h = _mix64(indices.astype(np.uint64) + np.uint64(_HELD_OUT_SALT))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (seed, epoch, step, …): independent streams without shared state."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


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
            [int((~self._held_out_of_shard(s)).sum()) for s in range(self.num_shards)], dtype=np.int64
        )
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._epoch_cache: tuple[int, list[list[int]], np.ndarray] | None = None

    @property
    def num_train_sequences(self) -> int:
        return int(self.train_counts.sum())

    def _held_out_of_shard(self, shard: int) -> np.ndarray:
        start, count = int(self.arrays.starts[shard]), int(self.arrays.counts[shard])
        return held_out_mask(np.arange(start, start + count, dtype=np.int64), self.eval_fraction)

    def _train_indices_of_shard(self, shard: int) -> np.ndarray:
        start, count = int(self.arrays.starts[shard]), int(self.arrays.counts[shard])
        idx = np.arange(start, start + count, dtype=np.int64)
        return idx[~self._held_out_of_shard(shard)]

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
        if self._cache is not None and self._cache[0] == (epoch, window):
            return self._cache[1]
        windows, cumulative = self.windows(epoch)
        shards = windows[window]
        idx = np.concatenate([self._train_indices_of_shard(s) for s in shards])
        lengths = np.concatenate(
            [self._lengths_of(s)[~self._held_out_of_shard(s)] for s in shards]
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
        self._cache = ((epoch, window), batches)
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
            picked = np.nonzero(self._held_out_of_shard(shard))[0] + start
            found.append(picked[: limit - total])
            total += len(found[-1])
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def target_token_counts(
    data: DataArtifact, plan: EpochPlan, masking: Any = None, max_tokens: int = UNIGRAM_MAX_TOKENS
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
        train = ~plan._held_out_of_shard(shard)
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


@dataclass
class Collator:
    """Turns artifact rows into a padded micro-batch (dynamic masking applied for pairs artifacts)."""

    pad_id: int
    special_ids: dict[str, int]
    vocab_size: int
    has_nsp: bool
    dynamic: bool
    masking: Any = None  # bertcli.masking.MaskingSpec for dynamic masking
    pad_to_multiple_of: int = 1

    def __call__(self, rows: list[dict[str, Any]], mask_seed: int | None = None) -> dict[str, Any]:
        """mask_seed: for dynamic masking, the seed of this micro-batch's masks (fixed by its data position)."""
        n = len(rows)
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        if self.pad_to_multiple_of > 1:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)  # (B, T)
        token_type_ids = np.zeros((n, width), dtype=np.int64)
        attention_mask = np.zeros((n, width), dtype=np.int64)
        positions, labels = [], []
        for i, row in enumerate(rows):
            length = lengths[i]
            input_ids[i, :length] = row["input_ids"]
            attention_mask[i, :length] = 1
            token_type_ids[i, int(row["type_boundary"]) : length] = 1
            if not self.dynamic:
                positions.append(np.asarray(row["masked_positions"], dtype=np.int64) + i * width)  # b·T + t
                labels.append(np.asarray(row["masked_labels"], dtype=np.int64))
        if self.dynamic:
            from bertcli.masking import mask_batch

            # the same code as `bert mask`; draws depend only on the seed and (B, T)
            masked = mask_batch(input_ids, np.asarray(lengths), np.random.default_rng(mask_seed), self.masking)
            input_ids = masked.input_ids
            flat_positions = np.flatnonzero(masked.selected)  # (N,) b·T + t, row-major = sorted
            flat_labels = masked.labels.reshape(-1)[flat_positions]
        else:
            flat_positions, flat_labels = np.concatenate(positions), np.concatenate(labels)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "masked_positions": torch.from_numpy(flat_positions.astype(np.int64)),
            "masked_labels": torch.from_numpy(flat_labels.astype(np.int64)),
            "next_sentence_label": (
                torch.tensor([int(r["next_sentence_label"]) for r in rows], dtype=torch.int64)
                if self.has_nsp
                else None
            ),
            "num_tokens": int(sum(lengths)),
        }
        return batch


class MicroBatches(torch.utils.data.Dataset):
    """Item k of an epoch = this rank's micro-batch a = k % accum of global batch k // accum.

    Micro-batch j of a global batch holds its sequences [j·mb, (j+1)·mb); rank r takes j = a·world + r, so the
    same j always covers the same sequences whatever the world size (a 2-process run equals 1 process with
    twice the accumulation).
    """

    def __init__(self, plan: EpochPlan, collate: Collator, epoch: int, micro_batch_size: int, accum: int,
                 rank: int, world_size: int, seed: int):
        self.plan, self.collate, self.epoch = plan, collate, epoch
        self.micro_batch_size, self.accum, self.rank, self.world_size, self.seed = (
            micro_batch_size, accum, rank, world_size, seed)

    def __len__(self) -> int:
        return self.plan.batches_per_epoch(self.epoch) * self.accum

    def __getitem__(self, k: int) -> dict[str, Any]:
        b, a = divmod(int(k), self.accum)
        j = a * self.world_size + self.rank
        indices = self.plan.batch(self.epoch, b)[j * self.micro_batch_size : (j + 1) * self.micro_batch_size]
        rows = [self.plan.arrays[int(i)] for i in indices]
        batch = self.collate(rows, derive_seed(self.seed, self.epoch, 3, b, j))
        batch["epoch"], batch["batch_index"] = self.epoch, b
        return batch


def iterate_micro_batches(dataset: MicroBatches, start_batch: int, num_workers: int, pin: bool) -> Iterator[dict]:
    """This rank's micro-batches of one epoch from global batch start_batch on (in order)."""
    indices = range(start_batch * dataset.accum, len(dataset))
    if num_workers == 0:
        for k in indices:
            yield dataset[k]
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=indices,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=4,
        persistent_workers=False,
    )
    yield from loader


# ---------------------------------------------------------------------------------------------- checkpoints

def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class TrainState:
    """Everything besides model and optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # next global batch of `epoch` to train on
    sequences: int = 0
    tokens: int = 0  # non-padding tokens trained on
    elapsed_s: float = 0.0  # training wall time so far (over all resumptions)
    warmup_progress: float | None = None  # training progress at the end of warmup (fixes the decay span)
    skipped_batches: list[list[int]] = field(default_factory=list)  # [epoch, batch] dropped after a non-finite loss
    rollbacks: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def save_checkpoint(
    out_dir: Path,
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    state: TrainState,
    run_info: dict,
    tokenizer_dir: Path,
) -> Path:
    """Write a checkpoint to a temporary directory, marker last, then rename it into place (atomic).

    A reader treats a directory as a checkpoint only if the marker exists and every file it lists has the
    recorded size and sha256, so a kill at any moment never leaves a checkpoint that --resume would load.
    """
    final_path = out_dir / name
    tmp = out_dir / f".{name}{_TMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    copy_tokenizer_files(tokenizer_dir, tmp)
    state_dir = tmp / STATE_DIR
    state_dir.mkdir()
    torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()])
    torch.save(rng, state_dir / "rng.pt")
    payload = {
        "state": state.to_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": {"kind": run_info.get("lr_schedule"), "step": state.step,
                      "warmup_progress": state.warmup_progress},
        "run": run_info,
    }
    (state_dir / "state.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(path)
        files[path.relative_to(tmp).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    marker = {"format_version": 1, "step": state.step, "bertcli_version": __version__, "files": files}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    _fsync_file(tmp / MARKER)
    _fsync_dir(tmp)
    old = None
    if final_path.exists():
        old = out_dir / f".{name}.old-{os.getpid()}"
        os.replace(final_path, old)
    os.replace(tmp, final_path)
    _fsync_dir(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final_path


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else why not."""
    marker = path / MARKER
    if not marker.is_file():
        return "no checkpoint.json (written last): the checkpoint was never finished"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = info["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        return f"unreadable checkpoint.json ({exc})"
    if "model.safetensors" not in files:
        return "no model.safetensors listed (weights are only read from safetensors)"
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, expected {meta['size']}"
        if file_sha256(p) != meta["sha256"]:
            return f"{rel} does not match its recorded sha256"
    return None


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Step checkpoint directories (complete or not), oldest first."""
    found = []
    for p in out_dir.glob(f"{STEP_PREFIX}*"):
        suffix = p.name[len(STEP_PREFIX):]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any
) -> tuple[TrainState, dict]:
    """Restore model (safetensors only), optimizer (torch.load weights_only=True), scaler and RNG states."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - _TIED_KEYS:
        raise ValueError(f"weights do not fit the model (missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})")
    optimizer.load_state_dict(torch.load(path / STATE_DIR / "optimizer.pt", weights_only=True, map_location="cpu"))
    payload = json.loads((path / STATE_DIR / "state.json").read_text(encoding="utf-8"))
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    rng = torch.load(path / STATE_DIR / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available() and len(rng["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(rng["torch_cuda"]))
    return TrainState.from_dict(payload["state"]), payload.get("run", {})


def newest_valid_checkpoint(out_dir: Path, ctx: dist.DistContext | None = None) -> Path | None:
    """The newest complete step checkpoint; corrupt or unfinished ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(out_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        _warn(ctx, f"skipping checkpoint '{path}': {problem}")
    return None


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete the oldest complete step checkpoints beyond the newest `keep`."""
    complete = [(s, p) for s, p in list_checkpoints(out_dir) if (p / MARKER).is_file()]
    for _, path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(out_dir: Path) -> None:
    """Temporary checkpoint directories left by a killed run (never loaded; removed at the next start)."""
    for p in out_dir.glob(f".*{_TMP_MARK}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and pid.isdigit() and int(pid) != os.getpid():
            shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.glob(".*.old-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- run directory

def _is_run_dir(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    return bool(names & {RUN_CONFIG, METRICS, RUN_MANIFEST, FINAL}) or any(
        n.startswith(STEP_PREFIX) for n in names
    )


def prepare_output(cfg: PretrainConfig, resume: bool, overwrite: bool, ctx: dist.DistContext) -> bool:
    """Check the run directory (all ranks, read only) and decide whether this is a resumption.

    Returns True when an existing run is to be continued.
    """
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' is a file", hint="choose another --output")
    has_run = out.is_dir() and any(out.iterdir()) and _is_run_dir(out)
    if out.is_dir() and any(out.iterdir()) and not has_run:
        raise OutputExistsError(
            f"output '{out}' exists and holds files that are not a bertcli run",
            hint="choose another --output; bertcli never deletes files it did not write",
        )
    if not has_run:
        if resume:
            _log(ctx, f"note: --resume given but '{out}' holds no run yet; starting from step 0")
        return False
    if overwrite and not resume:
        return False
    if not resume:
        raise OutputExistsError(
            f"output '{out}' holds another run",
            hint="pass --resume to continue it, --overwrite to start over, or choose another --output",
        )
    saved = out / RUN_CONFIG
    if saved.is_file():
        previous = load_config(PretrainConfig, str(saved))
        a, b = config_to_dict(previous), config_to_dict(cfg)
        diffs = sorted(_dict_diff(a, b, "", RESUMABLE_KEYS))
        if diffs:
            raise ConfigError(
                f"--resume: the config differs from the run's {saved} in {', '.join(diffs)}",
                hint=f"use the same config to continue the run (only {', '.join(RESUMABLE_KEYS)} may change), "
                "or start a new run with another --output",
            )
    return True


def _dict_diff(a: dict, b: dict, prefix: str, ignore: tuple[str, ...]) -> Iterator[str]:
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _dict_diff(va, vb, name + ".", ignore)
        elif va != vb:
            yield name


# ---------------------------------------------------------------------------------------------- precision

@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on a CUDA device that supports it, else fp32. fp16 always comes with a gradient scaler."""
    if requested == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        requested = "bf16" if use_bf16 else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    return Precision(requested, dtype)


# ---------------------------------------------------------------------------------------------- training

class NonFiniteLoss(Exception):
    def __init__(self, step: int, position: tuple[int, int], what: str):
        super().__init__(f"{what} at step {step + 1} (epoch {position[0]}, batch {position[1]})")
        self.step, self.position, self.what = step, position, what


class MetricsWriter:
    """metrics.jsonl (one JSON object per line) and, when tensorboard is installed, event files (rank 0)."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = out_dir / METRICS
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # lines past the checkpoint belong to steps that are about to be recomputed
            kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and _line_step(ln) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the logged steps after the checkpoint, which the resumed run writes again
            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge)
        except ImportError:  # tensorboard is optional
            self.tb = None
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, ValueError):
        return 1 << 62


@dataclass
class Trainer:
    """The pieces of one run; `fit` is the loop."""

    cfg: PretrainConfig
    ctx: dist.DistContext
    data: DataArtifact
    plan: EpochPlan
    collate: Collator
    model: Any  # BertForPreTraining (unwrapped)
    module: Any  # PretrainingModule, possibly under DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scaler: Any
    precision: Precision
    accum: int
    state: TrainState
    out_dir: Path
    run_info: dict
    initial_weights: dict | None = None  # for a rollback before the first checkpoint
    unsynced_tokens: int = 0  # this rank's tokens not yet added (over all ranks) to state.tokens

    def lr_at(self, progress: float) -> float:
        cfg, st = self.cfg, self.state
        if st.warmup_progress is None and st.step >= cfg.warmup_steps:
            st.warmup_progress = progress  # the decay spans exactly what is left after warmup
        warm = st.warmup_progress if st.warmup_progress is not None else 0.0
        factor = M.lr_multiplier(st.step, progress, cfg.warmup_steps, warm, cfg.lr_schedule)
        return cfg.learning_rate * factor

    def progress(self, elapsed_s: float) -> float:
        p = self.state.step / self.cfg.max_steps
        if self.cfg.time_budget_s:
            p = max(p, elapsed_s / self.cfg.time_budget_s)
        return min(p, 1.0)

    def eval(self) -> dict[str, float]:
        """MLM loss/accuracy on masked positions and NSP accuracy over the held-out micro-batches."""
        cfg, ctx = self.cfg, self.ctx
        mb = cfg.micro_batch_size
        indices = self.plan.held_out_indices(cfg.eval_batches * mb)
        if len(indices) == 0:
            return {}
        all_rows = [self.data.arrays[int(k)] for k in indices]
        order = np.argsort([len(r["input_ids"]) for r in all_rows], kind="stable")  # little padding
        indices = indices[order]
        stats = torch.zeros(M.NUM_STATS, dtype=torch.float64, device=ctx.device)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for i, start in enumerate(range(0, len(indices), mb)):
                if i % ctx.world_size != ctx.rank:
                    continue
                rows = [all_rows[int(o)] for o in order[start : start + mb]]
                raw = self.collate(rows, derive_seed(_HELD_OUT_SALT, i))  # the same masks at every eval
                batch = _to_batch(raw, ctx.device)
                with self.precision.autocast(ctx.device):
                    _, s = M.pretraining_loss(self.model, batch, self.data.has_nsp)
                stats += s
        self.model.train(was_training)
        dist.all_reduce_sum(ctx, stats)
        summary = M.summarize_stats(stats.cpu())
        return {f"eval_{k}": v for k, v in summary.items()}

    def _seed_dropout(self, micro_index: int) -> None:
        # dropout depends only on (seed, step, micro-batch): resumption and world size do not change it
        torch.manual_seed(derive_seed(self.cfg.seed, self.state.step, 4, micro_index))

    def train_step(self, micro_batches: list[dict]) -> tuple[torch.Tensor, int, torch.Tensor]:
        """One optimizer step over this rank's micro-batches; returns (stats, tokens, grad norm) as device
        tensors where possible, so the host waits for the device once per step, not once per value."""
        ctx, cfg = self.ctx, self.cfg
        stats = torch.zeros(M.NUM_STATS, dtype=torch.float64, device=ctx.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)
        tokens = 0
        for a, raw in enumerate(micro_batches):
            batch = _to_batch(raw, ctx.device)
            tokens += raw["num_tokens"]
            self._seed_dropout(a * ctx.world_size + ctx.rank)
            with dist.maybe_no_sync(self.module, skip_sync=a < len(micro_batches) - 1):
                with self.precision.autocast(ctx.device):
                    loss, s = self.module(**batch.__dict__)
                scaled = loss / self.accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            stats += s
            loss_sum += loss.detach().float()
        position = (int(micro_batches[0]["epoch"]), int(micro_batches[0]["batch_index"]))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if cfg.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.detach().float().norm() for p in params if p.grad is not None])
            )
        # One host sync per step: the loss (each rank's own) and the gradient norm (the same on all ranks).
        # With fp16 an overflowing gradient is normal: the scaler skips that update and lowers the scale.
        checked = torch.stack([loss_sum, grad_norm.float() if self.scaler is None else loss_sum])
        bad_loss, bad_grad = (~torch.isfinite(checked)).cpu().tolist()
        if dist.any_rank(self.ctx, bad_loss or bad_grad):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(self.state.step, position, "non-finite gradient" if bad_grad and not bad_loss
                                else "non-finite loss")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        grad_norm_value = grad_norm.detach()
        return stats, tokens, grad_norm_value

    def micro_batch_stream(self) -> Iterator[list[dict]]:
        """Groups of `accum` micro-batches, one group per optimizer step, from the saved data position on."""
        st = self.state
        skipped = {tuple(x) for x in st.skipped_batches}
        while True:
            epoch, start = st.epoch, st.batch_in_epoch
            if start >= self.plan.batches_per_epoch(epoch):
                st.epoch, st.batch_in_epoch = epoch + 1, 0
                continue
            dataset = MicroBatches(self.plan, self.collate, epoch, self.cfg.micro_batch_size, self.accum,
                                   self.ctx.rank, self.ctx.world_size, self.cfg.seed)
            group: list[dict] = []
            for raw in iterate_micro_batches(dataset, start, self.cfg.num_workers, self.ctx.device.type == "cuda"):
                if (int(raw["epoch"]), int(raw["batch_index"])) in skipped:
                    continue
                group.append(raw)
                if len(group) == self.accum:
                    yield group
                    group = []
            st.epoch, st.batch_in_epoch = epoch + 1, 0


def _to_batch(raw: dict, device: torch.device) -> M.PretrainingBatch:
    return M.PretrainingBatch(
        raw["input_ids"], raw["token_type_ids"], raw["attention_mask"], raw["masked_positions"],
        raw["masked_labels"], raw["next_sentence_label"],
    ).to(device)


def _build_model(
    cfg: PretrainConfig, data: DataArtifact, plan: EpochPlan, masking: Any, ctx: dist.DistContext | None
) -> Any:
    if cfg.init_from:
        src = Path(cfg.init_from)
        if not (src / "config.json").is_file():
            raise ArtifactError(
                f"init_from '{src}' is not a Hugging Face model directory (no config.json)",
                hint="point init_from at a directory written by save_pretrained (e.g. a run's final/)",
            )
        if not (src / "model.safetensors").is_file() and not (src / "model.safetensors.index.json").is_file():
            raise ArtifactError(
                f"init_from '{src}' has no model.safetensors: weights are only read from safetensors",
                hint="convert the checkpoint to safetensors (save_pretrained writes it by default)",
            )
        if (src / "vocab.txt").is_file() and (data.tokenizer_dir / "vocab.txt").is_file():
            if (src / "vocab.txt").read_bytes() != (data.tokenizer_dir / "vocab.txt").read_bytes():
                raise ArtifactError(
                    f"init_from '{src}' has another vocabulary than the data '{data.path}'",
                    hint="build the data with that model's tokenizer (bert pairs --tokenizer " f"{src})",
                )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model, missing = M.load_pretrained_model(str(src))
        if missing:
            _log(ctx, f"init_from: initialised weights not in '{src}': {', '.join(missing)}")
        config = model.config
    else:
        try:
            config = M.build_bert_config(
                cfg.model.preset, config_to_dict(cfg.model), data.vocab_size, data.special_ids["pad"]
            )
        except ValueError as exc:
            raise ConfigError(f"key 'model': {exc}", hint="fix the model section") from exc
        model = None
    if config.vocab_size != data.vocab_size:
        raise ArtifactError(
            f"the model has vocab_size {config.vocab_size} but the data '{data.path}' has {data.vocab_size} ids",
            hint="build the data with the model's tokenizer",
        )
    if data.max_seq_length > config.max_position_embeddings:
        raise ConfigError(
            f"key 'model.max_position_embeddings': {config.max_position_embeddings} is below the data's "
            f"max_seq_length {data.max_seq_length}",
            hint=f"set model.max_position_embeddings to at least {data.max_seq_length}",
        )
    if model is None:
        model = M.build_model(config, cfg.seed)
        if cfg.mlm_bias_init == "unigram":
            counts = target_token_counts(data, plan, masking)
            with torch.no_grad():
                model.cls.predictions.bias.copy_(torch.from_numpy(unigram_log_prior(counts)))
            _log(ctx, f"MLM output bias: log unigram frequencies of {int(counts.sum()):,} training targets")
    return model


def _check_batching(cfg: PretrainConfig, ctx: dist.DistContext) -> int:
    per_step = cfg.micro_batch_size * ctx.world_size
    if cfg.batch_size % per_step:
        raise ConfigError(
            f"key 'batch_size': {cfg.batch_size} is not a multiple of micro_batch_size × processes "
            f"({cfg.micro_batch_size} × {ctx.world_size} = {per_step})",
            hint="choose batch_size = micro_batch_size × processes × gradient-accumulation steps",
        )
    return cfg.batch_size // per_step


def run(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict | None:
    """Train (or continue training) and return the run's manifest (None on ranks other than 0 under torchrun)."""
    ctx = dist.init_distributed(cfg.device)
    try:
        return _run(cfg, ctx, resume, overwrite)
    finally:
        dist.shutdown(ctx)


def _run(cfg: PretrainConfig, ctx: dist.DistContext, resume: bool, overwrite: bool) -> dict:
    out = Path(cfg.output)
    if resume and (out / RUN_MANIFEST).is_file() and (out / FINAL).is_dir():
        _log(ctx, f"'{out}' is a finished run (final/ and manifest.json exist); nothing to do")
        return json.loads((out / RUN_MANIFEST).read_text(encoding="utf-8")) if ctx.is_main else None
    accum = _check_batching(cfg, ctx)
    data = load_data(cfg.data)
    is_resume = prepare_output(cfg, resume, overwrite, ctx)
    dist.barrier(ctx)  # every rank has looked at the output before rank 0 changes it
    plan = EpochPlan(data.arrays, cfg.seed, cfg.batch_size, cfg.eval_fraction)
    if plan.batches_per_epoch(0) == 0:
        raise ArtifactError(
            f"'{data.path}' has {plan.num_train_sequences} training sequences, fewer than batch_size {cfg.batch_size}",
            hint="use a smaller batch_size or more data",
        )
    masking = data.tokenizer.masking_spec(
        masked_lm_prob=cfg.masked_lm_prob, max_predictions_per_seq=cfg.max_predictions_per_seq,
        whole_word_mask=cfg.whole_word_mask,
    ) if data.kind == "pairs" else None
    model = _build_model(cfg, data, plan, masking, ctx)  # every rank: the same weights from the seed and the data
    device = ctx.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    model.train()
    precision = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision.name == "fp16" else None
    optimizer = M.build_optimizer(
        model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon,
        fused=device.type in ("cuda", "cpu"),  # one kernel over all parameters; 4% of a BERT-tiny CPU step
    )
    collate = Collator(
        pad_id=data.special_ids["pad"], special_ids=data.special_ids, vocab_size=data.vocab_size,
        has_nsp=data.has_nsp, dynamic=masking is not None, masking=masking,
        pad_to_multiple_of=8 if device.type == "cuda" else 1,
    )
    run_info = {
        "config_hash": config_hash(cfg, ignore_role="resumable"),
        "data_content_hash": data.content_hash,
        "tokenizer_hash": data.tokenizer_hash,
        "world_size": ctx.world_size,
        "lr_schedule": cfg.lr_schedule,
    }
    state = TrainState()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not is_resume and _is_run_dir_safe(out):
            _clear_run(out)
        remove_stale_temps(out)
    dist.barrier(ctx)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    resume_step = None
    if is_resume:
        loaded = _resume_from_newest(out, model, optimizer, scaler, data, ctx)
        if loaded is not None:
            state, chosen = loaded
            resume_step = state.step
            _log(ctx, f"resuming from {chosen} (step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch})")
        else:
            _log(ctx, f"no usable checkpoint in '{out}'; starting from step 0")
            model.load_state_dict(initial)
            optimizer.state.clear()
            resume_step = 0
    if ctx.is_main:
        (out / RUN_CONFIG).write_text(config_to_yaml(cfg), encoding="utf-8")
    module: Any = M.PretrainingModule(model, has_nsp=data.has_nsp)
    module = dist.wrap_model(ctx, module)
    if cfg.compile:
        module = torch.compile(module)
    trainer = Trainer(cfg, ctx, data, plan, collate, model, module, optimizer, scaler, precision, accum, state,
                      out, run_info, initial_weights=initial)
    metrics = MetricsWriter(out, ctx.is_main, resume_step)
    try:
        _describe_run(trainer)
        _fit(trainer, metrics)
        final_eval = trainer.eval()
        if final_eval:
            metrics.write({"step": trainer.state.step, **final_eval})
        if ctx.is_main:
            save_checkpoint(out, FINAL, model, optimizer, scaler, trainer.state, run_info, data.tokenizer_dir)
    finally:
        metrics.close()
    manifest = None
    if ctx.is_main:
        _plot(out)
        manifest = _write_run_manifest(trainer, final_eval)
        _log(ctx, f"finished: {out / FINAL} (step {trainer.state.step}, "
                  f"{trainer.state.tokens:,} tokens, {trainer.state.elapsed_s:.0f} s)")
    dist.barrier(ctx)
    return manifest  # None on ranks other than 0: only rank 0 reports


def _is_run_dir_safe(out: Path) -> bool:
    return out.is_dir() and any(out.iterdir()) and _is_run_dir(out)


RUN_ENTRIES = {RUN_CONFIG, METRICS, RUN_MANIFEST, FINAL, "metrics.png", "tensorboard", METRICS + ".tmp"}


def _clear_run(out: Path) -> None:
    """--overwrite: remove what an earlier run wrote; files of the user's own in the directory are kept."""
    for p in out.iterdir():
        ours = p.name in RUN_ENTRIES or p.name.startswith(STEP_PREFIX) or (
            p.name.startswith(".") and (_TMP_MARK in p.name or ".old-" in p.name))
        if not ours:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _resume_from_newest(out: Path, model, optimizer, scaler, data: DataArtifact, ctx) -> tuple[TrainState, Path] | None:
    """Load the newest checkpoint that is complete and loads; others are skipped with a warning."""
    candidates = [str(p) for _, p in reversed(list_checkpoints(out))] if ctx.is_main else None
    for path in map(Path, dist.broadcast_object(ctx, candidates)):
        problem = verify_checkpoint(path) if ctx.is_main else None
        problem = dist.broadcast_object(ctx, problem)
        if problem is None:
            try:
                state, previous = load_checkpoint(path, model, optimizer, scaler)
            except Exception as exc:  # a pickle refused by weights_only, wrong shapes, damaged files…
                problem = f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        if dist.any_rank(ctx, problem is not None):
            _warn(ctx, f"skipping checkpoint '{path}': {problem or 'another rank could not load it'}")
            continue
        _check_resume_inputs(previous, data)
        return state, path
    return None


def _check_resume_inputs(previous: dict, data: DataArtifact) -> None:
    if previous.get("tokenizer_hash") and previous["tokenizer_hash"] != data.tokenizer_hash:
        raise ArtifactError(
            f"--resume: the data '{data.path}' was made with another tokenizer than the run's checkpoints",
            hint="resume with the data the run was started with",
        )
    if previous.get("data_content_hash") and data.content_hash and previous["data_content_hash"] != data.content_hash:
        raise ArtifactError(
            f"--resume: the data '{data.path}' differs from the data the run was started with",
            hint="resume with the same data artifact (its data position would be meaningless otherwise)",
        )


def _describe_run(t: Trainer) -> None:
    cfg, ctx = t.cfg, t.ctx
    n_params = M.count_parameters(t.model)
    _log(ctx, (
        f"pretrain: {n_params / 1e6:.1f}M parameters, {t.data.kind} data '{t.data.path}' "
        f"({t.plan.num_train_sequences:,} training sequences, {'NSP+MLM' if t.data.has_nsp else 'MLM only'}), "
        f"batch {cfg.batch_size} = {cfg.micro_batch_size} × {t.accum} accumulation × {ctx.world_size} "
        f"process(es), {t.precision.name} on {ctx.device}, {cfg.max_steps} steps"
        + (f" or {cfg.time_budget_s:.0f} s" if cfg.time_budget_s else "")
    ))


def _rollback(t: Trainer, err: NonFiniteLoss) -> None:
    """Restore the last checkpoint (or the initial weights) and drop the batch that gave a non-finite value."""
    ctx = t.ctx
    skipped = list(t.state.skipped_batches) + [list(err.position)]
    rollbacks = t.state.rollbacks + 1
    path = newest_valid_checkpoint(t.out_dir, ctx) if ctx.is_main else None
    path = dist.broadcast_object(ctx, str(path) if path else "")
    if path:
        state, _ = load_checkpoint(Path(path), t.model, t.optimizer, t.scaler)
    else:
        t.model.load_state_dict(t.initial_weights)
        t.optimizer.state.clear()
        state = TrainState()
        if t.scaler is not None:
            t.scaler = torch.amp.GradScaler(t.ctx.device.type)
    state.skipped_batches, state.rollbacks = skipped, rollbacks
    state.elapsed_s = t.state.elapsed_s  # the time budget counts wall time, rolled-back steps included
    t.state = state
    _warn(ctx, f"{err}; rolled back to {path or 'the initial weights'} (step {state.step}) and skipping that batch")


def _fit(t: Trainer, metrics: MetricsWriter) -> None:
    consecutive = 0
    last_good_step = t.state.step
    while True:
        try:
            _loop(t, metrics)
            return
        except NonFiniteLoss as err:
            if t.cfg.on_nonfinite == "stop":
                raise BertcliError(
                    f"{err}; stopped (on_nonfinite: stop). The last checkpoint holds only finite weights",
                    hint="lower learning_rate or raise warmup_steps, use precision bf16/fp32 instead of fp16, "
                    "then --resume; or set on_nonfinite: rollback",
                ) from None
            consecutive = consecutive + 1 if t.state.step <= last_good_step + 1 else 1
            last_good_step = t.state.step
            if consecutive > MAX_CONSECUTIVE_ROLLBACKS:
                raise BertcliError(
                    f"{err}; {MAX_CONSECUTIVE_ROLLBACKS} rollbacks in a row did not help, stopping",
                    hint="lower learning_rate or raise warmup_steps, then --resume",
                ) from None
            _rollback(t, err)
            metrics.write({"step": t.state.step, "rollback": 1, "skipped_epoch": err.position[0],
                           "skipped_batch": err.position[1]})


def _loop(t: Trainer, metrics: MetricsWriter) -> None:
    from tqdm import tqdm

    cfg, ctx, st = t.cfg, t.ctx, t.state
    start_time = time.perf_counter() - st.elapsed_s
    interval_stats = torch.zeros(M.NUM_STATS + 2, dtype=torch.float64)
    interval_device = torch.zeros(M.NUM_STATS, dtype=torch.float64, device=ctx.device)
    interval_start = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=st.step, disable=not ctx.is_main, desc="pretrain", unit="step",
               dynamic_ncols=True)
    stream = t.micro_batch_stream()
    try:
        while st.step < cfg.max_steps:
            elapsed = time.perf_counter() - start_time
            if cfg.time_budget_s:
                # ranks' clocks differ: all follow the slowest so LR and stopping stay identical
                elapsed = _max_over_ranks(ctx, elapsed)
                if elapsed >= cfg.time_budget_s:
                    break
            progress = t.progress(elapsed)
            lr = t.lr_at(progress)
            for group in t.optimizer.param_groups:
                group["lr"] = lr
            group_batches = next(stream)
            stats, tokens, grad_norm = t.train_step(group_batches)
            epoch, b = group_batches[0]["epoch"], group_batches[0]["batch_index"]
            st.step += 1
            st.epoch, st.batch_in_epoch = epoch, b + 1
            st.sequences += cfg.batch_size
            interval_device += stats  # stays on the device until the next log step
            interval_stats[M.NUM_STATS] += tokens
            t.unsynced_tokens += tokens
            interval_stats[M.NUM_STATS + 1] += 1
            st.elapsed_s = time.perf_counter() - start_time
            bar.update(1)
            if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                interval_stats[: M.NUM_STATS] = interval_device.cpu()
                interval_device.zero_()
                dist.all_reduce_sum(ctx, interval_stats)
                now = time.perf_counter()
                summary = M.summarize_stats(interval_stats[: M.NUM_STATS])
                global_tokens = int(interval_stats[M.NUM_STATS])
                tokens_per_s = global_tokens / max(now - interval_start, 1e-9)
                record = {
                    "step": st.step,
                    "loss": summary["mlm_loss"] + summary.get("nsp_loss", 0.0),
                    "mlm_loss": summary["mlm_loss"],
                    "nsp_loss": summary.get("nsp_loss"),
                    "mlm_accuracy": summary["mlm_accuracy"],
                    "nsp_accuracy": summary.get("nsp_accuracy"),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens_per_s,
                    "sequences_per_s": cfg.batch_size * interval_stats[M.NUM_STATS + 1].item() / max(now - interval_start, 1e-9),
                    "epoch": st.epoch,
                    "elapsed_s": st.elapsed_s,
                }
                if t.scaler is not None:
                    record["loss_scale"] = float(t.scaler.get_scale())
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                interval_stats.zero_()
                interval_start = time.perf_counter()
            if cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < cfg.max_steps:
                result = t.eval()
                if result:
                    metrics.write({"step": st.step, **result})
            if st.step % cfg.log_every == 0:
                _sync_tokens(t)
            if cfg.save_every and st.step % cfg.save_every == 0 and st.step < cfg.max_steps:
                _sync_tokens(t)
                _save_step(t)
    finally:
        bar.close()
    _sync_tokens(t)
    st.elapsed_s = time.perf_counter() - start_time


def _max_over_ranks(ctx: dist.DistContext, value: float) -> float:
    if not ctx.distributed:
        return value
    return float(dist.all_reduce_max(ctx, torch.tensor([value], dtype=torch.float64)).item())


def _sync_tokens(t: Trainer) -> None:
    """Add the tokens all ranks trained on since the last sync to the state (before logging or saving)."""
    pending = torch.tensor([float(t.unsynced_tokens)], dtype=torch.float64)
    t.state.tokens += int(dist.all_reduce_sum(t.ctx, pending).item())
    t.unsynced_tokens = 0


def _save_step(t: Trainer) -> None:
    ctx = t.ctx
    if ctx.is_main:
        bad = [n for n, p in t.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never write non-finite weights into a checkpoint
            _warn(ctx, f"weights {bad[:3]} are not finite at step {t.state.step}; checkpoint not written")
        else:
            save_checkpoint(t.out_dir, f"{STEP_PREFIX}{t.state.step:08d}", t.model, t.optimizer, t.scaler,
                            t.state, t.run_info, t.data.tokenizer_dir)
            prune_checkpoints(t.out_dir, t.cfg.keep_checkpoints)
    dist.barrier(ctx)


def _plot(out: Path) -> None:
    try:
        from bertcli.stages.plot import plot_run

        plot_run(out)
    except ImportError:
        _warn(None, "matplotlib is not installed; no metrics.png (pip install 'bertcli[plot]', then `bert plot`)")


def _write_run_manifest(t: Trainer, final_eval: dict) -> dict:
    marker = json.loads((t.out_dir / FINAL / MARKER).read_text(encoding="utf-8"))
    digest = hashlib.sha256(json.dumps(marker["files"], sort_keys=True).encode()).hexdigest()
    manifest = {
        "format_version": 1,
        "stage": "pretrain",
        "bertcli_version": __version__,
        "versions": library_versions(),
        "seed": t.cfg.seed,
        "config_hash": t.run_info["config_hash"],
        "inputs": {
            "data": {"path": str(t.data.path), "content_hash": t.data.content_hash, "kind": t.data.kind},
            "tokenizer": {"hash": t.data.tokenizer_hash},
        },
        "content_hash": digest,
        "stats": {
            "steps": t.state.step,
            "epochs": t.state.epoch,
            "sequences": t.state.sequences,
            "tokens": t.state.tokens,
            "elapsed_s": round(t.state.elapsed_s, 3),
            "rollbacks": t.state.rollbacks,
            "skipped_batches": len(t.state.skipped_batches),
            "world_size": t.ctx.world_size,
            "precision": t.precision.name,
            "parameters": M.count_parameters(t.model),
            **{k: v for k, v in final_eval.items()},
        },
        "vocab_size": t.data.vocab_size,
        "max_seq_length": t.data.max_seq_length,
        "special_token_ids": t.data.special_ids,
        "final": FINAL,
    }
    tmp = t.out_dir / (RUN_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, t.out_dir / RUN_MANIFEST)
    return manifest
