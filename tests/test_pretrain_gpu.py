"""The GPU paths of `bert pretrain`, tested through CPU stand-ins: mocked device capabilities, host syncs counted at
the dispatcher, torch.compile graph breaks and compile counts, the efficiency figures, and what a GPU user meets
around them (device errors, resuming a finished run, checkpoints nobody can load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask
from typer.testing import CliRunner

from bertcli import devices, dist
from bertcli.batching import Collator, MicroBatches, length_buckets, to_model_batch
from bertcli.checkpoints import MARKER
from bertcli.cli import app
from bertcli.errors import ArtifactError, ConfigError
from bertcli.metrics import gpu_peak_tflops
from bertcli.model import (
    BatchWork,
    PretrainingBatch,
    PretrainingModule,
    _MaskedLMCrossEntropy,
    build_bert_config,
    build_model,
    key_padding_mask,
    pretraining_loss,
    training_flops,
)
from bertcli.stages import pretrain
from bertcli.syncs import HostSyncCounter, cuda_sync_warnings
from pretrain_fixtures import TINY_MODEL, assert_same_weights, run_data_path, tiny_cfg, weights

pytestmark = pytest.mark.usefixtures("one_thread_no_plot")


def tiny_bert(vocab_size: int = 97, dropout: float = 0.0):
    fields = {**{k: v for k, v in TINY_MODEL.items() if k != "preset"}, "hidden_dropout_prob": dropout,
              "attention_probs_dropout_prob": dropout}
    return build_model(build_bert_config(None, fields, vocab_size, pad_token_id=0), seed=0)


def padded_batch(vocab_size: int = 97, lengths=(12, 9, 5), width: int = 12, seed: int = 0,
                 max_predictions: int = 4) -> PretrainingBatch:
    """A (B, width) batch with rows of `lengths`, 1–3 masked positions per row, in the fixed-width layout."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    attention_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    input_ids = torch.randint(5, vocab_size, (b, width), generator=g) * attention_mask
    token_type_ids = torch.zeros(b, width, dtype=torch.long)
    flat = []
    for row, n in enumerate(lengths):
        picks = torch.randperm(n - 1, generator=g)[: 1 + row % 3] + 1
        flat += sorted(int(row * width + t) for t in picks)
    positions = torch.tensor(flat)
    labels = torch.randint(5, vocab_size, (len(flat),), generator=g)
    return PretrainingBatch.from_flat_positions(input_ids, token_type_ids, attention_mask, positions, labels,
                                                torch.tensor([0, 1, 0][:b]), width=max_predictions)


# ------------------------------------------------------------------------------------------ precision

def _mock_gpu(monkeypatch, major: int, minor: int, name: str) -> None:
    # is_bf16_supported as CUDA builds answer it: emulation counts unless including_emulation=False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or major >= 8)


@pytest.mark.parametrize("major,minor,name", [(7, 5, "Tesla T4"), (7, 0, "Tesla V100-SXM2-16GB")])
def test_precision_auto_is_fp16_with_a_scaler_before_ampere(monkeypatch, major, minor, name):
    _mock_gpu(monkeypatch, major, minor, name)
    p = devices.resolve_precision("auto", torch.device("cuda", 0))
    assert p.name == "fp16" and p.autocast_dtype == torch.float16
    assert not p.tf32 and "no native bf16" in p.reason and name in p.reason
    assert "emulates bf16" in devices.resolve_precision("bf16", torch.device("cuda", 0)).reason


@pytest.mark.parametrize("major,minor,name", [(8, 0, "NVIDIA A100-SXM4-80GB"), (9, 0, "NVIDIA H100 80GB HBM3")])
def test_precision_auto_is_bf16_with_tf32_from_ampere_on(monkeypatch, major, minor, name):
    _mock_gpu(monkeypatch, major, minor, name)
    p = devices.resolve_precision("auto", torch.device("cuda", 0))
    assert p.name == "bf16" and p.tf32 and f"{major}.{minor}" in p.reason
    assert devices.resolve_precision("fp32", torch.device("cuda", 0)).tf32  # TF32 for the fp32 parts
    cpu = devices.resolve_precision("auto", torch.device("cpu"))
    assert cpu.name == "fp32" and not cpu.tf32


def test_gpu_peak_table():
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312 and gpu_peak_tflops("NVIDIA A100 80GB PCIe") == 312
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989 and gpu_peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_peak_tflops("NVIDIA H200") == 989 and gpu_peak_tflops("NVIDIA L4") == 121
    assert gpu_peak_tflops("Tesla T4") == 65 and gpu_peak_tflops("Tesla V100-SXM2-16GB") == 125
    assert gpu_peak_tflops("NVIDIA A10") == 125 and gpu_peak_tflops("NVIDIA L40S") == 362
    assert gpu_peak_tflops("NVIDIA A10G") is None and gpu_peak_tflops("cpu") is None


# ------------------------------------------------------------------------------------------ device errors

def test_device_cuda_without_a_gpu_exits_2_with_one_line(masked_data, tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--data", str(masked_data), "--output", str(tmp_path / "run"),
                                      "--set", "device=cuda"])
    assert result.exit_code == 2, result.output
    error, hint = [ln for ln in result.output.splitlines() if ln.strip()]  # one error line and its hint
    assert error.startswith("error: key 'device': cuda") and hint.startswith("hint: set device: auto or cpu")
    assert not (tmp_path / "run").exists()


def test_more_processes_on_a_node_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="4 processes on this node but only 2 GPU"):
        dist.init_distributed("auto")


def test_ddp_comm_bf16_needs_nccl():
    gloo = dist.DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    nccl = dist.DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0), backend="nccl")
    cfg = tiny_cfg("data", "out", ddp_comm="bf16")
    with pytest.raises(ConfigError, match="ddp_comm"):
        pretrain.check_ddp_comm(cfg, gloo)
    pretrain.check_ddp_comm(cfg, nccl)
    pretrain.check_ddp_comm(tiny_cfg("data", "out"), gloo)


@pytest.mark.parametrize("torch_213", [True, False])
def test_ddp_skips_buffer_sync_under_the_name_this_torch_knows(monkeypatch, torch_213):
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers; passing the new name to an older torch (2.11 on
    # a GPU machine here) was a TypeError at the start of every multi-process run.
    seen = {}

    class NewDDP:
        def __init__(self, module, device_ids=None, gradient_as_bucket_view=False, forward_sync_buffers=True):
            seen.update(forward_sync_buffers=forward_sync_buffers)

    class OldDDP:
        def __init__(self, module, device_ids=None, gradient_as_bucket_view=False, broadcast_buffers=True):
            seen.update(broadcast_buffers=broadcast_buffers)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", NewDDP if torch_213 else OldDDP)
    ctx = dist.DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    dist.wrap_model(ctx, torch.nn.Linear(2, 2))
    assert seen == ({"forward_sync_buffers": False} if torch_213 else {"broadcast_buffers": False})


def test_num_workers_auto():
    assert devices.resolve_num_workers("auto", torch.device("cuda", 0)) == 2
    assert devices.resolve_num_workers("auto", torch.device("cpu")) == 0
    assert devices.resolve_num_workers(3, torch.device("cpu")) == 3


def test_num_threads_auto(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # idle cores: torch's default; busy ones: the cores the load leaves idle, never fewer than one
    assert devices.resolve_num_threads("auto", cpu, cores=2, load=0.3, default=2) == 2
    assert devices.resolve_num_threads("auto", cpu, cores=2, load=1.2, default=2) == 1
    assert devices.resolve_num_threads("auto", cpu, cores=2, load=6.0, default=2) == 1
    assert devices.resolve_num_threads("auto", cpu, cores=16, load=4.0, default=16) == 12
    assert devices.resolve_num_threads("auto", cpu, cores=16, load=0.0, default=4) == 4  # never above the default
    assert devices.resolve_num_threads(3, cpu, cores=2, load=6.0, default=2) == 3  # a number is taken as given
    assert devices.resolve_num_threads("auto", torch.device("cuda", 0), cores=2, load=6.0, default=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's (or torchrun's) choice wins
    assert devices.resolve_num_threads("auto", cpu, cores=2, load=6.0, default=2) == 2

    monkeypatch.delenv("OMP_NUM_THREADS")
    # with one thread already (the tests' own setting) there is nothing to choose, and nothing is measured
    monkeypatch.setattr(devices, "busy_cores", lambda: pytest.fail("measured for a one-thread default"))
    assert devices.resolve_num_threads("auto", cpu, cores=2, default=1) == 1


def test_num_threads_auto_measures_the_cores_now(monkeypatch):
    """auto asks how busy the cores are now, not the 1-minute load average, which a job that just ended (the
    pip install before make demo's pretraining) still holds near 1."""
    cpu = torch.device("cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices.os, "getloadavg", lambda: (1.3, 0.8, 0.5))
    monkeypatch.setattr(devices, "busy_cores", lambda: 0.1)
    assert devices.resolve_num_threads("auto", cpu, cores=2, default=2) == 2
    monkeypatch.setattr(devices, "busy_cores", lambda: 1.0)  # another job's thread holds a core
    assert devices.resolve_num_threads("auto", cpu, cores=2, default=2) == 1
    monkeypatch.setattr(devices, "busy_cores", lambda: None)  # cannot tell: the load average decides
    assert devices.resolve_num_threads("auto", cpu, cores=2, default=2) == 1
    monkeypatch.delattr(devices.os, "getloadavg")  # nor that (Windows): torch's default
    assert devices.resolve_num_threads("auto", cpu, cores=2, default=2) == 2


_STAT = """cpu  {u0} 0 {s0} {i0} 5 0 0 {st0} 7 0
cpu0 {u0} 0 {s0} {i0} 5 0 0 {st0} 7 0
cpu1 100 0 50 {i1} 0 0 0 0 0 0
intr 12345 6 7
ctxt 999
"""


def test_cpu_times_counts_steal_as_busy_and_guest_once():
    times = devices.cpu_times(_STAT.format(u0=300, s0=100, i0=1000, st0=20, i1=400), {0, 1})
    # cpu0: user 300 (guest 7 already inside it) + system 100 + steal 20 busy; idle 1000 + iowait 5
    assert times == {0: (420, 1425), 1: (150, 550)}
    assert devices.cpu_times(_STAT.format(u0=1, s0=1, i0=1, st0=0, i1=1), {1}) == {1: (150, 151)}  # affinity only


def test_busy_cores_sums_each_cores_busy_share(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    texts = iter([_STAT.format(u0=300, s0=100, i0=1000, st0=0, i1=400),
                  # over the window cpu0 runs 90 busy ticks of 100, cpu1 is idle for its 100
                  _STAT.format(u0=380, s0=110, i0=1010, st0=0, i1=500)])

    def sleep(_seconds):
        stat.write_text(next(texts))

    sleep(0)
    monkeypatch.setattr(devices.time, "sleep", sleep)
    monkeypatch.setattr(devices, "usable_cpus", lambda: {0, 1})
    assert devices.busy_cores(stat_path=str(stat)) == pytest.approx(0.9)
    monkeypatch.setattr(devices, "usable_cpus", lambda: {0, 1, 2})  # a CPU /proc/stat does not list
    texts = iter([_STAT.format(u0=300, s0=100, i0=1000, st0=0, i1=400)] * 2)
    sleep(0)
    assert devices.busy_cores(stat_path=str(stat)) is None
    assert devices.busy_cores(stat_path=str(tmp_path / "missing")) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux only")
def test_busy_cores_on_this_machine():
    busy = devices.busy_cores(window_s=0.05)
    assert busy is not None and 0.0 <= busy <= len(devices.usable_cpus()) + 1e-9

# ------------------------------------------------------------------------------------------ the step's host syncs

def _trainer(data, out, **overrides) -> pretrain.Trainer:
    cfg = tiny_cfg(data, out, **{"num_workers": 0, **overrides})
    return pretrain.build_trainer(cfg, dist.init_distributed(cfg.device))


@pytest.mark.parametrize("kind,fixed_width,precision", [("masked", False, "fp32"), ("pairs", False, "fp32"),
                                                       ("masked", True, "fp32"), ("masked", False, "bf16"),
                                                       ("masked", False, "fp16")])
def test_train_step_makes_no_host_sync(kind, fixed_width, precision, masked_data, pairs_data, tmp_path):
    """One optimizer step over 2 micro-batches, with clipping and the non-finite flag: no op that would make the
    host wait for a GPU (0 per micro-batch, 0 per step); the flags are read at the next check, 1 read per check."""
    trainer = _trainer(masked_data if kind == "masked" else pairs_data, tmp_path / "run", precision=precision)
    trainer.fixed_width = trainer.collate.fixed_width = fixed_width  # the compiled step's layout, uncompiled
    stream = trainer.micro_batch_stream()
    trainer.train_step(next(stream))  # warm-up: the optimizer creates its state
    group = next(stream)
    assert len(group) == 2
    with HostSyncCounter() as syncs:
        stats, grad_norm, flag = trainer.train_step(group)
    assert syncs.total == 0, syncs.counts
    trainer.pending = [(0, (0, 0), flag), (1, (0, 1), flag)]
    with HostSyncCounter() as syncs:
        trainer.check_steps(1.0)
    assert syncs.total == 1, syncs.counts  # one read of all the pending flags
    stream.close()
    trainer.metrics.close()


def test_cuda_sync_warnings_keep_the_calls_and_drop_torchs_prototype_notice(monkeypatch):
    """set_sync_debug_mode("warn") is mocked (no GPU here): the warnings torch raises on a synchronising call are kept
    (first line), its one notice that the mode is a prototype (seen on an H200) is not a sync, the mode is restored."""
    import warnings

    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with cuda_sync_warnings() as found:
        warnings.warn("Synchronization debug mode is a prototype feature and does not yet detect all synchronizing "
                      "operations (Triggered internally at Module.cpp:1003.)")
        warnings.warn("called a synchronizing CUDA operation (Triggered internally at CUDAFunctions.cpp:154.)\nmore")
        warnings.warn("an unrelated warning")
    assert found == ["called a synchronizing CUDA operation (Triggered internally at CUDAFunctions.cpp:154.)"]
    assert modes == ["warn", 0]


def test_a_non_finite_step_leaves_weights_and_optimizer_alone(masked_data, tmp_path, monkeypatch):
    trainer = _trainer(masked_data, tmp_path / "run")
    stream = trainer.micro_batch_stream()
    trainer.train_step(next(stream))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = [s["step"].clone() for s in trainer.optimizer.state.values()]
    real = trainer.module.forward
    monkeypatch.setattr(trainer.module, "forward", lambda **kw: (lambda loss, s: (loss * float("nan"), s))(*real(**kw)))
    _, _, flag = trainer.train_step(next(stream))
    assert float(flag) > 0
    assert_same_weights(trainer.model.state_dict(), before)
    assert [s["step"] for s in trainer.optimizer.state.values()] == steps
    trainer.pending = [(7, (0, 3), flag)]
    with pytest.raises(pretrain.NonFiniteLoss, match="non-finite loss at step 8"):
        trainer.check_steps(1.0)
    stream.close()
    trainer.metrics.close()


# ------------------------------------------------------------------------------------------ the layers' mask

@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_key_padding_mask_gives_bit_identical_layers(dtype):
    model = tiny_bert().eval()
    batch = padded_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        hidden = model.bert.embeddings(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids)
        theirs = create_bidirectional_mask(config=model.config, inputs_embeds=hidden,
                                           attention_mask=batch.attention_mask)
        ours = key_padding_mask(batch.attention_mask, dtype or torch.float32)
        assert ours.shape == (3, 1, 1, 12)
        a = b = hidden
        for layer in model.bert.encoder.layer:
            a, b = layer(a, theirs), layer(b, ours)
            assert torch.equal(a, b)
        full = model.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          token_type_ids=batch.token_type_ids).last_hidden_state
        mine = model.bert(input_ids=batch.input_ids, attention_mask=ours,
                          token_type_ids=batch.token_type_ids).last_hidden_state
        assert torch.equal(full, mine)


# ------------------------------------------------------------------------------------------ the MLM head

def _grads(model, batch, **kw):
    model.zero_grad()
    loss, stats = pretraining_loss(model, batch, **kw)
    loss.backward()
    return loss.detach(), stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fixed_width_head_equals_the_real_predictions_only():
    """The compiled step's layout (head on all B·P slots, padding ignored) computes what the eager one does."""
    model = tiny_bert()
    batch = padded_batch()
    flat = _grads(model, batch)
    fixed = _grads(model, PretrainingBatch(**{**batch.__dict__, "masked_index": None}))
    assert torch.allclose(flat[0], fixed[0], atol=1e-6) and torch.allclose(flat[1], fixed[1], atol=1e-5)
    for name, g in flat[2].items():
        assert torch.allclose(g, fixed[2][name], atol=1e-6), name


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_cross_entropy_pads_the_vocabulary_and_matches_the_stock_loss(autocast):
    """Vocabulary padded to a multiple of 64 inside the matmul only: same loss and gradients, padded ids never
    predicted; in bf16 the fp32 logits are formed once (no bf16 logits, no fp32 copy) and match the stock path."""
    torch.manual_seed(0)
    n, h, v = 37, 16, 97
    x = torch.randn(n, h, requires_grad=True)
    weight = (torch.randn(v, h) * 0.5).requires_grad_()
    bias = torch.randn(v).requires_grad_()
    labels = torch.randint(0, v, (n,))
    labels[::5] = -100  # padding slots
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = F.cross_entropy(F.linear(x, weight, bias).float(), labels, ignore_index=-100, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (x, weight, bias))
    for multiple in (1, 64):
        xin = x.to(torch.bfloat16) if autocast else x
        loss, correct = _MaskedLMCrossEntropy.apply(xin, weight, bias, labels, multiple)
        grads = torch.autograd.grad(loss, (x, weight, bias))
        assert grads[1].shape == (v, h) and grads[2].shape == (v,)
        tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
        assert torch.allclose(loss, ref, **tol)
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, **tol)
        logits = F.linear(x, weight, bias)
        expected = ((logits.argmax(-1) == labels) & (labels >= 0)).sum()
        assert abs(int(correct) - int(expected)) <= (2 if autocast else 0)


def test_model_with_vocab_padding_saves_the_true_vocabulary(tmp_path):
    model = tiny_bert(vocab_size=97)
    module = PretrainingModule(model, vocab_multiple=64)
    batch = padded_batch()
    loss, _ = module(**batch.__dict__)
    loss.backward()
    assert model.cls.predictions.decoder.weight.shape[0] == 97 == model.config.vocab_size
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 97


# ------------------------------------------------------------------------------------------ torch.compile

def _compile_batch(collate: Collator, masked_data, start: int) -> dict:
    from bertcli.shards import ShardedArrays

    arrays = ShardedArrays(masked_data)
    return collate([arrays[i] for i in range(start, start + 4)])


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_compiled_step_has_no_graph_break(masked_data, precision):
    torch._dynamo.reset()
    module = PretrainingModule(tiny_bert(vocab_size=1000, dropout=0.1).train())
    collate = Collator(pad_id=0, has_nsp=True, dynamic=False, max_predictions=20, fixed_width=True,
                       length_buckets=length_buckets(32))
    batch = to_model_batch(_compile_batch(collate, masked_data, 0), torch.device("cpu"), fixed_width=True)
    with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
        explained = torch._dynamo.explain(module)(**batch.__dict__)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compile_builds_one_graph_per_length_bucket(masked_data):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    module = PretrainingModule(tiny_bert(vocab_size=1000).train())
    counter = CompileCounter()
    compiled = torch.compile(module, backend=counter, dynamic=False)
    from bertcli.shards import ShardedArrays

    arrays = ShardedArrays(masked_data)
    rows = sorted((arrays[i] for i in range(40)), key=lambda r: len(r["input_ids"]))
    short, longer = rows[:4], rows[-4:]
    natural = {len(r["input_ids"]) for r in short} | {len(r["input_ids"]) for r in longer}
    assert max(len(r["input_ids"]) for r in short) < max(len(r["input_ids"]) for r in longer)  # two lengths
    collate = Collator(pad_id=0, has_nsp=True, dynamic=False, max_predictions=20, fixed_width=True,
                       length_buckets=(32,))
    for group in (short, longer, short[:2] + longer[:2]):
        batch = to_model_batch(collate(group), torch.device("cpu"), fixed_width=True)
        loss, _ = compiled(**batch.__dict__)
        loss.backward()
    assert counter.frame_count == 1 and len(natural) > 1  # different lengths and predictions, one graph
    two_buckets = Collator(pad_id=0, has_nsp=True, dynamic=False, max_predictions=20, fixed_width=True,
                           length_buckets=(16, 32))
    for group in (rows[:4], rows[-4:]):
        compiled(**to_model_batch(two_buckets(group), torch.device("cpu"), fixed_width=True).__dict__)
    assert counter.frame_count == 2  # the new bucket (16) adds one graph, the known one (32) none


# ------------------------------------------------------------------------------------------ efficiency

def test_metrics_report_model_flops_and_mfu_by_the_formula(masked_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(masked_data, out, peak_tflops=0.5, eval_every=0, save_every=0)
    pretrain.run(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    # replay the data order to count each interval's model FLOPs per non-padding token
    from bertcli.artifacts import load_data
    from bertcli.batching import EpochPlan, max_predictions_of

    data = load_data(masked_data)
    plan = EpochPlan(data.arrays, cfg.seed, cfg.batch_size, cfg.eval_fraction)
    collate = Collator(pad_id=data.special_ids["pad"], has_nsp=True, dynamic=False,
                       max_predictions=max_predictions_of(data, None))
    micro = MicroBatches(plan, collate, cfg.micro_batch_size, 2, 0, 1, cfg.seed)
    config = build_bert_config(None, {k: v for k, v in TINY_MODEL.items() if k != "preset"}, data.vocab_size,
                               data.special_ids["pad"])
    previous = 0
    for r in train:
        batches = [micro[0, b, a] for b in range(previous, r["step"]) for a in range(2)]
        previous = r["step"]
        work = sum((x["work"] for x in batches), BatchWork())
        per_token = training_flops(config, work) / sum(x["num_tokens"] for x in batches)
        assert r["model_tflops_per_s"] * 1e12 / r["tokens_per_s"] == pytest.approx(per_token, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["model_tflops_per_s"] / 0.5, rel=1e-12)
        assert r["sequences_per_s"] > 0 and "peak_memory_gb" not in r  # CPU: no GPU memory to report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["precision_reason"] == "auto on cpu: fp32"


def test_mfu_is_null_on_cpu_without_peak_tflops(reference_run):
    train = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert all(r["mfu"] is None and r["model_tflops_per_s"] > 0 for r in train)


def test_training_flops_formula():
    config = build_bert_config("base", {}, vocab_size=30522, pad_token_id=0)
    h, i, v, layers = 768, 3072, 30522, 12
    t, k = 128, 20
    work = BatchWork.of([t], [k])
    assert work == BatchWork(1, t, t * t, k, (k + 1) * t)
    per_layer = 2 * (4 * h * h + 2 * h * i) * t + 4 * h * t * t
    last = 4 * h * h * t + 2 * (2 * h * h + 2 * h * i) * (k + 1) + 4 * h * (k + 1) * t
    head = 2 * (h * h + h * v) * k + 2 * (h * h + 2 * h)
    assert training_flops(config, work) == 3 * ((layers - 1) * per_layer + last + head)
    assert training_flops(config, work, prune_last_layer=False) == 3 * (layers * per_layer + head)


# ------------------------------------------------------------------------------------------ resuming

def test_resume_with_raised_max_steps_continues_a_finished_run(reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    manifest = pretrain.run(tiny_cfg(run_data_path(reference_run), run, max_steps=8), resume=True)
    assert manifest["stats"]["steps"] == 8
    assert "resuming from" in capsys.readouterr().err and "final" in str(manifest["final"])
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [2, 4, 6, 8]
    assert not all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(reference_run).values()))
    again = pretrain.run(tiny_cfg(run_data_path(reference_run), run, max_steps=8), resume=True)
    assert again["stats"]["steps"] == 8  # now finished: nothing to do


def test_resume_refuses_to_start_over_when_no_checkpoint_can_be_used(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "final")
    (run / "manifest.json").unlink()
    for step in ("step-00000002", "step-00000004"):
        (run / step / MARKER).write_text("{}")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ArtifactError, match="none of the 2 checkpoint"):
        pretrain.run(tiny_cfg(run_data_path(reference_run), run), resume=True)
    assert (run / "metrics.jsonl").read_text() == before  # nothing truncated, nothing trained
