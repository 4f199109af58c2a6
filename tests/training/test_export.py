"""The export writes the student in its base model's own dtype: bf16 for a bf16 checkpoint, fp32 (bytes as
before) for the synthetic presets."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ray_distill.models import load_tokenizer
from ray_distill.training.checkpoint import cast_floating, export_dtype, parse_dtype, save_model
from ray_distill.training.shard import LossModel


def safetensors_dtypes(folder: str) -> set[str]:
    """The dtypes that the header of every ``*.safetensors`` file in ``folder`` declares."""
    out = set()
    for path in Path(folder).glob("*.safetensors"):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        out |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return out


def bf16_copy(src: str, dst: str) -> str:
    """The checkpoint at ``src`` saved again in bf16 (its config then says so)."""
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(dst)
    load_tokenizer(src).save_pretrained(dst)
    return dst


def test_parse_dtype_and_cast_keep_ties_and_integers():
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(None) is torch.float32 and parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="not a floating dtype"):
        parse_dtype("int8")
    tied = torch.ones(2, 2)
    out = cast_floating({"a": tied, "b": tied, "i": torch.arange(3)}, torch.bfloat16)
    assert out["a"].dtype is torch.bfloat16 and out["a"] is out["b"] and out["i"].dtype is torch.int64


def test_fp32_tiny_student_exports_exactly_as_before(tiny_student_path, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_student_path, dtype=torch.float32)
    assert export_dtype(base) is torch.float32
    save_model(LossModel(base), base, load_tokenizer(tiny_student_path), str(tmp_path / "new"), rank=0)
    base.save_pretrained(tmp_path / "old")  # what the export wrote before: fp32 save_pretrained
    new, old = ((tmp_path / d / "model.safetensors").read_bytes() for d in ("new", "old"))
    assert new == old and safetensors_dtypes(str(tmp_path / "new")) == {"F32"}


def test_bf16_base_trained_in_fp32_exports_bf16_and_reloads(tiny_student_path, tmp_path):
    src = bf16_copy(tiny_student_path, str(tmp_path / "bf16-base"))
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)  # how the DDP workers train it
    assert export_dtype(base) is torch.bfloat16
    out = str(tmp_path / "student")
    save_model(LossModel(base), base, load_tokenizer(src), out, rank=0)
    assert safetensors_dtypes(out) == {"BF16"}
    assert json.loads((Path(out) / "config.json").read_text())["dtype"] == "bfloat16"
    assert base.config.dtype is torch.float32  # the live model's config is left as it was
    again = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert again.dtype is torch.bfloat16
    for name, value in base.state_dict().items():
        assert torch.equal(again.state_dict()[name], value.to(torch.bfloat16)), name


@pytest.mark.slow
def test_fsdp_training_of_a_bf16_base_exports_bf16(ray_local, tiny_student_path, tmp_path):
    """The whole path: one Ray Train FSDP worker trains a bf16 checkpoint (fp32 shards) and exports it in bf16."""
    from ray_distill.config import TrainConfig
    from ray_distill.synthetic.tasks import base_corpus
    from ray_distill.training import train_sft

    src = bf16_copy(tiny_student_path, str(tmp_path / "bf16-base"))
    cfg = TrainConfig(num_workers=1, epochs=1, batch_size=16, max_seq_len=64, strategy="fsdp", max_failures=0)
    result = train_sft(base_corpus(32, seed=1), src, str(tmp_path / "student"), cfg,
                       storage_path=str(tmp_path / "ray"), run_name="export-bf16", log_model=False)
    assert safetensors_dtypes(result.model_path) == {"BF16"}
    again = AutoModelForCausalLM.from_pretrained(result.model_path, dtype="auto")
    before = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    assert again.dtype is torch.bfloat16 and again.config.vocab_size == before.config.vocab_size
    assert any(not torch.equal(a, b) for a, b in zip(again.state_dict().values(), before.state_dict().values()))
