"""Training strategies chosen by config: the TrainConfig rules (no Ray), and FSDP2 (HSDP over 2 real Ray Train
workers) with bf16 parameters + gradient checkpointing on CPU (gloo), checkpointed and resumed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ray_distill.config import TrainConfig
from ray_distill.synthetic.tasks import base_corpus
from ray_distill.training import train_sft


def test_config_rejects_empty_micro_batches():
    with pytest.raises(ValidationError, match=r"batch_size 6 < num_workers x grad_accum_steps \(2 x 4\)"):
        TrainConfig(num_workers=2, batch_size=6, grad_accum_steps=4)
    assert TrainConfig(num_workers=2, batch_size=8, grad_accum_steps=4).grad_accum_steps == 4
    with pytest.raises(ValidationError, match="strategy"):
        TrainConfig(strategy="zero3")
    with pytest.raises(ValidationError, match="precision"):
        TrainConfig(precision="fp16")


def test_fsdp_and_bf16_are_allowed_on_cpu():
    """FSDP2 (gloo) and bf16 autocast work on CPU (see the Ray test below), so use_gpu=false accepts them."""
    cfg = TrainConfig(use_gpu=False, strategy="fsdp", precision="bf16", gradient_checkpointing=True)
    assert (cfg.strategy, cfg.precision, cfg.gradient_checkpointing) == ("fsdp", "bf16", True)


@pytest.mark.slow
def test_fsdp_bf16_gradient_checkpointing_on_cpu_trains_and_resumes(ray_local, tiny_student_path, tmp_path):
    """bf16 shards with the fp32-moment AdamW, reduce-scattered every micro-step, on a (2 replicate x 1 shard)
    HSDP mesh; the resume reads the sharded bf16 weights and fp32 moments back."""
    from transformers import AutoModelForCausalLM

    rows = base_corpus(96, seed=4)
    cfg = TrainConfig(num_workers=2, epochs=1, batch_size=16, lr=3e-3, max_seq_len=64, strategy="fsdp",
                      precision="bf16", param_dtype="bf16", shard_size=1, gradient_checkpointing=True,
                      grad_accum_steps=2, packing=True)
    first = train_sft(rows, tiny_student_path, str(tmp_path / "student"), cfg, storage_path=str(tmp_path / "ray"),
                      run_name="fsdp").metrics
    assert first["steps"] == 6 and first["restarts"] == 0
    assert first["train_loss"] < first["initial_loss"]
    assert first["non_pad_fraction"] > 0.9  # packed rows
    # One more epoch resumes the sharded run: full weights and optimizer state re-sharded from the checkpoint.
    again = train_sft(rows, tiny_student_path, str(tmp_path / "student"), cfg.model_copy(update={"epochs": 2}),
                      storage_path=str(tmp_path / "ray"), run_name="fsdp").metrics
    assert again["restarts"] == 1 and again["resumed_from_step"] == 6 and again["steps"] == 12
    assert again["train_loss"] < first["train_loss"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "student"))  # full (unsharded) export
    assert sum(p.numel() for p in model.parameters()) > 100_000
