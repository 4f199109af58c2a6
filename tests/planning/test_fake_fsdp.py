"""The plan's per-rank parameter / gradient / optimizer bytes against what FSDP2 really holds: the real
architecture on the meta device, sharded as the trainer shards it over a fake process group of the configured
world size, with the trainer's optimizer stepped once (tests/planning/fake_fsdp.py, in a subprocess so the
process group never leaks into other tests). Within 5%."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ray_distill.planning.memory import TrainKnobs, sharded_state
from ray_distill.planning.shapes import model_shape

SCRIPT = Path(__file__).with_name("fake_fsdp.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model, world, param_dtype", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 8, "fp32"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 8, "bf16"),
    ("Qwen/Qwen2.5-32B-Instruct", 8, "fp32"),
    ("Qwen/Qwen2.5-32B-Instruct", 16, "bf16"),
])
def test_plan_matches_the_sharded_model(model, world, param_dtype):
    proc = subprocess.run([sys.executable, str(SCRIPT), model, str(world), param_dtype], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = json.loads(proc.stdout.strip().splitlines()[-1])
    plan = sharded_state(model_shape(model).params, TrainKnobs(strategy="fsdp", precision="bf16",
                                                               param_dtype=param_dtype, num_workers=world))
    assert real["param_dtype"] == ("torch.bfloat16" if param_dtype == "bf16" else "torch.float32")
    for key, planned in (("params", plan["params (sharded)"]), ("grads", plan["grads (sharded)"]),
                         ("optimizer", plan["optimizer (fp32 moments)"])):
        assert planned == pytest.approx(real[key], rel=0.05), (key, planned, real[key])
