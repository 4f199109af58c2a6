"""Model architectures without weights: a model reference (preset, hub id, local path) to its ``config.json``
and the shape the memory plan needs, with no network and no storage access.

    shape = model_shape("Qwen/Qwen2.5-32B-Instruct")      # shipped config, parameters counted on the meta device
    shape.params, shape.layer_params, shape.root_params  # 32.76e9, 4.88e8, 1.56e9

Resolution order of a reference: a built-in preset (``tiny``/``micro``: the synthetic students of
:mod:`ray_distill.synthetic.student`; ``smollm2-135m``) -> the ``config.json`` shipped in
``ray_distill/planning/models`` for a hub id -> ``config.json`` of a *local* path -> the Hugging Face cache
(``huggingface_hub.try_to_load_from_cache``) -> a one-line :class:`ConfigError` asking for the config.
Remote storage (``s3://...``) is never read.

Parameter counts come from instantiating the real architecture (``AutoModelForCausalLM.from_config``) on the
meta device, so they are the counts the trainer shards; decoder layers are the modules FSDP wraps one by one
(``_no_split_modules``), the rest (embeddings, output head, final norm) is the root.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from importlib import resources

from ray_distill.config import ConfigError

SHIPPED = "models"
SYNTHETIC = ("tiny", "micro")
PRESET_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # presets built from a real checkpoint
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}


@dataclass(frozen=True)
class Shape:
    """What the memory plan needs of an architecture (counts in parameters, sizes in elements)."""

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # MLP width a token goes through (MoE: experts per token x expert width + shared)
    vocab: int
    tied: bool
    params: int  # all parameters of the causal LM
    layer_params: int  # the largest decoder layer (what FSDP2 all-gathers at once)
    root_params: int  # parameters outside decoder layers (embeddings, head, final norm): FSDP's root unit
    largest_tensor: int  # elements of the largest single parameter (a gather of the full state dict holds one)
    dtype: str  # the checkpoint's torch_dtype
    quantized_fp8: bool  # FP8 block-quantized linear weights (DeepSeek-V3/R1)
    kv_latent: int  # MLA: kv_lora_rank + qk_rope_head_dim cached per token and layer (0: plain K/V heads)
    max_position: int  # max_position_embeddings: vLLM's max_model_len when the job sets none

    @property
    def decoder_params(self) -> int:
        return self.params - self.root_params


def config_dict(ref: str) -> dict:
    """The ``config.json`` contents of a model reference (see the module docstring for the order)."""
    if ref in SYNTHETIC:
        return _synthetic_config(ref)
    hub = PRESET_MODELS.get(ref, ref)
    name, _, revision = hub.partition("@")
    shipped = _shipped(name)
    if shipped is not None:
        return shipped
    from ray_distill.models import is_hub_id

    if "://" not in name or name.startswith("file://"):
        path = os.path.join(name.removeprefix("file://"), "config.json")
        if os.path.isfile(path):
            return _read(path)
    if is_hub_id(hub):
        cached = _hf_cached(name, revision or None)
        if cached is not None:
            return cached
        raise ConfigError(f"no config for {name}: put its config.json in the HF cache (huggingface-cli download "
                          f"{name} config.json) or pass a local path")
    raise ConfigError(f"no config for {ref}: the plan reads no remote storage; copy its config.json to a local "
                      "folder and pass that path, or use a hub id")


def _shipped(name: str) -> dict | None:
    res = resources.files("ray_distill.planning").joinpath(SHIPPED, name.replace("/", "--") + ".json")
    return json.loads(res.read_text()) if res.is_file() else None


def _read(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _hf_cached(name: str, revision: str | None) -> dict | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(name, "config.json", revision=revision)
    return _read(path) if isinstance(path, str) else None


def _synthetic_config(preset: str) -> dict:
    """The config :func:`ray_distill.synthetic.student.build_model` builds (character vocabulary, tied)."""
    from ray_distill.synthetic.student import PRESETS, build_tokenizer

    return {"model_type": "qwen2", "vocab_size": len(build_tokenizer()), "max_position_embeddings": 512,
            "tie_word_embeddings": True, "torch_dtype": "float32", **PRESETS[preset]}


def model_shape(ref: str) -> Shape:
    """The :class:`Shape` of a model reference (cached per config)."""
    config = config_dict(ref)
    return _shape(ref, json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _shape(ref: str, config_json: str) -> Shape:
    c = json.loads(config_json)
    params, layer, root, largest = count_params(config_json)
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    if "n_routed_experts" in c or "num_experts" in c:  # MoE: the experts a token visits
        per_tok = c.get("num_experts_per_tok", 1) + c.get("n_shared_experts", 0)
        intermediate = per_tok * c["moe_intermediate_size"]
    else:
        intermediate = c["intermediate_size"]
    quant = (c.get("quantization_config") or {}).get("quant_method") == "fp8"
    return Shape(
        name=ref, model_type=c["model_type"], hidden=hidden, layers=c["num_hidden_layers"], heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads, head_dim=c.get("head_dim") or hidden // heads,
        intermediate=intermediate, vocab=c["vocab_size"], tied=bool(c.get("tie_word_embeddings", False)),
        params=params, layer_params=layer, root_params=root, largest_tensor=largest,
        dtype=str(c.get("torch_dtype") or c.get("dtype") or "float32"), quantized_fp8=quant,
        kv_latent=(c["kv_lora_rank"] + c["qk_rope_head_dim"]) if "kv_lora_rank" in c else 0,
        max_position=int(c.get("max_position_embeddings") or 4096),
    )


@functools.lru_cache(maxsize=64)
def count_params(config_json: str) -> tuple[int, int, int, int]:
    """(all parameters, the largest decoder layer's, the root's, the largest tensor's) of the architecture,
    instantiated on the meta device (no memory, no weights)."""
    model = meta_model(json.loads(config_json))
    layers = decoder_layers(model)
    total = sum(p.numel() for p in model.parameters())
    per_layer = [sum(p.numel() for p in m.parameters()) for m in layers]
    largest = max(p.numel() for p in model.parameters())
    return total, max(per_layer), total - sum(per_layer), largest


def meta_model(config: dict):
    """``AutoModelForCausalLM.from_config`` of ``config`` on the meta device (embeddings tied as
    ``from_pretrained`` would)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in config.items() if k != "auto_map"}  # the built-in class, never remote code
    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.tie_weights()
    return model


def decoder_layers(model) -> list:
    """The modules FSDP2 shards one by one (``training/shard.py``): instances of ``_no_split_modules``."""
    names = set(model._no_split_modules or [])
    return [m for m in model.modules() if type(m).__name__ in names]
