"""`bert pretrain`: masked or pairs artifact → BertForPreTraining checkpoints (single process or torchrun/DDP)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from bertcli import devices, dist
from bertcli.artifacts import DataArtifact, load_data, new_manifest, write_json_atomic
from bertcli.batching import (
    NO_TARGETS_PROBE_TOKENS,
    Collator,
    EpochPlan,
    MicroBatches,
    derive_seed,
    held_out_micro_batches,
    iterate_micro_batches,
    length_buckets,
    max_predictions_of,
    micro_batch_keys,
    target_token_counts,
    to_model_batch,
    unigram_log_prior,
)
from bertcli.checkpoints import (
    MARKER,
    RUN_CONFIG,
    RUN_MANIFEST,
    TrainState,
    finished_note,
    finished_run,
    prepare_output,
    prune_checkpoints,
    restore_newest,
    rng_state,
    save_checkpoint,
    start_run_dir,
)
from bertcli.config import config_hash, config_to_dict, config_to_yaml
from bertcli.devices import Precision, check_ddp_comm, micro_batching, resolve_num_workers, resolve_precision
from bertcli.errors import ArtifactError, BertcliError, ConfigError, InputError, warn
from bertcli.masking import MaskingSpec
from bertcli.metrics import MetricsWriter, efficiency, end_of_run_hints, gpu_peak_tflops, plot_run
from bertcli.model import (
    NUM_STATS,
    BatchWork,
    PretrainingModule,
    build_bert_config,
    build_model,
    build_optimizer,
    count_parameters,
    lr_multiplier,
    pretraining_loss,
    summarize_stats,
    training_flops,
)
from bertcli.model_dir import load_init_model
from bertcli.run_dir import FINAL, STEP_PREFIX
from bertcli.schemas import PretrainConfig

MAX_CONSECUTIVE_ROLLBACKS = 5


# ---------------------------------------------------------------------------------------------- the loop

class NonFiniteLoss(Exception):
    def __init__(self, step: int, position: tuple[int, int], what: str):
        super().__init__(f"{what} at step {step + 1} (epoch {position[0]}, batch {position[1]})")
        self.step, self.position, self.what = step, position, what


# Bits of a step's non-finite flag (a device scalar; see Trainer.train_step).
_BAD_LOSS, _BAD_GRAD = 1.0, 2.0


@dataclass
class Trainer:
    """The pieces of one run, and the loop over them as methods: `fit` trains to the end, rolling back on a
    non-finite loss.

    Why methods and not free functions over plain state: a rollback replaces `state` and `scaler` in the middle
    of the loop, and the token count, the data stream, evaluation and saving must all see the replacement. One
    object that owns them keeps every part of the loop looking at the same, current pieces; free functions would
    have to pass them in and hand the replaced ones back at every call.

    The host never waits for the device inside a step (tests/test_pretrain_gpu.py counts it): the indices the
    step needs come from the loader, a non-finite loss or gradient makes the fused optimizer skip its update on the
    device, and the step's flag is read later, at the next check (log_every, evaluation, saving, the end) together
    with the other steps' since the last one. A bad step found there rolls back as before: no checkpoint is written
    before its steps are checked, so none ever holds non-finite weights, and the offending batch is skipped.
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
    num_workers: int = 0  # loader processes (num_workers resolved)
    fixed_width: bool = False  # the compiled step: every shape fixed by (B, T) (see model.pretraining_loss)
    peak_tflops: float | None = None  # per device, for MFU
    vocab_multiple: int = 1  # vocabulary padding inside the MLM matmul (model.PretrainingModule)
    pending: list = field(default_factory=list)  # (step index, data position, flag) of the steps not yet checked
    agreed_clock: tuple[int, float, float] = (0, 0.0, 0.0)  # DDP: (step, elapsed, s/step) all ranks agreed on
    last_eval: tuple[int, dict] | None = None  # (step, figures) of the loop's latest evaluation

    # ------------------------------------------------------------------ schedule

    def lr_at(self, progress: float) -> float:
        cfg, state = self.cfg, self.state
        if state.warmup_progress is None and state.step >= cfg.warmup_steps:
            state.warmup_progress = progress  # the decay spans exactly what is left after warmup
        warm = state.warmup_progress if state.warmup_progress is not None else 0.0
        factor = lr_multiplier(state.step, progress, cfg.warmup_steps, warm, cfg.lr_schedule, cfg.lr_decay_fraction)
        return cfg.learning_rate * factor

    def progress(self, elapsed_s: float) -> float:
        p = self.state.step / self.cfg.max_steps
        if self.cfg.time_budget_s:
            p = max(p, elapsed_s / self.cfg.time_budget_s)
        return min(p, 1.0)

    def schedule_elapsed(self, local_elapsed_s: float) -> float:
        """The training time the schedule and the budget follow. One process: its clock. Several: the slowest
        rank's, as agreed at the last check (checks share one all-reduce with the non-finite flags), extrapolated
        by the agreed seconds per step since: every rank computes the same value without a collective per step."""
        if not self.ctx.distributed:
            return local_elapsed_s
        step, elapsed, per_step = self.agreed_clock
        return elapsed + (self.state.step - step) * per_step

    # ------------------------------------------------------------------ data

    def micro_batch_stream(self) -> Iterator[list[dict]]:
        """Groups of `accum` micro-batches, one group per optimizer step, from the saved data position on, through
        one loader whose workers live as long as the stream (epochs do not restart them)."""
        state = self.state
        dataset = MicroBatches(self.plan, self.collate, self.micro_batch_size, self.accum, self.ctx.rank,
                               self.ctx.world_size, self.cfg.seed)
        keys = micro_batch_keys(self.plan, state.epoch, state.batch_in_epoch, self.accum,
                                {tuple(x) for x in state.skipped_batches})
        group: list[dict] = []
        for collated in iterate_micro_batches(dataset, keys, self.num_workers, self.ctx.device.type == "cuda"):
            group.append(collated)
            if len(group) == self.accum:
                yield group
                group = []

    # ------------------------------------------------------------------ one step, one evaluation

    def _seed_dropout(self, micro_batch: int) -> None:
        # dropout depends only on (seed, step, micro-batch j): resumption and world size do not change it
        torch.manual_seed(derive_seed(self.cfg.seed, self.state.step, 4, micro_batch))

    def train_step(self, micro_batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step over this rank's micro-batches, without the host waiting for the device.

        Returns device tensors: the summed statistics, the gradient norm, and the step's non-finite flag (0 when
        finite; _BAD_LOSS and/or _BAD_GRAD bits otherwise), which check_steps reads later. A flagged step's update is
        skipped on the device: the fused optimizer's found_inf (what GradScaler uses), so weights stay finite.
        """
        ctx, cfg = self.ctx, self.cfg
        stats = torch.zeros(NUM_STATS, dtype=torch.float64, device=ctx.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)
        for a, collated in enumerate(micro_batches):
            batch = to_model_batch(collated, ctx.device, fixed_width=self.fixed_width)
            self._seed_dropout(int(collated["micro_batch"]))
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
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if cfg.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.detach().float().norm() for p in params if p.grad is not None])
            )
        bad_loss = (~torch.isfinite(loss_sum)).float() * _BAD_LOSS
        if self.scaler is not None:
            # fp16: an overflowing gradient is normal; the scaler skips that update and lowers the scale
            flag = bad_loss
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            flag = bad_loss + (~torch.isfinite(grad_norm)).float() * _BAD_GRAD
            self.optimizer.found_inf = (flag > 0).float()  # 1.0: the fused kernel leaves weights and state alone
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats, grad_norm.detach(), flag

    def check_steps(self, local_elapsed_s: float) -> None:
        """Read the flags of the steps since the last check (one host sync; under DDP one all-reduce, which also
        agrees on the elapsed time for the schedule) and raise NonFiniteLoss for the first bad one."""
        ctx, state = self.ctx, self.state
        pending, self.pending = self.pending, []
        if not pending and not ctx.distributed:
            return
        values = torch.stack([torch.zeros((), device=ctx.device)] + [f for _, _, f in pending]).double()
        values[0] = local_elapsed_s
        if ctx.distributed:
            dist.all_reduce_max(ctx, values)  # any rank's bad step stops every rank; the slowest clock leads
        host = values.tolist()
        if ctx.distributed:
            step, elapsed, per_step = self.agreed_clock
            if state.step > step:
                per_step = (host[0] - elapsed) / (state.step - step)
            self.agreed_clock = (state.step, host[0], per_step)
            state.elapsed_s = host[0]  # the same on every rank, so a rollback restarts every clock alike
        for (step, position, _), flag in zip(pending, host[1:]):
            if flag > 0:
                what = "non-finite loss" if int(flag) & int(_BAD_LOSS) else "non-finite gradient"
                raise NonFiniteLoss(step, position, what)

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
                    _, s = pretraining_loss(self.model, batch, self.data.has_nsp, vocab_multiple=self.vocab_multiple)
                stats += s
        self.model.train(was_training)
        dist.all_reduce_sum(ctx, stats)
        summary = summarize_stats(stats.cpu())
        return {f"eval_{k}": v for k, v in summary.items()}

    # ------------------------------------------------------------------ the loop

    def fit(self) -> None:
        """Train until max_steps or the time budget; on a non-finite loss stop or roll back (on_nonfinite)."""
        consecutive = 0
        last_bad_step = -2
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
                # in a row: the run did not get past the previous bad step
                consecutive = consecutive + 1 if err.step <= last_bad_step + 1 else 1
                last_bad_step = err.step
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
        self.pending = []
        self.agreed_clock = (state.step, state.elapsed_s, 0.0)
        interval_stats = torch.zeros(NUM_STATS + 3, dtype=torch.float64)  # stats, tokens, steps, model FLOPs
        interval_device = torch.zeros(NUM_STATS, dtype=torch.float64, device=ctx.device)
        interval_start = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not ctx.is_main, desc="pretrain", unit="step",
                   dynamic_ncols=True)
        stream = self.micro_batch_stream()
        try:
            while state.step < cfg.max_steps:
                elapsed = self.schedule_elapsed(time.perf_counter() - start_time)
                if cfg.time_budget_s and elapsed >= cfg.time_budget_s:
                    break
                progress = self.progress(elapsed)
                lr = self.lr_at(progress)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                group_batches = next(stream)
                stats, grad_norm, flag = self.train_step(group_batches)
                epoch, b = int(group_batches[0]["epoch"]), int(group_batches[0]["batch_index"])
                self.pending.append((state.step, (epoch, b), flag))
                state.step += 1
                state.epoch, state.batch_in_epoch = epoch, b + 1
                state.sequences += cfg.batch_size
                interval_device += stats  # stays on the device until the next log step
                tokens = sum(int(c["num_tokens"]) for c in group_batches)
                work = sum((c["work"] for c in group_batches), BatchWork())
                interval_stats[NUM_STATS] += tokens
                interval_stats[NUM_STATS + 1] += 1
                interval_stats[NUM_STATS + 2] += training_flops(self.model.config, work)
                self.unsynced_tokens += tokens
                state.elapsed_s = time.perf_counter() - start_time
                bar.update(1)
                last = state.step == cfg.max_steps
                log = state.step % cfg.log_every == 0 or last
                evaluate = bool(cfg.eval_every) and state.step % cfg.eval_every == 0 and not last
                save = bool(cfg.save_every) and state.step % cfg.save_every == 0 and not last
                if log or evaluate or save:
                    self.check_steps(state.elapsed_s)  # raises NonFiniteLoss for a bad step since the last check
                if log:
                    interval_stats[:NUM_STATS] = interval_device.cpu()
                    interval_device.zero_()
                    dist.all_reduce_sum(ctx, interval_stats)
                    now = time.perf_counter()
                    record = self._train_record(interval_stats, now - interval_start, lr, grad_norm)
                    self.metrics.write(record)
                    postfix = {"loss": f"{record['loss']:.3f}", "lr": f"{lr:.2e}",
                               "tok_s": f"{record['tokens_per_s']:,.0f}", "seq_s": f"{record['sequences_per_s']:,.1f}"}
                    if record.get("mfu") is not None:
                        postfix["mfu"] = f"{record['mfu']:.1%}"
                    if cfg.time_budget_s and progress > 0:  # end the bar where the budget will: not at max_steps
                        bar.total = max(state.step, min(cfg.max_steps, round(state.step / progress)))
                    bar.set_postfix(postfix)
                    interval_stats.zero_()
                    interval_start = time.perf_counter()
                if evaluate:
                    result = self.evaluate()
                    self.last_eval = (state.step, result)
                    if result:
                        self.metrics.write({"step": state.step, **result})
                if state.step % cfg.log_every == 0:
                    self.sync_tokens()
                if save:
                    self.sync_tokens()
                    self.save_step()
            self.check_steps(time.perf_counter() - start_time)  # the steps since the last check
        finally:
            bar.close()
            stream.close()  # stops the loader's workers
        self.sync_tokens()
        state.elapsed_s = time.perf_counter() - start_time

    def final_evaluation(self) -> dict[str, float]:
        """The final weights' evaluation, written to metrics.jsonl; the loop's own when the run ended on an evaluation
        step (the time budget often runs out during one): the same weights, the same figures, not a second line."""
        if self.last_eval is not None and self.last_eval[0] == self.state.step:
            return self.last_eval[1]
        result = self.evaluate()
        if result:
            self.metrics.write({"step": self.state.step, **result})
        return result

    def _train_record(self, interval_stats: torch.Tensor, interval_s: float, lr: float,
                      grad_norm: torch.Tensor) -> dict:
        """One metrics.jsonl line from a log interval's summed (over ranks) stats, tokens, steps and model FLOPs."""
        summary = summarize_stats(interval_stats[:NUM_STATS])
        interval_s = max(interval_s, 1e-9)
        steps = interval_stats[NUM_STATS + 1].item()
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
            "sequences_per_s": self.cfg.batch_size * steps / interval_s,
            **efficiency(interval_stats[NUM_STATS + 2].item(), interval_s, self.peak_tflops, self.ctx.world_size),
            "epoch": self.state.epoch,
            "elapsed_s": self.state.elapsed_s,
        }
        if self.ctx.device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
        if self.scaler is not None:
            record["loss_scale"] = float(self.scaler.get_scale())
        return record

    def sync_tokens(self) -> None:
        """Add the tokens all ranks trained on since the last sync to the state (before logging or saving)."""
        pending = torch.tensor([float(self.unsynced_tokens)], dtype=torch.float64)
        self.state.tokens += int(dist.all_reduce_sum(self.ctx, pending).item())
        self.unsynced_tokens = 0

    def _save(self, name: str) -> None:
        """Rank 0 writes checkpoint `name` with every rank's RNG states (never with non-finite weights)."""
        ctx = self.ctx
        rng_states = dist.gather_objects(ctx, rng_state())
        if not ctx.is_main:
            return
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never write non-finite weights into a checkpoint
            dist.warn_main(ctx, f"weights {bad[:3]} are not finite at step {self.state.step}; checkpoint not written")
            return
        save_checkpoint(self.out_dir, name, self.model, self.optimizer, self.scaler, self.state, self.run_info,
                        self.data.tokenizer_dir, rng_states)
        if name.startswith(STEP_PREFIX):
            prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)

    def save_step(self) -> None:
        """Rank 0 writes step-N and prunes old ones; all ranks wait for it."""
        self._save(f"{STEP_PREFIX}{self.state.step:08d}")
        dist.barrier(self.ctx)

    def save_final(self) -> None:
        self._save(FINAL)

    def rollback(self, err: NonFiniteLoss) -> None:
        """Restore the last checkpoint (or the initial weights) and drop the batch that gave a non-finite value.
        Rank 0 reads the checkpoint and every rank receives it (checkpoints.restore_newest)."""
        ctx = self.ctx
        skipped = list(self.state.skipped_batches) + [list(err.position)]
        rollbacks = self.state.rollbacks + 1
        restored = restore_newest(self.out_dir, self.model, self.optimizer, self.scaler, ctx)
        if restored is not None:
            state, path = restored
        else:
            path = None
            self.model.load_state_dict(self.initial_weights)
            self.optimizer.state.clear()
            state = TrainState()
            if self.scaler is not None:
                self.scaler = torch.amp.GradScaler(ctx.device.type)
        state.skipped_batches, state.rollbacks = skipped, rollbacks
        state.elapsed_s = self.state.elapsed_s  # the time budget counts wall time, rolled-back steps included
        self.state = state
        self.last_eval = None  # figures of weights the run no longer has
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
            f"process(es), {self.precision.name} on {ctx.device} ({self.precision.reason}), "
            f"{torch.get_num_threads()} CPU threads, {'compiled, ' if cfg.compile else ''}{cfg.max_steps} steps"
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
                "world_size": self.ctx.world_size, "num_threads": torch.get_num_threads(),
                "precision": self.precision.name,
                "precision_reason": self.precision.reason,
                "tf32": self.precision.tf32,
                "compile": bool(self.cfg.compile),
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


def build_pretraining_model(
    cfg: PretrainConfig, data: DataArtifact, plan: EpochPlan, masking: MaskingSpec | None,
    ctx: dist.DistContext | None,
) -> Any:
    """The BertForPreTraining to train: from init_from (checked against the data's vocabulary) or new from
    cfg.model and the seed (its output bias is set later, set_unigram_output_bias, if no checkpoint is restored).
    Every rank builds the same weights."""
    if cfg.init_from:
        model, missing, grown = load_init_model(Path(cfg.init_from), data.tokenizer_dir, data.path, cfg.seed)
        if missing:
            dist.log_main(ctx, f"init_from: initialised weights not in '{cfg.init_from}': {', '.join(missing)}")
        if grown:
            dist.log_main(ctx, f"init_from: grew the vocabulary by {grown:,} rows to {model.config.vocab_size:,} "
                               "(each new row the mean of its pieces' old rows)")
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
    return model if model is not None else build_model(config, cfg.seed)


def set_unigram_output_bias(model: Any, data: DataArtifact, plan: EpochPlan, masking: MaskingSpec | None,
                            ctx: dist.DistContext | None) -> None:
    """mlm_bias_init unigram: the MLM output bias of a new model := the training targets' log unigram frequencies.
    Only for a run that starts from step 0 (a restored checkpoint has its own bias, and counting reads the data)."""
    counts = target_token_counts(data, plan, masking)
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.from_numpy(unigram_log_prior(counts)))
    dist.log_main(ctx, f"MLM output bias: log unigram frequencies of {int(counts.sum()):,} training targets")


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
    # rank 0 alone looks at the run directory (another node may not see it); the others follow its decisions
    done = dist.main_decides(ctx, lambda: finished_run(out, cfg) if resume else None)
    if done is not None:
        dist.log_main(ctx, finished_note(out, cfg, done))
        return done if ctx.is_main else None
    trainer = build_trainer(cfg, ctx, resume, overwrite)
    try:
        trainer.describe()
        trainer.fit()
        final_eval = trainer.final_evaluation()
        trainer.metrics.summarize({**final_eval, "steps": trainer.state.step, "tokens": trainer.state.tokens,
                                   "data_content_hash": trainer.data.content_hash})
        trainer.save_final()
    finally:
        trainer.metrics.close()
    manifest = None
    if ctx.is_main:
        _plot(out)
        manifest = trainer.write_manifest(final_eval)
        dist.log_main(ctx, f"finished: {out / FINAL} (step {trainer.state.step}, "
                           f"{trainer.state.tokens:,} tokens, {trainer.state.elapsed_s:.0f} s)")
        for hint in end_of_run_hints(trainer.metrics.path, ctx.device.type, trainer.state.step, cfg.warmup_steps):
            warn(hint)
    dist.barrier(ctx)
    return manifest  # None on ranks other than 0: only rank 0 reports


def build_trainer(cfg: PretrainConfig, ctx: dist.DistContext, resume: bool = False,
                  overwrite: bool = False) -> Trainer:
    """Everything a run needs, on every rank: data, model (restored from the newest checkpoint on --resume),
    optimizer, the module under DDP / torch.compile, and the run directory prepared by rank 0."""
    out = Path(cfg.output)
    micro_batch_size, accum = micro_batching(cfg.batch_size, cfg.micro_batch_size, ctx.world_size)
    torch.set_num_threads(devices.resolve_num_threads(cfg.num_threads, ctx.device))
    check_ddp_comm(cfg, ctx)
    is_resume = dist.main_decides(ctx, lambda: prepare_output(cfg, resume, overwrite, ctx))  # names a run's data
    data = load_data(cfg.data)
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
    precision = resolve_precision(cfg.precision, device)
    if precision.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for what autocast leaves in fp32
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    model.train()
    scaler = torch.amp.GradScaler(device.type) if precision.name == "fp16" else None
    # fused: one kernel over all parameters (4% of a BERT-tiny CPU step), and it can skip a step on the device
    # (found_inf), which is what keeps the non-finite check off the host (Trainer.train_step)
    optimizer = build_optimizer(
        model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon, fused=True,
    )
    collate = Collator(
        pad_id=data.special_ids["pad"], has_nsp=data.has_nsp, dynamic=masking is not None, masking=masking,
        pad_to_multiple_of=8 if device.type == "cuda" else 1,
        max_predictions=max_predictions_of(data, masking), fixed_width=bool(cfg.compile),
        length_buckets=length_buckets(data.max_seq_length) if cfg.compile else (),
        max_width=model.config.max_position_embeddings,
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
        if is_resume:
            (out / RUN_MANIFEST).unlink(missing_ok=True)  # continuing a finished run: it is not finished meanwhile
    dist.barrier(ctx)
    restored = restore_newest(out, model, optimizer, scaler, ctx, data) if is_resume else None
    resume_step = restored[0].step if restored else (0 if is_resume else None)
    if restored is not None:
        state, chosen = restored
        dist.log_main(ctx, f"resuming from {chosen} (step {state.step}, epoch {state.epoch}, "
                           f"batch {state.batch_in_epoch})")
    elif is_resume:
        dist.log_main(ctx, f"'{out}' has no checkpoint yet; starting from step 0")
    if restored is None and cfg.mlm_bias_init == "unigram" and not cfg.init_from:
        set_unigram_output_bias(model, data, plan, masking, ctx)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if ctx.is_main:
        (out / RUN_CONFIG).write_text(config_to_yaml(cfg), encoding="utf-8")
    vocab_multiple = 64 if device.type == "cuda" else 1
    module: Any = PretrainingModule(model, has_nsp=data.has_nsp, vocab_multiple=vocab_multiple)
    module = dist.wrap_model(ctx, module, cfg.ddp_comm)
    if cfg.compile:
        # one graph per length bucket (the collator pads to them), none for the rest: dynamic=False
        module = torch.compile(module, dynamic=False)
    tracked = {**config_to_dict(cfg), "data_content_hash": data.content_hash, "tokenizer_hash": data.tokenizer_hash,
               "world_size": ctx.world_size, "precision": precision.name}
    metrics = MetricsWriter(out, ctx.is_main, resume_step, cfg.report_to, tracked, cfg.wandb_project)
    peak = cfg.peak_tflops or (gpu_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    return Trainer(cfg, ctx, data, plan, collate, model, module, optimizer, scaler, precision, micro_batch_size,
                   accum, state, out,
                   run_info, metrics, initial_weights=initial, num_workers=resolve_num_workers(cfg.num_workers, device),
                   fixed_width=bool(cfg.compile), peak_tflops=peak, vocab_multiple=vocab_multiple)


def _plot(out: Path) -> None:
    try:
        plot_run(out)
    except ImportError:
        dist.warn_main(None, "matplotlib is not installed; no metrics.png (pip install 'bertcli[plot]', then "
                             "`bert plot`)")
