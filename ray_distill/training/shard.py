"""The student as the workers train it: loaded once, sharded early, its loss inside its forward.

    model, base = build_student(ref, cfg, rank, world, device, load_weights=True)

- FSDP: every rank builds the model with its parameters on the meta device (no memory), shards it with
  FSDP2 ``fully_shard`` (each decoder layer, then the root), materialises only its own shards on its
  device, and rank 0 alone reads the weights (in the checkpoint's dtype) and streams them into every
  rank's shards (``set_model_state_dict`` with ``broadcast_from_rank0``). No rank ever holds a full fp32
  copy. The shards are in ``param_dtype`` (fp32 master weights, or bf16 for the stochastic-rounding AdamW
  of :mod:`ray_distill.training.optim`); with ``precision: bf16`` the all-gathered weights the layers
  compute with are bf16 (FSDP2 ``MixedPrecisionPolicy``; gradients reduced in fp32, then kept in the
  shards' dtype). ``shard_size`` shards over groups of that many workers and replicates across the groups
  (HSDP: a ``(replicate, shard)`` device mesh); ``cpu_offload`` keeps shards, gradients and optimizer state
  in host memory (FSDP2 ``CPUOffloadPolicy``; the rotary buffers stay on the device).
  ``load_weights=False`` (a resume) skips the read: the sharded checkpoint fills the shards.
- DDP and a single worker: every rank loads the full model in ``param_dtype`` (DDP replicates it anyway).

``attn_implementation: auto`` is resolved per worker device (:func:`resolve_attn_implementation`).

``model`` is a :class:`LossModel` around the Hugging Face model ``base``: its forward returns the summed
cross-entropy (:mod:`ray_distill.training.loss`), so the output projection that FSDP all-gathers for the
root's forward is in use exactly while the chunked loss needs it. Its state-dict keys are the Hugging
Face ones behind ``lm.`` (:func:`hf_state_dict` strips it).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ray_distill.config import TrainConfig
from ray_distill.models import loadable
from ray_distill.training.loss import chunked_token_loss_sum

PREFIX = "lm."


class LossModel(nn.Module):
    """A causal LM whose forward is the summed next-token cross-entropy over the supervised positions."""

    def __init__(self, lm: nn.Module, chunk_tokens: int | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # use_cache=False: with a KV cache, Hugging Face models ignore the packed-sequence position_ids mask.
        hidden = self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        head = self.lm.get_output_embeddings()
        config = self.lm.config
        return chunked_token_loss_sum(hidden.last_hidden_state[:, :-1], head.weight, head.bias, labels[:, 1:],
                                      self.chunk_tokens, scale=getattr(config, "logit_scale", None),
                                      softcap=getattr(config, "final_logit_softcapping", None))


def hf_state_dict(state: dict) -> dict:
    """A :class:`LossModel` state dict with Hugging Face keys (``lm.`` removed)."""
    return {k.removeprefix(PREFIX): v for k, v in state.items()}


@functools.cache
def flash_attn_imports() -> bool:
    """Whether the ``flash_attn`` package imports here (its CUDA extension loads against this torch)."""
    try:
        import flash_attn  # noqa: F401
    except Exception:  # an ImportError, or an OSError/RuntimeError of a wheel built for another torch
        return False
    return True


def resolve_attn_implementation(requested: str, device: torch.device, flash: bool | None = None) -> str:
    """The attention kernel a worker on ``device`` uses: ``requested``, or for ``auto`` flash_attention_2 on a
    CUDA device when flash_attn imports (``flash``, default: try it), else sdpa."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and (flash_attn_imports() if flash is None else flash):
        return "flash_attention_2"
    return "sdpa"


def param_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype of the trained parameters (and their gradients)."""
    return torch.bfloat16 if cfg.param_dtype == "bf16" else torch.float32


def build_student(ref: str, cfg: TrainConfig, rank: int, world: int, device: torch.device,
                  load_weights: bool = True) -> tuple[nn.Module, nn.Module]:
    """The wrapped :class:`LossModel` (DDP, FSDP2 or plain) and the Hugging Face model inside it."""
    attn = resolve_attn_implementation(cfg.attn_implementation, device)
    if cfg.strategy == "fsdp":
        return _fsdp_student(ref, cfg, rank, world, device, load_weights, attn)
    base = _load_full(ref, attn, param_dtype(cfg))
    _checkpointing(base, cfg)
    model = LossModel(base, cfg.loss_chunk_tokens).to(device)
    if world > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model, parallel_strategy="ddp", move_to_device=False)
    return model, base


def device_mesh(device: torch.device, world: int, shard_size: int | None):
    """FSDP's mesh: 1-D over all workers, or HSDP's ``(replicate, shard)`` with groups of ``shard_size``."""
    from torch.distributed.device_mesh import init_device_mesh

    if shard_size is None:
        return init_device_mesh(device.type, (world,))
    return init_device_mesh(device.type, (world // shard_size, shard_size), mesh_dim_names=("replicate", "shard"))


def _fsdp_student(ref: str, cfg: TrainConfig, rank: int, world: int, device: torch.device,
                  load_weights: bool, attn: str) -> tuple[nn.Module, nn.Module]:
    from accelerate import init_empty_weights
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    with loadable(ref) as (name, revision):
        config = AutoConfig.from_pretrained(name, revision=revision)
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary tables) computed
        base = AutoModelForCausalLM.from_config(config, dtype=param_dtype(cfg), attn_implementation=attn)
    base.tie_weights()  # from_config leaves tied embeddings untied (from_pretrained ties them)
    _checkpointing(base, cfg)
    model = LossModel(base, cfg.loss_chunk_tokens)
    mesh = device_mesh(device, world, cfg.shard_size)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.precision == "bf16" \
        else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.cpu_offload else OffloadPolicy()
    for module in base.modules():
        if type(module).__name__ in (base._no_split_modules or []):
            fully_shard(module, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    buffers = {n: b.clone() for n, b in model.named_buffers(remove_duplicate=False)}
    model.to_empty(device="cpu" if cfg.cpu_offload else device)  # this rank's shards only
    for module_name, module in model.named_modules():  # FSDP moves parameters, not buffers: these go on the device
        for n, b in module.named_buffers(recurse=False):
            module.register_buffer(n, buffers[f"{module_name}.{n}" if module_name else n].to(device),
                                   persistent=n not in module._non_persistent_buffers_set)
    full = {}
    if load_weights and rank == 0:
        full = {PREFIX + k: v for k, v in _load_full(ref, attn, "auto").state_dict().items()}
    if load_weights:
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    return model, base


def _load_full(ref: str, attn: str, dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with loadable(ref) as (name, revision):
        return AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype, attn_implementation=attn)


def _checkpointing(base: nn.Module, cfg: TrainConfig) -> None:
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
