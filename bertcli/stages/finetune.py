"""`bert finetune`: a BERT + labelled examples → a sequence (or sentence-pair) classifier; the best seed is saved."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertcli import classification as C
from bertcli.errors import ArtifactError, InputError, one_line, warn
from bertcli.labelled import Example, LabelledFile, load_examples
from bertcli.schemas import FinetuneConfig

if TYPE_CHECKING:
    from bertcli.devices import Precision

METRICS_FILE = "metrics.jsonl"
# Paths and the device change where a run reads and computes, not what it means: the inputs' sha256s stand for
# the files in the manifest, so the config hash of two runs on the same data under other paths is the same.


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs


def check_model_dir(path: str | Path, bert_only: bool = True) -> Path:
    """The directory to start from: a Hugging Face model directory with weights and a tokenizer, or a `bert
    pretrain` run (its final/). bert_only: a BERT (fine-tuning builds BertForSequenceClassification's head and
    options); `bert predict` also takes another architecture's fine-tuned classifier."""
    from bertcli.model_dir import check_is_bert, check_model_files, read_model_config, resolve_model_dir

    model_dir = resolve_model_dir(path)
    if bert_only:
        check_is_bert(model_dir)
    else:
        read_model_config(model_dir)  # a Hugging Face directory: config.json, readable
    check_model_files(model_dir, "BertForPreTraining" if bert_only else "AutoModelForSequenceClassification")
    return model_dir


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    labels: list[str]  # id order
    train_file: LabelledFile
    dev_file: LabelledFile | None


def read_splits(cfg: FinetuneConfig) -> Splits:
    """The training and dev examples and the label set (from the training file); a dev label the training file
    lacks is an error naming its line."""
    train_file = load_examples(cfg.train, cfg.format, cfg.text_field, cfg.text_pair_field, cfg.label_field)
    labels = C.label_order(e.label for e in train_file.examples)
    if len(labels) < 2:
        raise InputError(
            f"{train_file.path}: every example has the label '{labels[0]}'; a classifier needs two or more",
            hint=f"check label_field (now '{cfg.label_field}')",
        )
    if cfg.dev is not None:
        if Path(cfg.dev).resolve() == Path(cfg.train).resolve():
            warn(f"the dev file is the training file {cfg.train}: its figures measure memory, not generalisation; "
                 "pass another --dev, or none to hold out dev_fraction of the training file")
        dev_file = load_examples(cfg.dev, cfg.format, cfg.text_field, cfg.text_pair_field, cfg.label_field)
        known = set(labels)
        for e in dev_file.examples:
            if e.label not in known:
                raise InputError(
                    f"{dev_file.path}:{e.line}: label '{e.label}' (field '{cfg.label_field}') does not occur in the "
                    f"training file {train_file.path}",
                    hint=f"the model can only predict the training labels: {', '.join(labels)}",
                )
        _warn_if_one_class(dev_file.examples, f"the dev file {dev_file.path}")
        _warn_if_labels_are_rare(train_file, len(labels), cfg.label_field)
        return Splits(train_file.examples, dev_file.examples, labels, train_file, dev_file)
    examples = train_file.examples
    dev_idx = held_out_indices([e.label for e in examples], labels, cfg.dev_fraction, cfg.seed)
    if not dev_idx:
        singletons = len(labels) == len(examples)  # every label once: a column of unique values, or too little data
        raise InputError(
            f"{train_file.path}: {len(examples)} example(s) in {len(labels)} labels are too few to hold out "
            f"dev_fraction {cfg.dev_fraction:g} and keep every label's last example to train on",
            hint=f"every label occurs once: check label_field (now '{cfg.label_field}'), or pass --dev FILE"
            if singletons else "pass --dev FILE, raise dev_fraction, or add examples",
        )
    train = [e for i, e in enumerate(examples) if i not in dev_idx]
    dev = [e for i, e in enumerate(examples) if i in dev_idx]
    _warn_if_one_class(dev, f"the dev set held out of {train_file.path} (dev_fraction {cfg.dev_fraction})")
    _warn_if_labels_are_rare(train_file, len(labels), cfg.label_field)
    return Splits(train, dev, labels, train_file, None)


def held_out_indices(labels_of: list[str], labels: list[str], fraction: float, seed: int) -> set[int]:
    """The examples held out as dev set: `fraction` of them (rounded half up, at least one), apportioned to the
    labels by their shares with the largest remainders first, as scikit-learn's stratify= does, and never a label's
    last example, so that the dev set has the training file's label mix and every dev label is one the model trains
    on. The same for every seed, so the seeds' dev scores are comparable."""
    rng = np.random.default_rng([seed, 0x5E1])
    members: dict[str, list[int]] = {label: [] for label in labels}
    for i, label in enumerate(labels_of):
        members[label].append(i)
    total = max(1, math.floor(fraction * len(labels_of) + 0.5))  # a small file still gets a dev example
    ideal = {label: fraction * len(members[label]) for label in labels}
    counts = {label: min(math.floor(ideal[label]), len(members[label]) - 1) for label in labels}
    # the rest one at a time, largest remainder first (ties in id order: the sort is stable), while a label can spare
    for label in sorted(labels, key=lambda name: math.floor(ideal[name]) - ideal[name]):
        if sum(counts.values()) >= total:
            break
        if counts[label] < len(members[label]) - 1:
            counts[label] += 1
    held_out: set[int] = set()
    for label in labels:  # id order: the split does not depend on the file's order of labels
        held_out.update(rng.permutation(members[label])[:counts[label]].tolist())
    return held_out


def _warn_if_labels_are_rare(train_file: LabelledFile, num_labels: int, label_field: str) -> None:
    # More labels than half the examples: most are seen once or twice, which no classifier learns from (a column
    # of unique values taken for the labels, most often).
    if num_labels > len(train_file.examples) / 2:
        warn(f"{train_file.path}: {num_labels} labels for {len(train_file.examples)} examples, most of them seen "
             f"once or twice; check label_field (now '{label_field}')")


def _warn_if_one_class(dev: list[Example], what: str) -> None:
    # Accuracy on a dev set of one class only says how often the model picks that class, and MCC is 0 by
    # definition: the figures the run prints would look like a result and mean nothing.
    dev_labels = {e.label for e in dev}
    if len(dev_labels) == 1:
        warn(f"{what} has {len(dev)} example(s), all labelled '{dev_labels.pop()}': its accuracy and F1 say little "
             "and its MCC is 0; pass --dev FILE with every label, or a larger dev_fraction")


@dataclass
class Encoded:
    """Token ids of a set of examples, with label ids."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]
    truncated: int

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer: Any, examples: list[Example], label_ids: dict[str, int], max_length: int) -> Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    full = tokenizer(texts, pairs)
    truncated = sum(len(ids) > max_length for ids in full["input_ids"])
    if truncated:
        full = tokenizer(texts, pairs, truncation="longest_first" if pairs else True, max_length=max_length)
    types = full.get("token_type_ids") or [[0] * len(ids) for ids in full["input_ids"]]
    return Encoded(full["input_ids"], types, [label_ids[e.label] for e in examples], truncated)


def _batch(data: Encoded, idx: Any, pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(data.input_ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, T)
    token_type_ids = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
    for b, i in enumerate(idx):
        n = len(data.input_ids[i])
        input_ids[b, :n] = torch.tensor(data.input_ids[i])
        token_type_ids[b, :n] = torch.tensor(data.token_type_ids[i])
        attention_mask[b, :n] = 1
    labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)  # (B,)
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
             "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def evaluate(model: Any, data: Encoded, batch_size: int, pad_id: int, device: Any, num_labels: int,
             precision: Precision | None = None) -> dict[str, float]:
    """loss, accuracy, macro_f1 and mcc of the model on encoded examples (under the training's autocast, so the
    dev figures judge the model as it was trained)."""
    import contextlib

    import torch

    model.eval()
    order = np.argsort([len(ids) for ids in data.input_ids], kind="stable")  # little padding; metrics ignore order
    gold: list[int] = []
    predicted: list[int] = []
    loss_sum = 0.0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = _batch(data, idx, pad_id, device)
            with precision.autocast(device) if precision else contextlib.nullcontext():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()  # (B, K)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            predicted.extend(logits.argmax(-1).tolist())
            gold.extend(batch["labels"].tolist())
    return {"loss": loss_sum / len(gold), **C.classification_metrics(gold, predicted, num_labels)}


# ---------------------------------------------------------------- one seed


@dataclass
class SeedRun:
    result: dict[str, Any]  # seed, dev metrics of the best epoch, epochs, steps, how it stopped
    best_state: dict[str, Any]  # weights of the best epoch, on the CPU


def load_classifier_start(model_dir: Path, labels: list[str], cfg: FinetuneConfig, seed: int) -> Any:
    """The starting model with a new classification head, initialised from `seed`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from bertcli.model_dir import LOAD_FAILED_HINT

    torch.manual_seed(seed)  # the new head's initial weights (and a pooler the checkpoint lacks)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type="single_label_classification",
            classifier_dropout=cfg.classifier_dropout,
            ignore_mismatched_sizes=True,  # starting from another classifier: its head is replaced
            output_loading_info=True,
        )
    except Exception as exc:  # the library raises many types for an unusable directory
        raise ArtifactError(f"'{model_dir}': cannot load it as a sequence classifier: {one_line(exc)[:300]}",
                            hint=LOAD_FAILED_HINT) from exc
    # Only the head may start new. A checkpoint whose names do not fit this architecture (another model type
    # behind a config.json that says bert, a renamed state dict) loads without error as a random encoder, and
    # fine-tuning that would report a random model's accuracy as the pretrained one's.
    mismatched = [entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys", [])]
    fresh = [k for k in [*info.get("missing_keys", []), *mismatched] if not _is_head_weight(k)]
    if fresh:
        raise ArtifactError(
            f"'{model_dir}': {len(fresh)} encoder weights are not in its checkpoint (first: {sorted(fresh)[0]}), so "
            "fine-tuning would start from random weights",
            hint="pass a BERT model directory whose weights match its config.json (e.g. a `bert pretrain` run)",
        )
    return model


def _is_head_weight(name: str) -> bool:
    """The classifier and the pooler: a pretraining checkpoint need not have them."""
    return name.startswith("classifier.") or ".pooler." in f".{name}"


def train_seed(
    cfg: FinetuneConfig, seed: int, model: Any, train: Encoded, dev: Encoded, pad_id: int, device: Any,
    metrics_file: Any, precision: Precision,
) -> SeedRun:
    """Fine-tune for up to max_epochs (early stopping, time budget) and keep the weights of the best dev epoch.
    The weights stay fp32; bf16/fp16 is autocast of the forward pass, and fp16 scales the loss (GradScaler) so that
    small gradients do not underflow, skipping a step whose gradients overflowed."""
    import torch
    from tqdm import tqdm

    from bertcli import model as M
    from bertcli.batching import derive_seed

    num_labels = model.config.num_labels
    model.to(device)
    optimizer = M.build_optimizer(model, cfg.learning_rate, cfg.weight_decay, fused=device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(device.type) if precision.name == "fp16" else None
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = cfg.max_epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_fraction * total_steps)
    torch.manual_seed(derive_seed(seed, 1))  # dropout
    key = cfg.metric
    best_value: float | None = None
    best_state: dict[str, Any] | None = None
    best: dict[str, Any] = {}
    since_best, step, epochs_run, stopped = 0, 0, 0, "max_epochs"
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"finetune seed {seed}", unit="step", dynamic_ncols=True)
    try:
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            order = np.random.default_rng([seed, epoch]).permutation(len(train))
            loss_sum = torch.zeros((), device=device)
            epoch_steps = 0
            for b in range(steps_per_epoch):
                elapsed = time.perf_counter() - start
                if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
                    stopped = "time_budget"
                    break
                progress = step / total_steps
                if cfg.time_budget_s is not None:
                    progress = max(progress, elapsed / cfg.time_budget_s)
                lr = cfg.learning_rate * M.lr_multiplier(
                    step, progress, warmup_steps, warmup_steps / total_steps, cfg.lr_schedule
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = _batch(train, order[b * cfg.batch_size : (b + 1) * cfg.batch_size], pad_id, device)
                with precision.autocast(device):
                    loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                else:
                    loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                loss_sum += loss.detach()
                step += 1
                epoch_steps += 1
                bar.update(1)
            if epoch_steps == 0 and best_state is not None:
                break  # out of time at an epoch boundary: nothing new to evaluate
            epochs_run = epoch
            dev_metrics = evaluate(model, dev, cfg.batch_size, pad_id, device, num_labels, precision)
            record = {
                "seed": seed, "epoch": epoch, "step": step,
                "train_loss": float(loss_sum) / max(epoch_steps, 1), "lr": lr if epoch_steps else 0.0,
                **{f"dev_{k}": v for k, v in dev_metrics.items()},
                "elapsed_s": round(time.perf_counter() - start, 3),
            }
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            bar.set_postfix({"loss": f"{record['train_loss']:.3f}", f"dev_{key}": f"{dev_metrics[key]:.4f}"})
            if best_value is None or dev_metrics[key] > best_value:
                best_value, since_best = dev_metrics[key], 0
                best = {"best_epoch": epoch, **{f"dev_{k}": v for k, v in dev_metrics.items()}}
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                since_best += 1
            if stopped == "time_budget":
                break
            if cfg.patience is not None and since_best >= cfg.patience:
                stopped = "patience"
                break
    finally:
        bar.close()
    result = {"seed": seed, **best, "epochs": epochs_run, "steps": step, "stopped": stopped,
              "train_s": round(time.perf_counter() - start, 3)}
    return SeedRun(result, best_state)


# ---------------------------------------------------------------- the stage


def run(cfg: FinetuneConfig, overwrite: bool = False) -> dict:
    """Fine-tune `seeds` runs and write the best one's model, metrics.jsonl and manifest.json (last) to output."""
    from bertcli.artifacts import atomic_output_dir, check_output, file_sha256, write_manifest
    from bertcli.model_dir import check_tokenizer_fits, resolve_device, warn_if_case_is_lost
    from bertcli.vocab import CORPUS_UNKNOWN_SHARE, count_unknown, warn_if_mostly_unknown

    model_dir = check_model_dir(cfg.model)
    splits = read_splits(cfg)
    inputs_given = tuple(p for p in (cfg.model, cfg.train, cfg.dev) if p)
    check_output(cfg.output, overwrite, inputs_given, stage="finetune")  # before the training, not after it
    device = resolve_device(cfg.device)

    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from bertcli.devices import resolve_precision

    precision = resolve_precision(cfg.precision, device)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model_config = AutoConfig.from_pretrained(str(model_dir))
    except Exception as exc:  # the library raises many types for a broken directory
        raise ArtifactError(f"'{model_dir}': cannot load the tokenizer or config: {exc}") from exc
    check_tokenizer_fits(tokenizer, model_config, model_dir, two_segments=cfg.text_pair_field is not None)
    max_positions = getattr(model_config, "max_position_embeddings", None)
    warn_if_case_is_lost(tokenizer, model_dir)
    if precision.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for what autocast leaves in fp32
    max_length = min(cfg.max_seq_length, max_positions or cfg.max_seq_length)
    if max_length < cfg.max_seq_length:  # config.yaml keeps what was asked; the manifest's stats what was used
        _log(f"note: max_seq_length {cfg.max_seq_length} is more than the model's {max_length} positions; "
             f"using {max_length}")
    label_ids = {label: i for i, label in enumerate(splits.labels)}
    train = encode(tokenizer, splits.train, label_ids, max_length)
    dev = encode(tokenizer, splits.dev, label_ids, max_length)
    warn_if_mostly_unknown(*count_unknown(train.input_ids, tokenizer), f"the training file {splits.train_file.path}",
                           model_dir, (e.text for e in splits.train), limit=CORPUS_UNKNOWN_SHARE)
    if train.truncated or dev.truncated:
        _log(f"warning: {train.truncated} training and {dev.truncated} dev examples are longer than {max_length} "
             "tokens and were truncated")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # padding is not attended
    started = time.perf_counter()
    with atomic_output_dir(cfg.output, overwrite, inputs_given, stage="finetune") as tmp:
        runs: list[dict[str, Any]] = []
        best_state, model = None, None
        with open(tmp / METRICS_FILE, "w", encoding="utf-8") as metrics_file:
            for k in range(cfg.seeds):
                seed = cfg.seed + k
                model = load_classifier_start(model_dir, splits.labels, cfg, seed)
                outcome = train_seed(cfg, seed, model, train, dev, pad_id, device, metrics_file, precision)
                runs.append(outcome.result)
                if C.best_index(runs, f"dev_{cfg.metric}") == len(runs) - 1:
                    best_state = outcome.best_state
                _log(_describe_seed(outcome.result))
        best = runs[C.best_index(runs, f"dev_{cfg.metric}")]
        model.load_state_dict(best_state)
        model.save_pretrained(tmp)
        if max_positions:  # pipeline(..., truncation=True) truncates to this; above the positions it fails
            tokenizer.model_max_length = min(tokenizer.model_max_length, max_positions)
        tokenizer.save_pretrained(tmp)
        medians = C.median_metrics(runs, [f"dev_{m}" for m in C.METRICS])
        stats = {
            **medians,
            "best_seed": best["seed"],
            "metric": cfg.metric,
            "seeds": runs,
            "labels": splits.labels,
            "train_examples": len(train),
            "dev_examples": len(dev),
            "dev_source": "file" if cfg.dev is not None else f"held out ({cfg.dev_fraction:g} of train)",
            "truncated_examples": {"train": train.truncated, "dev": dev.truncated},
            "max_seq_length": max_length,
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(device),
            "precision": precision.name,
            "precision_reason": precision.reason,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        inputs = {"model": {"path": str(model_dir), "sha256": {
            p.name: file_sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name.endswith(
                (".json", ".safetensors", ".txt"))}}}
        inputs["train"] = {"path": str(splits.train_file.path), "sha256": file_sha256(splits.train_file.path)}
        if splits.dev_file is not None:
            inputs["dev"] = {"path": str(splits.dev_file.path), "sha256": file_sha256(splits.dev_file.path)}
        extra = {
            "task": "sentence-pair classification" if cfg.text_pair_field else "sequence classification",
            # As configured (null: `sentence` if present, else `text`): `bert predict --input` reads its files so.
            "text_field": cfg.text_field,
            "text_pair_field": cfg.text_pair_field,
            "label_field": cfg.label_field,
        }
        manifest = write_manifest(tmp, "finetune", cfg, stats, inputs, extra)
    return manifest


def _describe_seed(result: dict[str, Any]) -> str:
    return (
        f"seed {result['seed']}: dev accuracy {result['dev_accuracy']:.4f}, macro-F1 {result['dev_macro_f1']:.4f}, "
        f"MCC {result['dev_mcc']:.4f} (best epoch {result['best_epoch']} of {result['epochs']}, "
        f"stopped by {result['stopped'].replace('_', ' ')})"
    )
