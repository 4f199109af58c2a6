"""The memory arithmetic on hand-checked numbers (no Ray, no model instantiation beyond the meta device)."""

from __future__ import annotations

import dataclasses

import pytest

from ray_distill.planning.memory import (
    CUDA_OVERHEAD,
    GiB,
    TrainKnobs,
    activation_bytes,
    engine_memory,
    kv_bytes_per_token,
    logits_bytes,
    sharded_state,
    train_memory,
    weight_bytes,
)
from ray_distill.planning.shapes import Shape, model_shape


def _shape(**kw) -> Shape:
    base = dict(name="toy", model_type="qwen2", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16,
                intermediate=128, vocab=100, tied=True, params=1000, layer_params=300, root_params=400,
                largest_tensor=6400, dtype="bfloat16", quantized_fp8=False, kv_latent=0, max_position=4096)
    return Shape(**{**base, **kw})


def test_sharded_state_bytes_by_dtype_and_group():
    fp32 = TrainKnobs(strategy="fsdp", num_workers=8, precision="bf16")
    assert sharded_state(1000, fp32) == {"params (sharded)": 125 * 4, "grads (sharded)": 125 * 4,
                                         "optimizer (fp32 moments)": 125 * 8}  # 16 B/param
    bf16 = dataclasses.replace(fp32, param_dtype="bf16")
    assert sum(sharded_state(1000, bf16).values()) == 125 * 12  # 2 + 2 + 8 B/param
    hsdp = dataclasses.replace(fp32, num_workers=16, shard_size=4)
    assert sharded_state(1001, hsdp)["params (sharded)"] == 251 * 4  # ceil: FSDP2 pads the shards
    ddp = TrainKnobs(strategy="ddp", num_workers=8)
    assert sharded_state(1000, ddp)["optimizer (fp32 moments)"] == 8000


def test_micro_batch_follows_the_loop_layout():
    k = TrainKnobs(num_workers=16, batch_size=48, grad_accum_steps=3, max_seq_len=16384)
    assert (k.micro_examples, k.micro_tokens) == (1, 16384)
    k = TrainKnobs(num_workers=8, batch_size=48, grad_accum_steps=1, max_seq_len=16384)
    assert (k.micro_examples, k.micro_tokens) == (6, 6 * 16384)  # the issue's ~98k tokens
    assert TrainKnobs(num_workers=3, batch_size=10, grad_accum_steps=2).micro_examples == 2  # ceil(ceil(10/3)/2)


def test_train_components_switch_with_the_knobs():
    s = _shape()
    k = TrainKnobs(strategy="fsdp", precision="bf16", num_workers=2, batch_size=4, grad_accum_steps=2,
                   max_seq_len=32, gradient_checkpointing=True)
    parts = train_memory(s, k)
    assert parts["gathered params (root + 2 layers)"] == 2 * (400 + 600)
    assert parts["unsharded grads (root + layer)"] == 2 * 700 + 4 * 300
    assert parts["CUDA/NCCL overhead"] == CUDA_OVERHEAD
    assert "grads (accumulated, unsharded fp32)" not in parts
    lazy = train_memory(s, dataclasses.replace(k, reduce_every_micro_step=False))
    assert lazy["grads (accumulated, unsharded fp32)"] == 4000
    offload = train_memory(s, dataclasses.replace(k, cpu_offload=True))
    assert "params (sharded)" not in offload and "optimizer (fp32 moments)" not in offload
    ddp = train_memory(s, dataclasses.replace(k, strategy="ddp"))
    assert ddp["ddp gradient buckets"] == 4000 and ddp["optimizer (fp32 moments)"] == 8000


def test_activations_checkpointed_vs_not_and_the_logits_chunk():
    s = _shape()
    k = TrainKnobs(precision="bf16", num_workers=1, batch_size=1, max_seq_len=100, attn_implementation="flash_attention_2")
    ckpt = activation_bytes(s, dataclasses.replace(k, gradient_checkpointing=True))
    full = activation_bytes(s, k)
    per_layer = 2 * (7 * 64 + 3 * 32 + 4 * 128) + 8 * 64
    assert full == 3 * 100 * 64 * 2 + 2 * 100 * per_layer
    assert ckpt == 3 * 100 * 64 * 2 + 2 * 100 * 64 * 2 + 100 * (per_layer + 2 * 2 * (128 + 64))
    sdpa = activation_bytes(s, dataclasses.replace(k, attn_implementation="sdpa", gradient_checkpointing=True))
    assert sdpa - ckpt == 100 * 100  # the packed rows' boolean mask
    assert logits_bytes(s, dataclasses.replace(k, loss_chunk_tokens=10)) == 10 * 100 * 12
    assert logits_bytes(s, dataclasses.replace(k, loss_chunk_tokens=None)) == 100 * 100 * 12


def test_engine_kv_cache_gqa_and_mla():
    qwen = model_shape("Qwen/Qwen2.5-32B-Instruct")
    assert kv_bytes_per_token(qwen, tp=1) == 64 * 2 * 8 * 128 * 2  # 256 KiB per token
    assert kv_bytes_per_token(qwen, tp=4) == 64 * 2 * 2 * 128 * 2
    assert kv_bytes_per_token(qwen, tp=16) == 64 * 2 * 1 * 128 * 2  # KV heads replicated past 8
    r1 = model_shape("deepseek-ai/DeepSeek-R1")
    assert kv_bytes_per_token(r1, tp=8) == 61 * (512 + 64) * 2  # one latent per layer, on every rank
    assert 640e9 < weight_bytes(r1, "auto") < 700e9  # FP8 decoder layers, bf16 embeddings and head
    assert weight_bytes(qwen, "bfloat16") == qwen.params * 2


def test_engine_fits_one_sequence_and_reports_room():
    qwen = model_shape("Qwen/Qwen2.5-32B-Instruct")
    mem = engine_memory(qwen, tp=4, dtype="bfloat16", max_model_len=20480, gpu_bytes=80 * GiB)
    assert mem.weights == pytest.approx(qwen.params * 2 / 4)
    assert mem.need < mem.budget and 30 < mem.room_sequences < 60
    tiny = engine_memory(qwen, tp=1, dtype="bfloat16", max_model_len=20480, gpu_bytes=40 * GiB)
    assert tiny.need > tiny.budget and tiny.room_sequences == 0
