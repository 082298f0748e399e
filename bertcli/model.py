"""BERT pretraining model logic: config presets, the masked-positions-only loss, optimizer groups, LR schedule."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForPreTraining

# Google's BERT sizes (github.com/google-research/bert, "24 smaller BERT models"): (layers, hidden).
# Heads = hidden / 64 and intermediate = 4 · hidden, as in all of them.
PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}

# The BertConfig fields a `model:` section may set (everything else comes from the data or is fixed).
BERT_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
)


def preset_fields(preset: str) -> dict[str, int]:
    """BertConfig fields of one of Google's sizes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers, hidden = PRESETS[preset]
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": hidden // 64,
        "intermediate_size": 4 * hidden,
    }


def build_bert_config(
    preset: str | None,
    fields: dict[str, Any],
    vocab_size: int,
    pad_token_id: int,
    attn_implementation: str = "sdpa",
) -> BertConfig:
    """BertConfig from a preset, then explicit fields (None = not set), with vocab and [PAD] taken from the data.

    Explicit fields override the preset; a hidden_size given without heads/intermediate derives them the
    preset way (hidden / 64, 4 · hidden) so `model.hidden_size: 256` alone is a valid model.
    """
    values: dict[str, Any] = preset_fields(preset) if preset else {}
    given = {k: v for k, v in fields.items() if v is not None and k in BERT_CONFIG_FIELDS}
    values.update(given)
    hidden = values.get("hidden_size", BertConfig().hidden_size)
    if "num_attention_heads" not in given and ("hidden_size" in given or "num_attention_heads" not in values):
        values["num_attention_heads"] = max(1, hidden // 64)
    if "intermediate_size" not in given and ("hidden_size" in given or "intermediate_size" not in values):
        values["intermediate_size"] = 4 * hidden
    if hidden % values["num_attention_heads"]:
        raise ValueError(
            f"hidden_size {hidden} is not a multiple of num_attention_heads {values['num_attention_heads']}"
        )
    config = BertConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **values)
    config._attn_implementation = attn_implementation
    return config


def build_model(config: BertConfig, seed: int) -> BertForPreTraining:
    """A freshly initialised BertForPreTraining (SDPA attention); the seed fixes the initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForPreTraining(config)
    return model


def load_pretrained_model(path: str, attn_implementation: str = "sdpa") -> tuple[BertForPreTraining, list[str]]:
    """BertForPreTraining from a Hugging Face BERT directory; returns the model and the names of weights that
    were missing there and therefore freshly initialised (e.g. the NSP head of a BertForMaskedLM checkpoint).

    Only safetensors are read (use_safetensors=True): a pickled checkpoint is never unpickled.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = BertForPreTraining.from_pretrained(
            path,
            attn_implementation=attn_implementation,
            use_safetensors=True,
            output_loading_info=True,
            local_files_only=True,
        )
    missing = sorted(set(info.get("missing_keys", [])))
    return model, missing


@dataclass
class PretrainingBatch:
    """One micro-batch, already on the device.

    input_ids, token_type_ids, attention_mask: (B, T) int64. masked_positions: (N,) flat indices b·T + t of the
    predicted positions, ascending (row by row); masked_labels: (N,) their original ids. next_sentence_label: (B,)
    or None (no NSP).
    """

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    masked_positions: torch.Tensor
    masked_labels: torch.Tensor
    next_sentence_label: torch.Tensor | None

    def to(self, device: torch.device) -> PretrainingBatch:
        return PretrainingBatch(
            *(t.to(device, non_blocking=True) if t is not None else None for t in self.__dict__.values())
        )


# Indices into the statistics vector returned with the loss (summed over micro-batches and ranks).
STAT_MLM_LOSS_SUM, STAT_MLM_CORRECT, STAT_MLM_COUNT, STAT_NSP_LOSS_SUM, STAT_NSP_CORRECT, STAT_NSP_COUNT = range(6)
NUM_STATS = 6


def _can_prune(model: BertForPreTraining) -> bool:
    c = model.config
    return not (c.is_decoder or c.add_cross_attention or c.chunk_size_feed_forward or model.bert.pooler is None
                or getattr(model.bert, "gradient_checkpointing", False))


def _encode_pruned(model: BertForPreTraining, batch: PretrainingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder with its last layer evaluated only where the heads read it: [CLS] and the masked positions.

    The last layer's outputs elsewhere are never used (MLM reads the masked positions, NSP the pooled [CLS]), so
    its queries, attention output, feed-forward and LayerNorms run on ~15% of the positions; keys and values still
    see every token. The result equals the full encoder's at those positions (test_model checks it).
    Returns (masked hidden (N, H) in masked_positions order, pooled output (B, H)).
    """
    from transformers.masking_utils import create_bidirectional_mask

    bert = model.bert
    ids, am = batch.input_ids, batch.attention_mask
    b, t = ids.shape
    hidden = bert.embeddings(input_ids=ids, token_type_ids=batch.token_type_ids)  # (B, T, H)
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=am)
    layers = bert.encoder.layer
    for layer in layers[:-1]:
        hidden = layer(hidden, mask)
    # Query slots per row: slot 0 = [CLS], then the row's masked positions (masked_positions are row-major).
    pos = batch.masked_positions
    rows, cols = pos // t, pos % t  # (N,)
    counts = torch.bincount(rows, minlength=b)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(pos.numel(), device=pos.device) - starts[rows] + 1  # (N,)
    width = int(counts.max().item()) + 1 if pos.numel() else 1
    query_index = torch.zeros(b, width, dtype=torch.long, device=pos.device)  # (B, Q); padding slots read [CLS]
    query_index[rows, slots] = cols
    last = layers[-1]
    sa = last.attention.self
    heads, head_size = sa.num_attention_heads, sa.attention_head_size
    h = hidden.shape[-1]
    q_in = torch.gather(hidden, 1, query_index[..., None].expand(-1, -1, h))  # (B, Q, H)
    q = sa.query(q_in).view(b, width, heads, head_size).transpose(1, 2)  # (B, h, Q, d)
    k = sa.key(hidden).view(b, t, heads, head_size).transpose(1, 2)  # (B, h, T, d)
    v = sa.value(hidden).view(b, t, heads, head_size).transpose(1, 2)
    key_mask = am.bool()[:, None, None, :]  # (B, 1, 1, T): True = attend
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask, dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling
    )  # (B, h, Q, d)
    context = context.transpose(1, 2).reshape(b, width, h)
    attn_out = last.attention.output(context, q_in)  # (B, Q, H)
    out = last.output(last.intermediate(attn_out), attn_out)  # (B, Q, H)
    masked_hidden = out[rows, slots]  # (N, H)
    pooled = bert.pooler(out)  # reads out[:, 0], the [CLS] slot
    return masked_hidden, pooled


class _MaskedLMCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the decoder's logits (x @ W^T + b) against labels, and the number of correct argmaxes.

    Used on CPU in fp32, where the elementwise passes over the (N, V) logits cost as much as the matmuls:
    log_softmax, its backward, the argmax for accuracy and the one-hot gradient buffer each read or write the whole
    matrix, and two of them take an exp of every element. Here one buffer holds exp(logit - row max) and serves the
    loss, the accuracy and both gradient matmuls: softmax - onehot is applied as a per-row scale after each matmul
    plus a correction at the label rows, so backward only reads the matrix. Same values as F.cross_entropy up to
    float rounding (test_model checks loss and gradients against the stock forward).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, labels):  # x (N, H), weight (V, H), bias (V,), labels (N,)
        logits = torch.addmm(bias, x, weight.t())  # (N, V)
        target = logits.gather(1, labels[:, None])  # (N, 1)
        top, predicted = logits.max(1, keepdim=True)  # (N, 1) each
        exp = logits.sub_(top).exp_()  # in place: exp(logit - max), in (0, 1]
        norm = exp.sum(1, keepdim=True)  # (N, 1)
        loss_sum = (top + norm.log() - target).sum()
        correct = (predicted[:, 0] == labels).sum()
        ctx.save_for_backward(x, weight, labels, exp, norm)
        ctx.mark_non_differentiable(correct)
        return loss_sum, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        x, weight, labels, exp, norm = ctx.saved_tensors
        # d(loss_sum)/d(logits) = exp / norm - onehot(labels); scale rows after the matmuls instead of before
        row_scale = grad_loss / norm  # (N, 1)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = exp.mm(weight).mul_(row_scale).sub_(weight[labels] * grad_loss)
        if ctx.needs_input_grad[1]:
            grad_weight = exp.t().mm(x * row_scale).index_add_(0, labels, x * -grad_loss)
        if ctx.needs_input_grad[2]:
            grad_bias = exp.t().mv(row_scale[:, 0]).index_add_(0, labels, (-grad_loss).expand(labels.numel()))
        return grad_x, grad_weight, grad_bias, None


def _use_fused_cross_entropy(hidden: torch.Tensor) -> bool:
    # On GPU the logits are cheap next to the matmuls (and autocast / torch.compile handle them); on CPU they are not.
    return (hidden.device.type == "cpu" and hidden.dtype == torch.float32 and hidden.shape[0] > 0
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def pretraining_loss(
    model: BertForPreTraining, batch: PretrainingBatch, has_nsp: bool = True, prune_last_layer: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM + NSP loss of a stock BertForPreTraining, with the vocabulary projection only at masked positions.

    BertForPreTraining.forward projects every position onto the whole vocabulary (B·T·V logits) although only
    ~15% are scored; like Google's, NVIDIA's, MosaicBERT's and Cramming's code we gather the masked hidden states
    first, and the last encoder layer runs only at [CLS] and the masked positions (see _encode_pruned). The
    modules used are the model's own, so the saved weights are a stock BertForPreTraining.

    Returns (loss, stats): loss = mean MLM cross-entropy over the masked positions + mean NSP cross-entropy;
    stats (NUM_STATS,) float64, detached: sums and counts for logging (see STAT_*).
    """
    if prune_last_layer and _can_prune(model):
        masked_hidden, pooled = _encode_pruned(model, batch)  # (N, H), (B, H)
    else:
        out = model.bert(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
        )
        hidden = out.last_hidden_state  # (B, T, H)
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B·T, H)
        masked_hidden = flat.index_select(0, batch.masked_positions)  # (N, H)
        pooled = out.pooler_output  # (B, H)
    head = model.cls.predictions
    labels = batch.masked_labels
    if _use_fused_cross_entropy(masked_hidden):
        transformed = head.transform(masked_hidden)  # (N, H)
        mlm_loss_sum, mlm_correct = _MaskedLMCrossEntropy.apply(
            transformed, head.decoder.weight, head.decoder.bias, labels
        )
    else:
        logits = head(masked_hidden).float()  # (N, V), fp32 for a stable softmax
        mlm_loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        with torch.no_grad():
            mlm_correct = (logits.argmax(-1) == labels).sum()
    mlm_count = labels.numel()
    mlm_loss = mlm_loss_sum / max(mlm_count, 1)

    nsp_logits = model.cls.seq_relationship(pooled).float()  # (B, 2)
    stats = torch.zeros(NUM_STATS, dtype=torch.float64, device=nsp_logits.device)
    with torch.no_grad():
        stats[STAT_MLM_LOSS_SUM] = mlm_loss_sum.detach().double()
        stats[STAT_MLM_CORRECT] = mlm_correct.double()
        stats[STAT_MLM_COUNT] = mlm_count
    if has_nsp and batch.next_sentence_label is not None:
        nsp_labels = batch.next_sentence_label
        nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        with torch.no_grad():
            stats[STAT_NSP_LOSS_SUM] = nsp_loss.detach().double() * nsp_labels.numel()
            stats[STAT_NSP_CORRECT] = (nsp_logits.argmax(-1) == nsp_labels).sum().double()
            stats[STAT_NSP_COUNT] = nsp_labels.numel()
    else:
        # MLM-only data: keep the pooler and NSP head in the graph with zero gradient, so DDP sees every
        # parameter used and the saved model still has (untrained) NSP weights.
        nsp_loss = nsp_logits.sum() * 0.0
    return mlm_loss + nsp_loss, stats


class PretrainingModule(nn.Module):
    """Wraps a BertForPreTraining so that DDP and torch.compile see the whole loss computation in forward()."""

    def __init__(self, model: BertForPreTraining, has_nsp: bool = True):
        super().__init__()
        self.model = model
        self.has_nsp = has_nsp

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        masked_positions: torch.Tensor,
        masked_labels: torch.Tensor,
        next_sentence_label: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Tensors, not a PretrainingBatch, so DDP and torch.compile handle the inputs without special cases.
        batch = PretrainingBatch(
            input_ids, token_type_ids, attention_mask, masked_positions, masked_labels, next_sentence_label
        )
        return pretraining_loss(self.model, batch, self.has_nsp)


def summarize_stats(stats: torch.Tensor | list[float]) -> dict[str, float]:
    """Loss means and accuracies from summed statistics (see STAT_*)."""
    s = [float(x) for x in stats]
    out = {
        "mlm_loss": s[STAT_MLM_LOSS_SUM] / s[STAT_MLM_COUNT] if s[STAT_MLM_COUNT] else float("nan"),
        "mlm_accuracy": s[STAT_MLM_CORRECT] / s[STAT_MLM_COUNT] if s[STAT_MLM_COUNT] else float("nan"),
    }
    if s[STAT_NSP_COUNT]:
        out["nsp_loss"] = s[STAT_NSP_LOSS_SUM] / s[STAT_NSP_COUNT]
        out["nsp_accuracy"] = s[STAT_NSP_CORRECT] / s[STAT_NSP_COUNT]
    return out


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on weight matrices/embeddings, none on biases and LayerNorm (as BERT does)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        if not param.requires_grad:
            continue
        if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or param.ndim < 2:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    fused: bool = False,
) -> torch.optim.AdamW:
    """torch.optim.AdamW over optimizer_param_groups; fused=True: one kernel for all parameters (CUDA and CPU)."""
    groups = optimizer_param_groups(model, weight_decay)
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": None}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **kwargs)


def lr_multiplier(
    step: int,
    progress: float,
    warmup_steps: int,
    warmup_progress: float,
    schedule: str,
) -> float:
    """Factor on the peak learning rate for the update that follows `step` completed updates.

    Linear warmup over warmup_steps, then decay over training progress p in [0, 1] (p = step / max_steps, or the
    share of time_budget_s spent when that is larger): `linear` to 0, `cosine` to 0, or `constant`.
    warmup_progress is p at the end of warmup, so the decay spans exactly the rest of training.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = 1.0 - warmup_progress
    q = min(max((progress - warmup_progress) / span, 0.0), 1.0) if span > 0 else 1.0
    if schedule == "linear":
        return 1.0 - q
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(config: BertConfig, seq_length: int, masked_fraction: float = 0.15) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward, matmuls only), as used for MFU.

    Encoder: 24·H²·L (QKV/output/FFN with intermediate 4H) + 4·T·H·L (attention scores and values) per token,
    times 2 for multiply-add; the vocabulary projection counts only at the masked share of positions.
    """
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 2 * (4 * h * h + 2 * h * inter) + 2 * 2 * seq_length * h
    head = masked_fraction * 2 * (h * h + h * config.vocab_size)
    return 3.0 * (layers * per_layer + head)
