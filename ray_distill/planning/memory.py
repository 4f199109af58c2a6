"""Bytes per GPU of each stage, pure arithmetic on a :class:`~ray_distill.planning.shapes.Shape` and the knobs.

    parts = train_memory(shape, TrainKnobs(strategy="fsdp", num_workers=16, ...))   # {"params (sharded)": ...}
    engine = engine_memory(shape, tp=4, dtype="bfloat16", max_model_len=20480, gpu_bytes=H100)

Training (per rank, what the loop in ``training/loop.py`` and the sharding in ``training/shard.py`` hold):
- sharded state: parameters and gradients in ``param_dtype`` (fp32: fp32 master weights; bf16: bf16), AdamW's
  two moments in fp32, each divided by the shard group (FSDP: ``shard_size`` or every worker; DDP: none, plus
  DDP's gradient buckets, a second gradient copy); ``cpu_offload`` moves all of it to host memory;
- with ``reduce_every_micro_step: false`` FSDP skips the reduce-scatter on accumulation micro-steps and every
  rank keeps an unsharded fp32 gradient of the whole model until the last one;
- gathered parameters: FSDP2 all-gathers the root (embeddings, head, final norm; kept unsharded through forward
  and backward) and one decoder layer at a time plus the one it prefetches, in the compute dtype; their
  unsharded gradients before the reduce-scatter (compute dtype, then the fp32 reduce buffer of a layer);
- activations at the micro-batch's tokens: ``ceil(ceil(batch_size / num_workers) / grad_accum_steps)`` examples
  per micro-step, each up to ``max_seq_len`` tokens (packed rows hold at most ``max_seq_len``, padded to the
  longest: the worst case is one full row per example). With gradient checkpointing one hidden state per layer
  boundary is kept plus one layer's recompute peak; without it every layer's saved tensors;
- the loss's logits chunk (``loss_chunk_tokens`` x vocab: bf16 logits, their fp32 copy and gradients);
- a fixed CUDA context / NCCL / allocator allowance.
The root's fp32 reduce-scatter at the very end of backward (after the activations are freed) is not added.

vLLM engines: weights / tensor parallel (FP8 block-quantized weights at one byte) + KV cache. vLLM reserves
``gpu_memory_utilization`` of each GPU; what is left after weights and its working memory holds the KV cache.
A job fits when one ``max_model_len`` sequence fits; how many of the job's concurrent sequences fit is reported.
MLA models (DeepSeek-V3/R1) cache one latent (kv_lora_rank + rope dims) per token and layer, on every TP rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ray_distill.planning.shapes import DTYPE_BYTES, Shape

GiB = 1 << 30
CUDA_OVERHEAD = 3 * GiB  # CUDA context, NCCL buffers, allocator fragmentation per training GPU
ENGINE_OVERHEAD = 4 * GiB  # vLLM per GPU beyond weights and KV: activations of a prefill chunk, CUDA graphs, sampler
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of a GPU it reserves
MAX_NUM_SEQS = 256  # vLLM's default sequences per engine step


@dataclass(frozen=True)
class TrainKnobs:
    """The training settings the memory depends on (``TrainConfig`` fields of the same names)."""

    strategy: str = "ddp"
    precision: str = "fp32"
    param_dtype: str = "fp32"
    reduce_every_micro_step: bool = True
    cpu_offload: bool = False
    shard_size: int | None = None
    num_workers: int = 1
    batch_size: int = 1
    grad_accum_steps: int = 1
    max_seq_len: int = 256
    gradient_checkpointing: bool = False
    loss_chunk_tokens: int | None = 1024
    attn_implementation: str = "auto"

    @property
    def shard_group(self) -> int:
        return (self.shard_size or self.num_workers) if self.strategy == "fsdp" else 1

    @property
    def param_bytes(self) -> int:
        return 2 if self.param_dtype == "bf16" else 4

    @property
    def compute_bytes(self) -> int:
        return 2 if "bf16" in (self.precision, self.param_dtype) else 4

    @property
    def micro_examples(self) -> int:
        """Examples one rank takes per micro-step (``training/data.py`` ``micro_batches``)."""
        return math.ceil(math.ceil(self.batch_size / self.num_workers) / self.grad_accum_steps)

    @property
    def micro_tokens(self) -> int:
        return self.micro_examples * self.max_seq_len


def sharded_state(params: int, k: TrainKnobs) -> dict[str, int]:
    """Parameters, gradients and AdamW moments one rank holds (FSDP2 pads each shard: ceil)."""
    shard = math.ceil(params / k.shard_group)
    return {"params (sharded)": shard * k.param_bytes, "grads (sharded)": shard * k.param_bytes,
            "optimizer (fp32 moments)": shard * 8}


def train_memory(s: Shape, k: TrainKnobs) -> dict[str, int]:
    """Bytes per training GPU by component (``cpu_offload``: the sharded state is on the host, see
    :func:`train_host_memory`)."""
    parts: dict[str, int] = {}
    state = sharded_state(s.params, k)
    if not k.cpu_offload:
        parts.update(state)
    cb = k.compute_bytes
    if k.strategy == "fsdp":
        if not k.reduce_every_micro_step and k.grad_accum_steps > 1:
            parts["grads (accumulated, unsharded fp32)"] = s.params * 4
        parts["gathered params (root + 2 layers)"] = cb * (s.root_params + 2 * s.layer_params)
        parts["unsharded grads (root + layer)"] = cb * (s.root_params + s.layer_params) + 4 * s.layer_params
    else:
        parts["ddp gradient buckets"] = s.params * k.param_bytes
        if cb != k.param_bytes:  # autocast keeps a bf16 copy of the weights it casts
            parts["autocast weight copies"] = s.params * cb
    parts["activations"] = activation_bytes(s, k)
    parts["logits chunk"] = logits_bytes(s, k)
    parts["CUDA/NCCL overhead"] = CUDA_OVERHEAD
    return parts


def train_host_memory(s: Shape, k: TrainKnobs, workers_on_node: int) -> int:
    """Host bytes of one training node: the offloaded sharded state of its workers (``cpu_offload``)."""
    return sum(sharded_state(s.params, k).values()) * workers_on_node if k.cpu_offload else 0


def layer_saved_per_token(s: Shape, cb: int) -> int:
    """Bytes one decoder layer saves for backward per token (norm inputs kept in fp32, q/k/v before and after
    rotary, attention output, residuals, the MLP's gate/up/activation/product)."""
    kv = s.kv_heads * s.head_dim
    return cb * (7 * s.hidden + 3 * kv + 4 * s.intermediate) + 8 * s.hidden


def attention_scratch(s: Shape, k: TrainKnobs, cb: int) -> int:
    """Per layer: flash/varlen kernels need O(tokens) only; sdpa with packed rows gets a boolean block mask
    per row (max_seq_len^2); eager materialises heads x L^2 scores and probabilities per row."""
    rows, L = k.micro_examples, k.max_seq_len
    impl = k.attn_implementation
    if impl.startswith("flash") or impl == "flex_attention":
        return 0
    if impl == "eager":
        return rows * s.heads * L * L * (2 * cb + 4)
    return rows * L * L  # sdpa / auto: the packed-sequence mask


def activation_bytes(s: Shape, k: TrainKnobs) -> int:
    """Activations of one micro-step at its worst-case tokens (see the module docstring)."""
    cb, t = k.compute_bytes, k.micro_tokens
    edges = 3 * t * s.hidden * cb  # embedding output, final norm output, the supervised positions' copy
    if k.gradient_checkpointing:
        boundaries = s.layers * t * s.hidden * cb
        recompute = t * (layer_saved_per_token(s, cb) + cb * 2 * (s.intermediate + s.hidden))
        return edges + boundaries + recompute + attention_scratch(s, k, cb)
    return edges + s.layers * (t * layer_saved_per_token(s, cb) + attention_scratch(s, k, cb))


def logits_bytes(s: Shape, k: TrainKnobs) -> int:
    """One chunk of the chunked loss in backward: logits (compute dtype), their fp32 copy, both gradients."""
    chunk = min(k.loss_chunk_tokens or k.micro_tokens, k.micro_tokens)
    return chunk * s.vocab * (2 * k.compute_bytes + 8)


def export_memory(s: Shape, k: TrainKnobs) -> dict[str, int]:
    """Per GPU while rank 0 gathers the full state dict (``training/checkpoint.py`` ``save_model``): the
    optimizer state and gradients are freed first; each parameter is all-gathered on the GPU and copied to host
    memory, one at a time."""
    state = 0 if k.cpu_offload else math.ceil(s.params / k.shard_group) * k.param_bytes
    return {"params (sharded)": state, "one gathered tensor": s.largest_tensor * k.param_bytes,
            "CUDA/NCCL overhead": CUDA_OVERHEAD}


def export_host_bytes(s: Shape, export_dtype: str) -> int:
    """Host bytes of rank 0's full state dict, in the export dtype."""
    return s.params * DTYPE_BYTES.get(export_dtype, 4)


def weight_bytes(s: Shape, dtype: str) -> int:
    """Bytes of the served weights: FP8 block-quantized decoder layers at one byte (plus fp32 scales per
    128x128 block) with bf16 embeddings and head; otherwise every parameter in ``dtype`` ("auto": the checkpoint's)."""
    if s.quantized_fp8 and dtype in ("auto", "fp8"):
        return s.decoder_params + s.decoder_params * 4 // (128 * 128) + s.root_params * 2
    return s.params * DTYPE_BYTES.get(s.dtype if dtype == "auto" else dtype, 2)


def kv_bytes_per_token(s: Shape, tp: int, dtype_bytes: int = 2) -> int:
    """KV cache per token on one GPU of a ``tp``-way engine: MLA keeps one latent per layer on every rank; GQA
    splits the KV heads over the ranks (replicated when tp exceeds them)."""
    if s.kv_latent:
        return s.layers * s.kv_latent * dtype_bytes
    return s.layers * 2 * max(1, s.kv_heads // tp) * s.head_dim * dtype_bytes


@dataclass(frozen=True)
class EngineMemory:
    weights: int  # per GPU
    overhead: int
    kv_per_sequence: int  # one max_model_len sequence, per GPU
    budget: int  # gpu_memory_utilization x GPU
    wanted_sequences: int

    @property
    def need(self) -> int:
        """What must fit: the weights, the working memory and one full-length sequence."""
        return self.weights + self.overhead + self.kv_per_sequence

    @property
    def room_sequences(self) -> int:
        """Full-length sequences the KV cache left after weights can hold."""
        return max(0, (self.budget - self.weights - self.overhead) // max(1, self.kv_per_sequence))


def engine_memory(s: Shape, tp: int, dtype: str, max_model_len: int, gpu_bytes: int,
                  wanted_sequences: int = MAX_NUM_SEQS) -> EngineMemory:
    """Per GPU of one vLLM engine (see the module docstring)."""
    return EngineMemory(weights=math.ceil(weight_bytes(s, dtype) / tp), overhead=ENGINE_OVERHEAD,
                        kv_per_sequence=kv_bytes_per_token(s, tp) * max_model_len,
                        budget=int(gpu_bytes * GPU_MEMORY_UTILIZATION), wanted_sequences=wanted_sequences)
