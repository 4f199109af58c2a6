"""The GPU check script (run by hand on a GPU machine, not in CI): its plan and arithmetic run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import attention, mfu, peak_tflops

ROOT = Path(__file__).resolve().parents[2]


def test_peak_and_mfu():
    assert peak_tflops("NVIDIA H200", None) == 989.0
    assert peak_tflops("NVIDIA L40S", None) == 362.0 and peak_tflops("NVIDIA L4", None) == 121.0
    assert peak_tflops("Some New GPU", None) is None and peak_tflops("Some New GPU", 500.0) == 500.0
    # 135M params, 6 FLOPs per param per trained token, 100k tokens/s on a 989 TFLOP/s GPU
    assert mfu(100_000, 6 * 135e6, 989.0) == pytest.approx(0.0819, abs=1e-4)
    assert mfu(100_000, 6 * 135e6, None) is None


def test_dry_run_prints_the_plan_and_a_valid_train_config():
    """``scripts/gpu_check.sh --dry-run`` as documented: the training config it would run validates (fsdp,
    bf16, packing) and the attention kernel is flash-attn when installed, else sdpa, saying so."""
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    attn, why = attention()
    assert f"sft: attention {attn} ({why})" in proc.stdout
    assert '"strategy":"fsdp"' in proc.stdout and '"precision":"bf16"' in proc.stdout
    assert '"packing":true' in proc.stdout and f'"attn_implementation":"{attn}"' in proc.stdout
    assert "generate: vLLM bf16, 512 prompts x 512 tokens" in proc.stdout
