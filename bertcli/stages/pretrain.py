"""`bert pretrain`: masked or pairs artifact → BertForPreTraining checkpoints (single process or torchrun/DDP)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from bertcli import dist
from bertcli.artifacts import DataArtifact, load_data, new_manifest, read_bertcli_manifest, write_json_atomic
from bertcli.batching import (
    Collator,
    EpochPlan,
    MicroBatches,
    derive_seed,
    held_out_micro_batches,
    iterate_micro_batches,
    target_token_counts,
    to_model_batch,
    unigram_log_prior,
)
from bertcli.checkpoints import (
    FINAL,
    MARKER,
    RUN_CONFIG,
    RUN_MANIFEST,
    STEP_PREFIX,
    TrainState,
    load_checkpoint,
    newest_valid_checkpoint,
    prepare_output,
    prune_checkpoints,
    resume_from_newest,
    save_checkpoint,
    start_run_dir,
)
from bertcli.config import config_hash, config_to_dict, config_to_yaml
from bertcli.errors import ArtifactError, BertcliError, ConfigError, InputError
from bertcli.masking import MaskingSpec
from bertcli.metrics import MetricsWriter, plot_run
from bertcli.model import (
    NUM_STATS,
    PretrainingModule,
    build_bert_config,
    build_model,
    build_optimizer,
    count_parameters,
    load_pretrained_model,
    lr_multiplier,
    pretraining_loss,
    summarize_stats,
)
from bertcli.schemas import PretrainConfig

MAX_CONSECUTIVE_ROLLBACKS = 5


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


# ---------------------------------------------------------------------------------------------- the loop

class NonFiniteLoss(Exception):
    def __init__(self, step: int, position: tuple[int, int], what: str):
        super().__init__(f"{what} at step {step + 1} (epoch {position[0]}, batch {position[1]})")
        self.step, self.position, self.what = step, position, what


@dataclass
class Trainer:
    """The pieces of one run, and the loop over them as methods: `fit` trains to the end, rolling back on a
    non-finite loss.

    Why methods and not free functions over plain state: a rollback replaces `state` and `scaler` in the middle
    of the loop, and the token count, the data stream, evaluation and saving must all see the replacement. One
    object that owns them keeps every part of the loop looking at the same, current pieces; free functions would
    have to pass them in and hand the replaced ones back at every call.
    """

    cfg: PretrainConfig
    ctx: dist.DistContext
    data: DataArtifact
    plan: EpochPlan
    collate: Collator
    model: Any  # BertForPreTraining (unwrapped)
    module: Any  # PretrainingModule, possibly under DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    precision: Precision
    micro_batch_size: int  # sequences per forward pass on each process (see micro_batching)
    accum: int  # micro-batches per optimizer step on each process
    state: TrainState
    out_dir: Path
    run_info: dict
    metrics: MetricsWriter
    initial_weights: dict | None = None  # for a rollback before the first checkpoint
    unsynced_tokens: int = 0  # this rank's tokens not yet added (over all ranks) to state.tokens

    # ------------------------------------------------------------------ schedule

    def lr_at(self, progress: float) -> float:
        cfg, state = self.cfg, self.state
        if state.warmup_progress is None and state.step >= cfg.warmup_steps:
            state.warmup_progress = progress  # the decay spans exactly what is left after warmup
        warm = state.warmup_progress if state.warmup_progress is not None else 0.0
        factor = lr_multiplier(state.step, progress, cfg.warmup_steps, warm, cfg.lr_schedule)
        return cfg.learning_rate * factor

    def progress(self, elapsed_s: float) -> float:
        p = self.state.step / self.cfg.max_steps
        if self.cfg.time_budget_s:
            p = max(p, elapsed_s / self.cfg.time_budget_s)
        return min(p, 1.0)

    # ------------------------------------------------------------------ data

    def micro_batch_stream(self) -> Iterator[list[dict]]:
        """Groups of `accum` micro-batches, one group per optimizer step, from the saved data position on."""
        state = self.state
        skipped = {tuple(x) for x in state.skipped_batches}
        while True:
            epoch, start = state.epoch, state.batch_in_epoch
            if start >= self.plan.batches_per_epoch(epoch):
                state.epoch, state.batch_in_epoch = epoch + 1, 0
                continue
            dataset = MicroBatches(self.plan, self.collate, epoch, self.micro_batch_size, self.accum,
                                   self.ctx.rank, self.ctx.world_size, self.cfg.seed)
            group: list[dict] = []
            for collated in iterate_micro_batches(dataset, start, self.cfg.num_workers, self.ctx.device.type == "cuda"):
                if (int(collated["epoch"]), int(collated["batch_index"])) in skipped:
                    continue
                group.append(collated)
                if len(group) == self.accum:
                    yield group
                    group = []
            state.epoch, state.batch_in_epoch = epoch + 1, 0

    # ------------------------------------------------------------------ one step, one evaluation

    def _seed_dropout(self, micro_index: int) -> None:
        # dropout depends only on (seed, step, micro-batch): resumption and world size do not change it
        torch.manual_seed(derive_seed(self.cfg.seed, self.state.step, 4, micro_index))

    def train_step(self, micro_batches: list[dict]) -> tuple[torch.Tensor, int, torch.Tensor]:
        """One optimizer step over this rank's micro-batches; returns (stats, tokens, grad norm) as device
        tensors where possible, so the host waits for the device once per step, not once per value."""
        ctx, cfg = self.ctx, self.cfg
        stats = torch.zeros(NUM_STATS, dtype=torch.float64, device=ctx.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)
        tokens = 0
        for a, collated in enumerate(micro_batches):
            batch = to_model_batch(collated, ctx.device)
            tokens += collated["num_tokens"]
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
        return stats, tokens, grad_norm.detach()

    def evaluate(self) -> dict[str, float]:
        """MLM loss/accuracy on masked positions and NSP accuracy over the held-out micro-batches."""
        cfg, ctx = self.cfg, self.ctx
        indices = self.plan.held_out_indices(cfg.eval_batches * self.micro_batch_size)
        if len(indices) == 0:
            return {}
        stats = torch.zeros(NUM_STATS, dtype=torch.float64, device=ctx.device)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for collated in held_out_micro_batches(self.plan, self.collate, indices, self.micro_batch_size,
                                                   ctx.rank, ctx.world_size):
                batch = to_model_batch(collated, ctx.device)
                with self.precision.autocast(ctx.device):
                    _, s = pretraining_loss(self.model, batch, self.data.has_nsp)
                stats += s
        self.model.train(was_training)
        dist.all_reduce_sum(ctx, stats)
        summary = summarize_stats(stats.cpu())
        return {f"eval_{k}": v for k, v in summary.items()}

    # ------------------------------------------------------------------ the loop

    def fit(self) -> None:
        """Train until max_steps or the time budget; on a non-finite loss stop or roll back (on_nonfinite)."""
        consecutive = 0
        last_good_step = self.state.step
        while True:
            try:
                self._train_steps()
                return
            except NonFiniteLoss as err:
                if self.cfg.on_nonfinite == "stop":
                    raise BertcliError(
                        f"{err}; stopped (on_nonfinite: stop). The last checkpoint holds only finite weights",
                        hint="lower learning_rate or raise warmup_steps, use precision bf16/fp32 instead of fp16, "
                        "then --resume; or set on_nonfinite: rollback",
                    ) from None
                consecutive = consecutive + 1 if self.state.step <= last_good_step + 1 else 1
                last_good_step = self.state.step
                if consecutive > MAX_CONSECUTIVE_ROLLBACKS:
                    raise BertcliError(
                        f"{err}; {MAX_CONSECUTIVE_ROLLBACKS} rollbacks in a row did not help, stopping",
                        hint="lower learning_rate or raise warmup_steps, then --resume",
                    ) from None
                self.rollback(err)
                self.metrics.write({"step": self.state.step, "rollback": 1, "skipped_epoch": err.position[0],
                                    "skipped_batch": err.position[1]})

    def _train_steps(self) -> None:
        """Steps from the current state on, with logging, evaluation and checkpoints; raises NonFiniteLoss."""
        cfg, ctx, state = self.cfg, self.ctx, self.state
        start_time = time.perf_counter() - state.elapsed_s
        interval_stats = torch.zeros(NUM_STATS + 2, dtype=torch.float64)  # stats, tokens, steps
        interval_device = torch.zeros(NUM_STATS, dtype=torch.float64, device=ctx.device)
        interval_start = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not ctx.is_main, desc="pretrain", unit="step",
                   dynamic_ncols=True)
        stream = self.micro_batch_stream()
        try:
            while state.step < cfg.max_steps:
                elapsed = time.perf_counter() - start_time
                if cfg.time_budget_s:
                    # ranks' clocks differ: all follow the slowest so LR and stopping stay identical
                    elapsed = dist.max_over_ranks(ctx, elapsed)
                    if elapsed >= cfg.time_budget_s:
                        break
                progress = self.progress(elapsed)
                lr = self.lr_at(progress)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                group_batches = next(stream)
                stats, tokens, grad_norm = self.train_step(group_batches)
                epoch, b = group_batches[0]["epoch"], group_batches[0]["batch_index"]
                state.step += 1
                state.epoch, state.batch_in_epoch = epoch, b + 1
                state.sequences += cfg.batch_size
                interval_device += stats  # stays on the device until the next log step
                interval_stats[NUM_STATS] += tokens
                self.unsynced_tokens += tokens
                interval_stats[NUM_STATS + 1] += 1
                state.elapsed_s = time.perf_counter() - start_time
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                    interval_stats[:NUM_STATS] = interval_device.cpu()
                    interval_device.zero_()
                    dist.all_reduce_sum(ctx, interval_stats)
                    now = time.perf_counter()
                    record = self._train_record(interval_stats, now - interval_start, lr, grad_norm)
                    self.metrics.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}",
                                    tok_s=f"{record['tokens_per_s']:,.0f}")
                    interval_stats.zero_()
                    interval_start = time.perf_counter()
                if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.max_steps:
                    result = self.evaluate()
                    if result:
                        self.metrics.write({"step": state.step, **result})
                if state.step % cfg.log_every == 0:
                    self.sync_tokens()
                if cfg.save_every and state.step % cfg.save_every == 0 and state.step < cfg.max_steps:
                    self.sync_tokens()
                    self.save_step()
        finally:
            bar.close()
        self.sync_tokens()
        state.elapsed_s = time.perf_counter() - start_time

    def _train_record(self, interval_stats: torch.Tensor, interval_s: float, lr: float,
                      grad_norm: torch.Tensor) -> dict:
        """One metrics.jsonl line from a log interval's summed (over ranks) stats, tokens and steps."""
        summary = summarize_stats(interval_stats[:NUM_STATS])
        interval_s = max(interval_s, 1e-9)
        record = {
            "step": self.state.step,
            "loss": summary["mlm_loss"] + summary.get("nsp_loss", 0.0),
            "mlm_loss": summary["mlm_loss"],
            "nsp_loss": summary.get("nsp_loss"),
            "mlm_accuracy": summary["mlm_accuracy"],
            "nsp_accuracy": summary.get("nsp_accuracy"),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": int(interval_stats[NUM_STATS]) / interval_s,
            "sequences_per_s": self.cfg.batch_size * interval_stats[NUM_STATS + 1].item() / interval_s,
            "epoch": self.state.epoch,
            "elapsed_s": self.state.elapsed_s,
        }
        if self.scaler is not None:
            record["loss_scale"] = float(self.scaler.get_scale())
        return record

    def sync_tokens(self) -> None:
        """Add the tokens all ranks trained on since the last sync to the state (before logging or saving)."""
        pending = torch.tensor([float(self.unsynced_tokens)], dtype=torch.float64)
        self.state.tokens += int(dist.all_reduce_sum(self.ctx, pending).item())
        self.unsynced_tokens = 0

    def save_step(self) -> None:
        """Rank 0 writes step-N (never with non-finite weights) and prunes old ones; all ranks wait for it."""
        ctx = self.ctx
        if ctx.is_main:
            bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
            if bad:  # never write non-finite weights into a checkpoint
                dist.warn_main(ctx, f"weights {bad[:3]} are not finite at step {self.state.step}; "
                                    "checkpoint not written")
            else:
                save_checkpoint(self.out_dir, f"{STEP_PREFIX}{self.state.step:08d}", self.model, self.optimizer,
                                self.scaler, self.state, self.run_info, self.data.tokenizer_dir)
                prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        dist.barrier(ctx)

    def save_final(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.out_dir, FINAL, self.model, self.optimizer, self.scaler, self.state, self.run_info,
                            self.data.tokenizer_dir)

    def rollback(self, err: NonFiniteLoss) -> None:
        """Restore the last checkpoint (or the initial weights) and drop the batch that gave a non-finite value."""
        ctx = self.ctx
        skipped = list(self.state.skipped_batches) + [list(err.position)]
        rollbacks = self.state.rollbacks + 1
        path = newest_valid_checkpoint(self.out_dir, ctx) if ctx.is_main else None
        path = dist.broadcast_object(ctx, str(path) if path else "")
        if path:
            state, _ = load_checkpoint(Path(path), self.model, self.optimizer, self.scaler)
        else:
            self.model.load_state_dict(self.initial_weights)
            self.optimizer.state.clear()
            state = TrainState()
            if self.scaler is not None:
                self.scaler = torch.amp.GradScaler(ctx.device.type)
        state.skipped_batches, state.rollbacks = skipped, rollbacks
        state.elapsed_s = self.state.elapsed_s  # the time budget counts wall time, rolled-back steps included
        self.state = state
        dist.warn_main(ctx, f"{err}; rolled back to {path or 'the initial weights'} (step {state.step}) and "
                            "skipping that batch")

    # ------------------------------------------------------------------ reporting

    def describe(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        n_params = count_parameters(self.model)
        dist.log_main(ctx, (
            f"pretrain: {n_params / 1e6:.1f}M parameters, {self.data.kind} data '{self.data.path}' "
            f"({self.plan.num_train_sequences:,} training sequences, "
            f"{'NSP+MLM' if self.data.has_nsp else 'MLM only'}), "
            f"batch {cfg.batch_size} = {self.micro_batch_size} × {self.accum} accumulation × {ctx.world_size} "
            f"process(es), {self.precision.name} on {ctx.device}, {cfg.max_steps} steps"
            + (f" or {cfg.time_budget_s:.0f} s" if cfg.time_budget_s else "")
        ))

    def write_manifest(self, final_eval: dict) -> dict:
        """Rank 0: the run's manifest.json, written last; its content hash covers final/'s files."""
        marker = json.loads((self.out_dir / FINAL / MARKER).read_text(encoding="utf-8"))
        digest = hashlib.sha256(json.dumps(marker["files"], sort_keys=True).encode()).hexdigest()
        state, data = self.state, self.data
        manifest = new_manifest(
            "pretrain",
            self.cfg,
            inputs={
                "data": {"path": str(data.path), "content_hash": data.content_hash, "kind": data.kind},
                "tokenizer": {"hash": data.tokenizer_hash},
            },
            stats={
                "steps": state.step,
                "epochs": state.epoch,
                "sequences": state.sequences,
                "tokens": state.tokens,
                "elapsed_s": round(state.elapsed_s, 3),
                "rollbacks": state.rollbacks,
                "skipped_batches": len(state.skipped_batches),
                "world_size": self.ctx.world_size,
                "precision": self.precision.name,
                "parameters": count_parameters(self.model),
                **final_eval,
            },
            config_hash_value=self.run_info["config_hash"],
        )
        manifest.update(
            content_hash=digest,
            vocab_size=data.vocab_size,
            max_seq_length=data.max_seq_length,
            special_token_ids=data.special_ids,
            final=FINAL,
        )
        write_json_atomic(self.out_dir / RUN_MANIFEST, manifest)
        return manifest


# ---------------------------------------------------------------------------------------------- building

# Tokens looked at to tell that some prediction target exists (the first of each shard: a quick, bounded probe).
NO_TARGETS_PROBE_TOKENS = 1 << 20


def build_pretraining_model(
    cfg: PretrainConfig, data: DataArtifact, plan: EpochPlan, masking: MaskingSpec | None,
    ctx: dist.DistContext | None,
) -> Any:
    """The BertForPreTraining to train: from init_from (checked against the data's vocabulary) or new from
    cfg.model and the seed, its MLM output bias set to the training targets' log unigram frequencies when
    mlm_bias_init is unigram. Every rank builds the same weights."""
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
            model, missing = load_pretrained_model(str(src))
        if missing:
            dist.log_main(ctx, f"init_from: initialised weights not in '{src}': {', '.join(missing)}")
        config = model.config
    else:
        try:
            config = build_bert_config(
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
        model = build_model(config, cfg.seed)
        if cfg.mlm_bias_init == "unigram":
            counts = target_token_counts(data, plan, masking)
            with torch.no_grad():
                model.cls.predictions.bias.copy_(torch.from_numpy(unigram_log_prior(counts)))
            dist.log_main(ctx, f"MLM output bias: log unigram frequencies of {int(counts.sum()):,} training targets")
    return model


def micro_batching(batch_size: int, max_micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) for a global batch over world_size processes: the largest divisor of
    the per-process batch that is at most max_micro_batch_size, so any batch_size splits without a remainder."""
    if batch_size % world_size:
        raise ConfigError(
            f"key 'batch_size': {batch_size} sequences cannot be split evenly over {world_size} processes",
            hint=f"choose a batch_size that is a multiple of {world_size}",
        )
    per_process = batch_size // world_size
    micro = max(d for d in range(1, min(per_process, max_micro_batch_size) + 1) if per_process % d == 0)
    return micro, per_process // micro


# ---------------------------------------------------------------------------------------------- the stage

def run(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict | None:
    """Train (or continue training) and return the run's manifest (None on ranks other than 0 under torchrun)."""
    ctx = dist.init_distributed(cfg.device)
    try:
        return _run(cfg, ctx, resume, overwrite)
    finally:
        dist.shutdown(ctx)


def _run(cfg: PretrainConfig, ctx: dist.DistContext, resume: bool, overwrite: bool) -> dict | None:
    out = Path(cfg.output)
    finished = read_bertcli_manifest(out) if resume and (out / FINAL).is_dir() else None
    if finished is not None and finished.get("stage") == "pretrain":
        dist.log_main(ctx, f"'{out}' is a finished run (final/ and manifest.json exist); nothing to do")
        return finished if ctx.is_main else None
    micro_batch_size, accum = micro_batching(cfg.batch_size, cfg.micro_batch_size, ctx.world_size)
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
    if not target_token_counts(data, plan, masking, max_tokens=NO_TARGETS_PROBE_TOKENS).any():
        raise InputError(
            f"'{data.path}': no token of its training sequences can be a prediction target (all special tokens, "
            "[UNK] among them); the loss would be NaN",
            hint="the tokenizer does not cover this corpus: train the vocabulary on it (bert train-vocab)",
        )
    # every rank: the same weights from the seed and the data
    model = build_pretraining_model(cfg, data, plan, masking, ctx)
    device = ctx.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    model.train()
    precision = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision.name == "fp16" else None
    optimizer = build_optimizer(
        model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon,
        fused=device.type in ("cuda", "cpu"),  # one kernel over all parameters; 4% of a BERT-tiny CPU step
    )
    collate = Collator(
        pad_id=data.special_ids["pad"], has_nsp=data.has_nsp, dynamic=masking is not None, masking=masking,
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
        start_run_dir(out, fresh=not is_resume)
    dist.barrier(ctx)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    resume_step = None
    if is_resume:
        loaded = resume_from_newest(out, model, optimizer, scaler, data, ctx)
        if loaded is not None:
            state, chosen = loaded
            resume_step = state.step
            dist.log_main(ctx, f"resuming from {chosen} (step {state.step}, epoch {state.epoch}, "
                               f"batch {state.batch_in_epoch})")
        else:
            dist.log_main(ctx, f"no usable checkpoint in '{out}'; starting from step 0")
            model.load_state_dict(initial)
            optimizer.state.clear()
            resume_step = 0
    if ctx.is_main:
        (out / RUN_CONFIG).write_text(config_to_yaml(cfg), encoding="utf-8")
    module: Any = PretrainingModule(model, has_nsp=data.has_nsp)
    module = dist.wrap_model(ctx, module)
    if cfg.compile:
        module = torch.compile(module)
    tracked = {**config_to_dict(cfg), "data_content_hash": data.content_hash, "tokenizer_hash": data.tokenizer_hash,
               "world_size": ctx.world_size, "precision": precision.name}
    metrics = MetricsWriter(out, ctx.is_main, resume_step, cfg.report_to, tracked, cfg.wandb_project)
    trainer = Trainer(cfg, ctx, data, plan, collate, model, module, optimizer, scaler, precision, micro_batch_size,
                      accum, state, out, run_info, metrics, initial_weights=initial)
    try:
        trainer.describe()
        trainer.fit()
        final_eval = trainer.evaluate()
        if final_eval:
            metrics.write({"step": trainer.state.step, **final_eval})
        metrics.summarize({**final_eval, "steps": trainer.state.step, "tokens": trainer.state.tokens,
                           "data_content_hash": data.content_hash})
        trainer.save_final()
    finally:
        metrics.close()
    manifest = None
    if ctx.is_main:
        _plot(out)
        manifest = trainer.write_manifest(final_eval)
        dist.log_main(ctx, f"finished: {out / FINAL} (step {trainer.state.step}, "
                           f"{trainer.state.tokens:,} tokens, {trainer.state.elapsed_s:.0f} s)")
    dist.barrier(ctx)
    return manifest  # None on ranks other than 0: only rank 0 reports


def _plot(out: Path) -> None:
    try:
        plot_run(out)
    except ImportError:
        dist.warn_main(None, "matplotlib is not installed; no metrics.png (pip install 'bertcli[plot]', then "
                             "`bert plot`)")
