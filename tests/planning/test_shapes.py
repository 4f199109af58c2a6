"""Architectures resolve without network or storage, and their counts are the real architectures'."""

from __future__ import annotations

import json

import pytest

from ray_distill.config import ConfigError
from ray_distill.planning.shapes import config_dict, model_shape


@pytest.mark.parametrize("ref, params, layers, hidden, kv_heads, vocab, tied", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, 30, 576, 3, 49152, True),
    ("smollm2-135m", 134_515_008, 30, 576, 3, 49152, True),
    ("Qwen/Qwen2.5-32B-Instruct", 32_763_876_352, 64, 5120, 8, 152064, False),
    ("Qwen/QwQ-32B", 32_763_876_352, 64, 5120, 8, 152064, False),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", 32_763_876_352, 64, 5120, 8, 152064, False),
    ("Qwen/Qwen3-235B-A22B", 235_093_634_560, 94, 4096, 4, 151936, False),
    ("deepseek-ai/DeepSeek-R1", 671_026_404_352, 61, 7168, 128, 129280, False),
])
def test_shipped_configs_have_the_published_shapes(ref, params, layers, hidden, kv_heads, vocab, tied):
    s = model_shape(ref)
    assert (s.params, s.layers, s.hidden, s.kv_heads, s.vocab, s.tied) == (params, layers, hidden, kv_heads, vocab, tied)
    assert s.root_params + s.layers * s.layer_params >= s.params  # the largest layer bounds every layer


def test_mla_and_fp8_are_read_from_deepseek_r1():
    s = model_shape("deepseek-ai/DeepSeek-R1")
    assert s.kv_latent == 512 + 64 and s.quantized_fp8
    assert model_shape("Qwen/Qwen3-235B-A22B").intermediate == 8 * 1536  # experts a token visits


def test_synthetic_presets_follow_the_student_builder():
    from ray_distill.synthetic.student import build_model, build_tokenizer

    for preset in ("tiny", "micro"):
        real = build_model(preset, vocab_size=len(build_tokenizer()))
        assert model_shape(preset).params == sum(p.numel() for p in real.parameters())


def test_local_path_then_cache_then_a_one_line_ask(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(config_dict("HuggingFaceTB/SmolLM2-135M-Instruct")))
    assert model_shape(str(tmp_path)).params == 134_515_008
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        config_dict("some-org/not-shipped-7B")
    assert str(err.value) == ("no config for some-org/not-shipped-7B: put its config.json in the HF cache "
                              "(huggingface-cli download some-org/not-shipped-7B config.json) or pass a local path")
    with pytest.raises(ConfigError, match="reads no remote storage"):
        config_dict("s3://bucket/student")
