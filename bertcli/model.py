"""BERT pretraining model logic: config presets, the masked-positions-only loss, optimizer groups, LR schedule."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForPreTraining

from bertcli.masking import IGNORE_INDEX

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


def mean_of_rows(matrix: torch.Tensor, pieces: Sequence[Sequence[int]]) -> torch.Tensor:
    """(len(pieces), *matrix.shape[1:]): row j is the mean of matrix's rows pieces[j] (accumulated in fp32, then
    cast back); an empty list gives the mean of all of matrix's rows."""
    source = matrix.detach().float()
    out = torch.empty((len(pieces), *matrix.shape[1:]), dtype=torch.float32, device=matrix.device)
    everything = source.mean(0)
    for j, ids in enumerate(pieces):
        out[j] = source[list(ids)].mean(0) if ids else everything
    return out.to(matrix.dtype)


def sample_like_rows(matrix: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, H) draws from the Gaussian with the mean and covariance of matrix's (n, H) rows (computed in fp64, a
    little jitter on the diagonal so the Cholesky factor exists), cast to matrix's dtype: rows that look like a
    random row of `matrix` in position and spread."""
    source = matrix.detach().to(torch.float64).cpu()
    mean = source.mean(0)
    centred = source - mean
    covariance = centred.T @ centred / max(len(source), 1)  # (H, H)
    jitter = 1e-6 * float(covariance.diagonal().mean()) + 1e-12
    factor = torch.linalg.cholesky(covariance + jitter * torch.eye(len(mean), dtype=torch.float64))
    z = torch.randn((count, len(mean)), generator=generator, dtype=torch.float64)
    return (mean + z @ factor.T).to(device=matrix.device, dtype=matrix.dtype)


def grow_vocabulary(model: BertForPreTraining, num_old: int, pieces: Sequence[Sequence[int]], seed: int = 0) -> int:
    """Resize the model to num_old + len(pieces) tokens, the new token j initialised from the old ids pieces[j]
    (the pieces the old tokenizer splits it into): its input embedding, its decoder row (the same tensor when the
    model ties them, as BERT does) and its decoder bias are the means of those pieces' rows. A token the old
    vocabulary cannot spell (pieces[j] empty) gets a draw from the Gaussian of the old rows' mean and covariance
    (sample_like_rows, seeded by `seed`) and the mean old bias. Rows num_old.. of the model (padding some
    checkpoints carry) are replaced. Returns the number of rows added.

    Why: a new token's embedding starts where the old model already represents its spelling (exBERT, Tai et al.
    2020; Gee et al. 2022, "Fast Vocabulary Transfer"). A token nothing spells starts inside the old embeddings'
    distribution, so its initial probability stays in the old words' range (Hewitt 2021, "Initializing new word
    embeddings for pretrained language models", who samples around the mean with a shrunken covariance); the full
    covariance keeps such tokens apart from each other: measured on Korean, thousands of rows all at the mean learn
    much more slowly than random ones (docs/benchmarks.md, "Vocabulary extension"). Bias: the decoder is affine in
    (W, b), so with the mean of the pieces' biases a spelled token's initial logit is exactly the mean of its
    pieces' logits.
    """
    embeddings = model.get_input_embeddings()
    head = model.cls.predictions
    old_weight = embeddings.weight  # (V, H)
    tied = head.decoder.weight is old_weight
    num_new = num_old + len(pieces)
    hidden = old_weight.shape[1]
    unspelled = [num_old + j for j, ids in enumerate(pieces) if not ids]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        grown = nn.Embedding(num_new, hidden, padding_idx=embeddings.padding_idx,
                             device=old_weight.device, dtype=old_weight.dtype)
        grown.weight[:num_old] = old_weight[:num_old]
        grown.weight[num_old:] = mean_of_rows(old_weight[:num_old], pieces)
        if unspelled:
            grown.weight[unspelled] = sample_like_rows(old_weight[:num_old], len(unspelled), generator)
        decoder = nn.Linear(hidden, num_new, device=old_weight.device, dtype=head.decoder.weight.dtype)
        if tied:
            decoder.weight = grown.weight
        else:
            decoder.weight[:num_old] = head.decoder.weight[:num_old]
            decoder.weight[num_old:] = mean_of_rows(head.decoder.weight[:num_old], pieces)
            if unspelled:
                decoder.weight[unspelled] = sample_like_rows(head.decoder.weight[:num_old], len(unspelled), generator)
        bias = torch.cat([head.bias[:num_old], mean_of_rows(head.bias[:num_old], pieces)])
    model.set_input_embeddings(grown)
    decoder.bias = nn.Parameter(bias)
    head.decoder = decoder
    head.bias = decoder.bias  # one parameter, as BertLMPredictionHead ties them
    model.config.vocab_size = num_new
    return len(pieces)


@dataclass
class PretrainingBatch:
    """One micro-batch, already on the device. Everything here has a shape fixed by (B, T) and the query width, and
    every index was computed on the host (by the Collator, in the loader workers): the step never has to ask the
    device where the masked positions are, which would make the host wait for it.

    input_ids, token_type_ids, attention_mask: (B, T) int64.
    query_positions: (B, 1 + P) int64: the positions the last layer and the heads read in each row: slot 0 is [CLS]
        (position 0), slots 1… the row's masked positions in ascending order, then 0 (padding slots read [CLS];
        their outputs are never scored). P is the query width: max_predictions_per_seq for a compiled step (shapes
        fixed by (B, T)), the micro-batch's most predictions otherwise.
    masked_labels: (B, P) int64: the original ids at the masked positions, IGNORE_INDEX at padding slots.
    masked_index: (N,) int64: flat indices b·P + s of the N real predictions in masked_labels, ascending.
    next_sentence_label: (B,) or None (no NSP).
    """

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    query_positions: torch.Tensor
    masked_labels: torch.Tensor
    masked_index: torch.Tensor
    next_sentence_label: torch.Tensor | None

    def to(self, device: torch.device) -> PretrainingBatch:
        return PretrainingBatch(
            *(t.to(device, non_blocking=True) if t is not None else None for t in self.__dict__.values())
        )

    @classmethod
    def from_flat_positions(
        cls, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor,
        masked_positions: torch.Tensor, masked_labels: torch.Tensor, next_sentence_label: torch.Tensor | None,
        width: int | None = None,
    ) -> PretrainingBatch:
        """From flat positions b·T + t (ascending) and their labels, as (N,) tensors, on the host; `width` is the
        query width P (default: the most predictions in a row)."""
        b, t = input_ids.shape
        rows, cols = (masked_positions // t).numpy(), (masked_positions % t).numpy()
        query, labels, index = query_layout(b, rows, cols, masked_labels.numpy(), width)
        return cls(input_ids, token_type_ids, attention_mask, torch.from_numpy(query), torch.from_numpy(labels),
                   torch.from_numpy(index), next_sentence_label)


def query_layout(
    batch_size: int, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray, width: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query layout of a micro-batch's predictions at `width` slots per row, in numpy (host side).

    rows, cols, labels: (N,) the row, position and original id of each prediction, row-major and ascending.
    Returns query_positions (B, 1 + P), masked_labels (B, P) and masked_index (N,) as PretrainingBatch describes.
    Raises ValueError when a row has more than `width` predictions.
    """
    rows = np.asarray(rows, dtype=np.int64)
    counts = np.bincount(rows, minlength=batch_size)  # (B,)
    most = int(counts.max()) if len(counts) else 0
    width = most if width is None else width
    if most > width:
        raise ValueError(f"a sequence has {most} masked positions, more than the query width {width}")
    slots = np.arange(len(rows), dtype=np.int64) - (np.cumsum(counts) - counts)[rows]  # (N,) slot within its row
    query = np.zeros((batch_size, 1 + width), dtype=np.int64)
    query[rows, slots + 1] = cols
    masked_labels = np.full((batch_size, width), IGNORE_INDEX, dtype=np.int64)
    masked_labels[rows, slots] = labels
    return query, masked_labels, rows * width + slots


# Indices into the statistics vector returned with the loss (summed over micro-batches and ranks).
STAT_MLM_LOSS_SUM, STAT_MLM_CORRECT, STAT_MLM_COUNT, STAT_NSP_LOSS_SUM, STAT_NSP_CORRECT, STAT_NSP_COUNT = range(6)
NUM_STATS = 6


def key_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, T) additive attention mask from a (B, T) 0/1 mask: 0 where a key is attended, -inf at padding.

    transformers' own helper (create_bidirectional_mask) first asks the device whether there is any padding at all
    (`padding_mask.all()`, a host sync every forward) to drop the mask when there is none; this one never reads the
    values. SDPA turns a boolean mask into exactly this (0 / -inf added before the softmax), so the layers' outputs
    are bit-identical to those with transformers' mask (test_model checks it)."""
    blocked = (attention_mask == 0)[:, None, None, :]
    return torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device).masked_fill_(blocked, float("-inf"))


def _compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on for the device, else `default`."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


def _can_prune(model: BertForPreTraining) -> bool:
    c = model.config
    return not (c.is_decoder or c.add_cross_attention or c.chunk_size_feed_forward or model.bert.pooler is None
                or getattr(model.bert, "gradient_checkpointing", False))


def _encode_queries(
    model: BertForPreTraining, batch: PretrainingBatch, prune_last_layer: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output at the query slots (B, 1 + P, H) and the pooled [CLS] output (B, H).

    With prune_last_layer the last layer is evaluated only where the heads read it, [CLS] and the masked positions:
    its queries, attention output, feed-forward and LayerNorms run on the query slots; keys and values still see
    every token. The result equals the full encoder's at those positions (test_model checks it).
    """
    bert = model.bert
    ids, query = batch.input_ids, batch.query_positions
    b, t = ids.shape
    width = query.shape[1]
    mask = key_padding_mask(batch.attention_mask, _compute_dtype(ids.device, model.dtype))  # (B, 1, 1, T)
    if not (prune_last_layer and _can_prune(model)):
        # a prepared 4-D mask is used as given (transformers returns it untouched)
        out = bert(input_ids=ids, attention_mask=mask, token_type_ids=batch.token_type_ids)
        hidden = out.last_hidden_state  # (B, T, H)
        slots = torch.gather(hidden, 1, query[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, Q, H)
        return slots, out.pooler_output
    hidden = bert.embeddings(input_ids=ids, token_type_ids=batch.token_type_ids)  # (B, T, H)
    layers = bert.encoder.layer
    for layer in layers[:-1]:
        hidden = layer(hidden, mask)
    last = layers[-1]
    sa = last.attention.self
    heads, head_size = sa.num_attention_heads, sa.attention_head_size
    h = hidden.shape[-1]
    q_in = torch.gather(hidden, 1, query[..., None].expand(-1, -1, h))  # (B, Q, H); padding slots read [CLS]
    q = sa.query(q_in).view(b, width, heads, head_size).transpose(1, 2)  # (B, h, Q, d)
    k = sa.key(hidden).view(b, t, heads, head_size).transpose(1, 2)  # (B, h, T, d)
    v = sa.value(hidden).view(b, t, heads, head_size).transpose(1, 2)
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling
    )  # (B, h, Q, d)
    context = context.transpose(1, 2).reshape(b, width, h)
    attn_out = last.attention.output(context, q_in)  # (B, Q, H)
    out = last.output(last.intermediate(attn_out), attn_out)  # (B, Q, H)
    return out, bert.pooler(out)  # the pooler reads out[:, 0], the [CLS] slot


_MM_FP32_OUT: bool | None = None  # whether torch.mm(…, out_dtype=float32) runs on this build (CUDA)


def _mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for bf16/fp16 inputs with an fp32 result. On CUDA cuBLAS writes fp32 directly (it accumulates in fp32
    anyway): no low-precision logits and no upcast copy. Elsewhere: the product, then one cast."""
    global _MM_FP32_OUT
    if a.is_cuda and _MM_FP32_OUT is not False:
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _MM_FP32_OUT = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_FP32_OUT = False
    return torch.mm(a, b).float()


class _MaskedLMCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the decoder's logits (x @ W^T + b) against labels (IGNORE_INDEX rows count for
    nothing), and the number of correct argmaxes.

    The elementwise passes over the (N, V) logits cost as much as the matmuls on CPU, and in mixed precision the stock
    path materialises them three times (bf16 logits, an fp32 copy, fp32 log-probabilities). Here one fp32 buffer holds
    exp(logit - row max) and serves the loss, the accuracy and both gradient matmuls. In fp32, softmax - onehot is
    applied as a per-row scale after each matmul plus a correction at the label rows, so backward only reads the
    matrix; in bf16/fp16 the difference is formed in fp32 first (in the same buffer) and cast once for the matmuls,
    since rounding its two terms separately would lose it where the model is confident.

    vocab_multiple: the vocabulary is padded to a multiple of this for the matmul only (tensor-core friendly shapes);
    padded ids get a -inf bias, so they are never predicted and get no gradient. The weights stay V × H.
    Same values as F.cross_entropy up to float rounding (test_model checks loss and gradients, fp32 and bf16).
    """

    @staticmethod
    # x (N, H), weight (V, H), bias (V,), labels (N,)
    def forward(ctx, x, weight, bias, labels, vocab_multiple: int = 1):
        v, h = weight.shape
        pad = (-v) % vocab_multiple
        with torch.autocast(x.device.type, enabled=False):
            if pad or weight.dtype != x.dtype:
                w = torch.empty(v + pad, h, dtype=x.dtype, device=x.device)  # one cast-and-pad copy
                w[:v].copy_(weight)
                w[v:].zero_()
            else:
                w = weight
            b = bias.float()
            if pad:
                b = torch.cat([b, b.new_full((pad,), float("-inf"))])
            if x.dtype == torch.float32:
                logits = torch.addmm(b, x, w.t())  # (N, V')
            else:
                logits = _mm_fp32_out(x, w.t()).add_(b)  # (N, V') fp32
            valid = labels != IGNORE_INDEX  # (N,)
            safe = labels.clamp_min(0)  # ignored rows read column 0; their terms are zeroed below
            target = logits.gather(1, safe[:, None])  # (N, 1)
            top, predicted = logits.max(1, keepdim=True)  # (N, 1) each
            exp = logits.sub_(top).exp_()  # in place: exp(logit - max), in (0, 1]
            norm = exp.sum(1, keepdim=True)  # (N, 1)
            loss_sum = torch.where(valid, (top + norm.log() - target)[:, 0], 0.0).sum()
            correct = (predicted[:, 0] == labels).sum()  # IGNORE_INDEX never equals a prediction
        ctx.save_for_backward(x, w, safe, valid, exp, norm)
        ctx.vocab = (v, weight.dtype, bias.dtype)
        ctx.mark_non_differentiable(correct)
        return loss_sum, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        x, w, safe, valid, exp, norm = ctx.saved_tensors
        v, weight_dtype, bias_dtype = ctx.vocab
        # d(loss_sum)/d(logits) = (exp / norm - onehot(labels)) · grad_loss on valid rows, 0 on ignored ones
        hit = torch.where(valid, grad_loss, 0.0)[:, None]  # (N, 1)
        row_scale = hit / norm  # (N, 1)
        grad_x = grad_weight = grad_bias = None
        with torch.autocast(x.device.type, enabled=False):
            if x.dtype == torch.float32:
                if ctx.needs_input_grad[0]:
                    grad_x = exp.mm(w).mul_(row_scale).sub_(w[safe] * hit)
                if ctx.needs_input_grad[1]:
                    grad_weight = exp.t().mm(x * row_scale).index_add_(0, safe, x * -hit)
                if ctx.needs_input_grad[2]:
                    grad_bias = exp.t().mv(row_scale[:, 0]).index_add_(0, safe, -hit[:, 0])
            else:
                grad = exp.mul_(row_scale).scatter_add_(1, safe[:, None], -hit)  # in place, fp32: softmax - onehot
                if ctx.needs_input_grad[2]:
                    grad_bias = grad.sum(0)
                grad = grad.to(x.dtype)  # (N, V') one cast for both matmuls
                if ctx.needs_input_grad[0]:
                    grad_x = grad.mm(w)
                if ctx.needs_input_grad[1]:
                    grad_weight = grad.t().mm(x)
        if grad_weight is not None:
            grad_weight = grad_weight[:v].to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias[:v].to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None


def _use_fused_cross_entropy(rows: torch.Tensor) -> bool:
    # eager, CPU and GPU; under torch.compile the plain ops, which Inductor fuses itself
    return not torch.compiler.is_compiling() and rows.shape[0] > 0


def _masked_lm_loss(
    head: nn.Module, rows: torch.Tensor, labels: torch.Tensor, vocab_multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed MLM cross-entropy, correct predictions) of the prediction head on hidden rows (M, H) with labels (M,)
    (IGNORE_INDEX rows count for nothing)."""
    transformed = head.transform(rows)  # (M, H)
    weight, bias = head.decoder.weight, head.decoder.bias  # (V, H), (V,)
    if _use_fused_cross_entropy(rows):
        x = transformed.to(_compute_dtype(rows.device, transformed.dtype))
        return _MaskedLMCrossEntropy.apply(x, weight, bias, labels, vocab_multiple)
    # torch.compile: the plain ops, which Inductor fuses (the fp32 upcast happens inside its softmax kernels)
    pad = (-weight.shape[0]) % vocab_multiple
    if pad:
        weight = F.pad(weight, (0, 0, 0, pad))
        bias = F.pad(bias, (0, pad), value=float("-inf"))
    logits = F.linear(transformed, weight, bias).float()  # (M, V')
    loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == labels).sum()
    return loss_sum, correct


def pretraining_loss(
    model: BertForPreTraining, batch: PretrainingBatch, has_nsp: bool = True, prune_last_layer: bool = True,
    vocab_multiple: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM + NSP loss of a stock BertForPreTraining, with the vocabulary projection only at masked positions.

    BertForPreTraining.forward projects every position onto the whole vocabulary (B·T·V logits) although only
    ~15% are scored; like Google's, NVIDIA's, MosaicBERT's and Cramming's code we gather the masked hidden states
    first, and the last encoder layer runs only at [CLS] and the masked positions (see _encode_queries). The
    modules used are the model's own, so the saved weights are a stock BertForPreTraining.

    With batch.masked_index the head runs on the N real predictions (eager: shapes may change from batch to batch);
    without it (None: what the compiled step passes) on all B·P query slots, padding slots ignored, so every shape
    depends on (B, T) alone. Nothing here reads a device value on the host.

    Returns (loss, stats): loss = mean MLM cross-entropy over the masked positions + mean NSP cross-entropy;
    stats (NUM_STATS,) float64, detached: sums and counts for logging (see STAT_*).
    """
    slots, pooled = _encode_queries(model, batch, prune_last_layer)  # (B, 1 + P, H), (B, H)
    h = slots.shape[-1]
    rows = slots[:, 1:].reshape(-1, h)  # (B·P, H)
    labels = batch.masked_labels.reshape(-1)  # (B·P,)
    if batch.masked_index is not None:
        rows = rows.index_select(0, batch.masked_index)  # (N, H)
        labels = labels.index_select(0, batch.masked_index)  # (N,)
        mlm_count: torch.Tensor | int = batch.masked_index.shape[0]
    else:
        mlm_count = (labels != IGNORE_INDEX).sum()
    mlm_loss_sum, mlm_correct = _masked_lm_loss(model.cls.predictions, rows, labels, vocab_multiple)
    if isinstance(mlm_count, int):
        mlm_loss = mlm_loss_sum / max(mlm_count, 1)
    else:
        mlm_loss = mlm_loss_sum / mlm_count.clamp_min(1)

    nsp_logits = model.cls.seq_relationship(pooled).float()  # (B, 2)

    def scalar(value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().double()
        return nsp_logits.new_full((), float(value), dtype=torch.float64)

    if has_nsp and batch.next_sentence_label is not None:
        nsp_labels = batch.next_sentence_label
        nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        with torch.no_grad():
            nsp = [nsp_loss * nsp_labels.shape[0], (nsp_logits.argmax(-1) == nsp_labels).sum(), nsp_labels.shape[0]]
    else:
        # MLM-only data: keep the pooler and NSP head in the graph with zero gradient, so DDP sees every
        # parameter used and the saved model still has (untrained) NSP weights.
        nsp_loss = nsp_logits.sum() * 0.0
        nsp = [0, 0, 0]
    stats = torch.stack([scalar(x) for x in [mlm_loss_sum, mlm_correct, mlm_count, *nsp]])  # (NUM_STATS,)
    return mlm_loss + nsp_loss, stats


class PretrainingModule(nn.Module):
    """Wraps a BertForPreTraining so that DDP and torch.compile see the whole loss computation in forward().

    vocab_multiple: pad the vocabulary to a multiple of this inside the MLM matmul (64 on CUDA; see
    _MaskedLMCrossEntropy); the model's weights keep the true vocabulary size."""

    def __init__(self, model: BertForPreTraining, has_nsp: bool = True, vocab_multiple: int = 1):
        super().__init__()
        self.model = model
        self.has_nsp = has_nsp
        self.vocab_multiple = vocab_multiple

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_positions: torch.Tensor,
        masked_labels: torch.Tensor,
        masked_index: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Tensors, not a PretrainingBatch, so DDP and torch.compile handle the inputs without special cases.
        batch = PretrainingBatch(input_ids, token_type_ids, attention_mask, query_positions, masked_labels,
                                 masked_index, next_sentence_label)
        return pretraining_loss(self.model, batch, self.has_nsp, vocab_multiple=self.vocab_multiple)


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
    decay_fraction: float = 0.2,
) -> float:
    """Factor on the peak learning rate for the update that follows `step` completed updates.

    Linear warmup over warmup_steps, then decay over training progress p in [0, 1] (p = step / max_steps, or the
    share of time_budget_s spent when that is larger): `linear` to 0, `cosine` to 0, `constant`, or `wsd`
    (warmup-stable-decay: the peak until the last decay_fraction of training, then linear to 0; Hägele et al.
    2024 find that a 10-20% cool-down matches cosine).
    warmup_progress is p at the end of warmup, so the decay spans exactly the rest of training.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    # where the decay starts: wsd's cool-down, but never before warmup ends (a warmup longer than the stable phase)
    decay_start = max(warmup_progress, 1.0 - decay_fraction) if schedule == "wsd" else warmup_progress
    span = 1.0 - decay_start
    q = min(max((progress - decay_start) / span, 0.0), 1.0) if span > 0 else 1.0
    if schedule in ("linear", "wsd"):
        return 1.0 - q
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class BatchWork:
    """What a micro-batch asks of the model, counted on the host from the sequence lengths T_i and the numbers of
    predictions k_i (non-padding work only): the inputs of training_flops. Sums add over micro-batches and ranks."""

    sequences: int = 0  # B
    tokens: int = 0  # Σ T_i
    squared_lengths: int = 0  # Σ T_i²
    predictions: int = 0  # Σ k_i
    query_keys: int = 0  # Σ (k_i + 1) · T_i: the pruned last layer's attention ([CLS] + predictions, all keys)

    @classmethod
    def of(cls, lengths: np.ndarray, predictions: np.ndarray) -> BatchWork:
        t = np.asarray(lengths, dtype=np.int64)
        k = np.asarray(predictions, dtype=np.int64)
        return cls(len(t), int(t.sum()), int((t * t).sum()), int(k.sum()), int(((k + 1) * t).sum()))

    def __add__(self, other: BatchWork) -> BatchWork:
        return BatchWork(*(a + b for a, b in zip(self.__dict__.values(), other.__dict__.values())))


def training_flops(config: BertConfig, work: BatchWork, prune_last_layer: bool = True) -> float:
    """Model FLOPs of one training pass (forward + backward = 3 × forward) over `work`, matmuls only, counting a
    multiply-add as 2. This is the numerator of MFU (docs/pretraining.md, "Live efficiency"):

    - each encoder layer, per token: 2·(4H² + 2H·I) (Q, K, V and output projections; the feed-forward), and per
      sequence 4·H·T² (scores QKᵀ and the weighted sum of values);
    - the last layer when pruned (as bert pretrain runs it): K and V at every token, 2·2H²; Q, output and
      feed-forward only at [CLS] and the k masked positions, 2·(2H² + 2H·I) each, attending to all T keys, 4·H·T;
    - the MLM head at the k predictions: 2·(H² + H·V) (transform and decoder); pooler and NSP head: 2·(H² + 2H)
      per sequence.

    Padding tokens are not counted (they are waste, not work); embedding lookups, LayerNorms, softmax and other
    elementwise work are left out, as in the usual MFU definition (PaLM, Chowdhery et al. 2022, appendix B).
    """
    h, inter, v = config.hidden_size, config.intermediate_size, config.vocab_size
    layer_per_token = 2 * (4 * h * h + 2 * h * inter)
    attention = 4 * h * work.squared_lengths
    full_layers = config.num_hidden_layers - (1 if prune_last_layer else 0)
    forward = full_layers * (layer_per_token * work.tokens + attention)
    if prune_last_layer:
        queries = work.sequences + work.predictions
        forward += 2 * 2 * h * h * work.tokens + 2 * (2 * h * h + 2 * h * inter) * queries + 4 * h * work.query_keys
    forward += 2 * (h * h + h * v) * work.predictions + 2 * (h * h + 2 * h) * work.sequences
    return 3.0 * forward


def flops_per_token(config: BertConfig, seq_length: int, masked_fraction: float = 0.15,
                    prune_last_layer: bool = True) -> float:
    """Training FLOPs per token (training_flops) for sequences of seq_length tokens with a masked_fraction of them
    predicted: an estimate for planning; live MFU counts each batch's real lengths."""
    k = masked_fraction * seq_length
    work = BatchWork(1, seq_length, seq_length * seq_length, 0, seq_length)  # [CLS] only; predictions below
    flops = training_flops(config, work, prune_last_layer)
    # predictions may be fractional here: add their share by hand (training_flops takes whole counts)
    h, inter, v = config.hidden_size, config.intermediate_size, config.vocab_size
    per_prediction = 2 * (h * h + h * v)
    if prune_last_layer:
        per_prediction += 2 * (2 * h * h + 2 * h * inter) + 4 * h * seq_length
    return (flops + 3.0 * per_prediction * k) / seq_length
