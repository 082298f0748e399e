"""Tests of bertcli.model: presets, masked-only loss equal to the stock loss, optimizer groups, LR schedule."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertForPreTraining

from bertcli.model import (
    PRESETS,
    STAT_MLM_COUNT,
    STAT_NSP_COUNT,
    PretrainingBatch,
    PretrainingModule,
    build_bert_config,
    build_model,
    build_optimizer,
    flops_per_token,
    lr_multiplier,
    optimizer_param_groups,
    pretraining_loss,
    summarize_stats,
)


def tiny_config(vocab_size: int = 97, pad: int = 0, dropout: float = 0.0):
    return build_bert_config(
        None,
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
            "max_position_embeddings": 64,
        },
        vocab_size=vocab_size,
        pad_token_id=pad,
    )


def random_batch(
    vocab_size: int, batch: int = 3, length: int = 12, seed: int = 0
) -> tuple[PretrainingBatch, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    lengths = torch.tensor([length, length - 3, length - 5][:batch])
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask  # [PAD] = 0 after each sequence
    token_type_ids = ((torch.arange(length)[None, :] >= 4) & attention_mask.bool()).long()
    labels = torch.full((batch, length), -100)
    for b in range(batch):
        for t in torch.randperm(int(lengths[b]) - 1, generator=g)[:3] + 1:
            labels[b, t] = int(torch.randint(5, vocab_size, (1,), generator=g))
    flat = labels.reshape(-1)
    positions = torch.nonzero(flat != -100).squeeze(1)
    nsp = torch.tensor([0, 1, 0][:batch])
    return (
        PretrainingBatch.from_flat_positions(
            input_ids, token_type_ids, attention_mask, positions, flat[positions], nsp
        ),
        labels,
    )


def test_presets_follow_googles_sizes():
    for name, (layers, hidden) in PRESETS.items():
        cfg = build_bert_config(name, {}, vocab_size=1000, pad_token_id=0)
        assert (cfg.num_hidden_layers, cfg.hidden_size) == (layers, hidden)
        assert cfg.num_attention_heads == hidden // 64
        assert cfg.intermediate_size == 4 * hidden
        assert cfg.vocab_size == 1000
    assert PRESETS["base"] == (12, 768) and PRESETS["large"] == (24, 1024)


def test_fields_override_preset_and_derive_heads():
    cfg = build_bert_config("base", {"hidden_size": 256, "num_hidden_layers": 3}, vocab_size=50, pad_token_id=3)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (256, 3, 4, 1024)
    assert cfg.pad_token_id == 3
    assert cfg._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="multiple"):
        build_bert_config(None, {"hidden_size": 30, "num_attention_heads": 4}, vocab_size=50, pad_token_id=0)


def test_masked_only_loss_equals_stock_forward_loss():
    cfg = tiny_config()
    model = build_model(cfg, seed=1).eval()
    batch, labels = random_batch(cfg.vocab_size)
    loss, stats = pretraining_loss(model, batch)
    ref = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
        labels=labels,
        next_sentence_label=batch.next_sentence_label,
    )
    assert torch.allclose(loss, ref.loss, atol=1e-5)
    summary = summarize_stats(stats)
    # accuracy from the full logits at the labelled positions equals ours
    full = ref.prediction_logits.argmax(-1)
    mask = labels != -100
    assert summary["mlm_accuracy"] == pytest.approx((full[mask] == labels[mask]).float().mean().item())
    assert stats[STAT_MLM_COUNT] == mask.sum()
    assert stats[STAT_NSP_COUNT] == 3


def test_masked_only_gradients_equal_stock_gradients():
    cfg = tiny_config()
    ours = build_model(cfg, seed=2)
    ref = build_model(cfg, seed=2)
    batch, labels = random_batch(cfg.vocab_size, seed=5)
    ours.eval(), ref.eval()
    pretraining_loss(ours, batch)[0].backward()
    ref(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
        labels=labels,
        next_sentence_label=batch.next_sentence_label,
    ).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name].grad, atol=1e-6), name


def test_mlm_only_batches_keep_nsp_head_in_graph():
    cfg = tiny_config()
    model = build_model(cfg, seed=3)
    batch, _ = random_batch(cfg.vocab_size)
    batch.next_sentence_label = None
    loss, stats = pretraining_loss(model, batch, has_nsp=False)
    loss.backward()
    assert model.cls.seq_relationship.weight.grad is not None
    assert torch.count_nonzero(model.cls.seq_relationship.weight.grad) == 0
    assert stats[STAT_NSP_COUNT] == 0
    assert "nsp_loss" not in summarize_stats(stats)


def test_saved_model_is_stock_bert_for_pretraining(tmp_path):
    cfg = tiny_config()
    model = build_model(cfg, seed=4)
    module = PretrainingModule(model)
    batch, _ = random_batch(cfg.vocab_size)
    module(**batch.__dict__)[0].backward()
    model.save_pretrained(tmp_path)
    loaded = BertForPreTraining.from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(BertForPreTraining(cfg).state_dict())
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n


def test_seed_fixes_initial_weights():
    cfg = tiny_config()
    a, b, c = build_model(cfg, 7), build_model(cfg, 7), build_model(cfg, 8)
    wa, wb, wc = (m.bert.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_no_weight_decay_on_layernorm_and_bias():
    model = build_model(tiny_config(), seed=0)
    decay, no_decay = optimizer_param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    for p in no_decay["params"]:
        assert names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
    for p in decay["params"]:
        assert not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)]
    # every parameter exactly once (the tied decoder weight is the word embedding)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, 1e-3, 0.01)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-6


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_schedule_warmup_then_decay(schedule):
    total, warmup = 100, 10
    f = [lr_multiplier(s, s / total, warmup, warmup / total, schedule) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # warmup rises
    if schedule == "constant":
        assert all(x == 1.0 for x in f[10:])
    else:
        assert f[10] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(f[10:], f[11:]))  # decay never rises
        assert lr_multiplier(total, 1.0, warmup, 0.1, schedule) == pytest.approx(0.0, abs=1e-12)
    if schedule == "cosine":
        mid = lr_multiplier(55, 0.55, warmup, 0.1, schedule)
        assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_wsd_holds_the_peak_then_falls_linearly_to_zero():
    total, warmup = 100, 10
    f = [lr_multiplier(s, s / total, warmup, warmup / total, "wsd", 0.2) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:81])  # the stable phase ends where the last 20% begins
    assert f[90] == pytest.approx(0.5) and f[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(f[80:], f[81:]))
    # by time: the cool-down starts when 80% of the budget is spent, whatever the step count
    assert lr_multiplier(500, 0.9, 10, 0.01, "wsd", 0.2) == pytest.approx(0.5)
    # a warmup that ends inside the cool-down's window: the decay spans what is left after warmup
    assert lr_multiplier(60, 0.6, 50, 0.5, "wsd", 0.8) == pytest.approx(0.8)


def test_lr_schedule_follows_time_progress():
    # time budget half spent after 20 steps: linear decay is half way, whatever the step count says
    assert lr_multiplier(20, 0.5, 0, 0.0, "linear") == pytest.approx(0.5)


def test_flops_per_token_counts_encoder_and_masked_head():
    cfg = build_bert_config("base", {}, vocab_size=30522, pad_token_id=0)
    f = flops_per_token(cfg, 128)
    # 6 · N_encoder_params-ish: BERT-base's encoder has ~85M matmul weights -> ~0.5 GFLOP/token for training
    assert 4.5e8 < f < 7e8


def test_last_layer_pruning_changes_nothing_at_the_used_positions():
    cfg = tiny_config()
    a, b = build_model(cfg, seed=9).eval(), build_model(cfg, seed=9).eval()
    batch, _ = random_batch(cfg.vocab_size, seed=11)
    la, sa = pretraining_loss(a, batch, prune_last_layer=True)
    lb, sb = pretraining_loss(b, batch, prune_last_layer=False)
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(sa, sb, atol=1e-4)
    la.backward(), lb.backward()
    grads_b = dict(b.named_parameters())
    for name, p in a.named_parameters():
        assert torch.allclose(p.grad, grads_b[name].grad, atol=1e-5), name


def test_last_layer_pruning_with_a_row_without_masks():
    cfg = tiny_config()
    model = build_model(cfg, seed=1).eval()
    batch, labels = random_batch(cfg.vocab_size, seed=2)
    labels[0] = -100  # drop every masked position of row 0
    flat = labels.reshape(-1)
    positions = torch.nonzero(flat != -100).squeeze(1)
    batch = PretrainingBatch.from_flat_positions(batch.input_ids, batch.token_type_ids, batch.attention_mask,
                                                 positions, flat[positions], batch.next_sentence_label, width=4)
    la, _ = pretraining_loss(model, batch, prune_last_layer=True)
    lb, _ = pretraining_loss(model, batch, prune_last_layer=False)
    assert torch.allclose(la, lb, atol=1e-5)
