"""The GPU check script (run by hand on a GPU machine, not in CI): its plan and arithmetic run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import attention, mfu, peak_tflops, run_stage, table

ROOT = Path(__file__).resolve().parents[2]


def test_peak_and_mfu():
    assert peak_tflops("NVIDIA H200", None) == 989.0
    assert peak_tflops("NVIDIA L40S", None) == 362.0 and peak_tflops("NVIDIA L4", None) == 121.0
    assert peak_tflops("Some New GPU", None) is None and peak_tflops("Some New GPU", 500.0) == 500.0
    # 135M params, 6 FLOPs per param per trained token, 100k tokens/s on a 989 TFLOP/s GPU
    assert mfu(100_000, 6 * 135e6, 989.0) == pytest.approx(0.0819, abs=1e-4)
    assert mfu(100_000, 6 * 135e6, None) is None


def test_attention_really_imports_flash_attn():
    """Without an importable flash-attn (this CPU machine) the check falls back to sdpa and says why; a module
    that merely exists (find_spec) would not do."""
    attn, why = attention(cuda=False, hub=False)
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001
        assert attn == "sdpa" and why.startswith("flash-attn: ") and "Error" in why
    else:
        assert attn == "flash_attention_2"


def test_a_stage_is_killed_at_its_timeout_and_the_table_says_so():
    """Each stage runs in its own process group under a timeout: the generate stage, which needs seconds just to
    import vLLM, is stopped after 1 s and reported as a row instead of hanging the check."""
    out = run_stage("generate", 1, model="none", prompts=1, max_tokens=1, eager=True)
    assert out == {"error": "timed out after 1 s"}
    assert table([("a", "ok", "x")]).splitlines() == ["| check | result | figures |", "|---|---|---|", "| a | ok | x |"]


def test_dry_run_prints_the_plan_and_a_valid_train_config_without_installing(tmp_path):
    """``scripts/gpu_check.sh --dry-run`` as documented: no install (no venv is touched), no GPU; the training
    config it would run validates (fsdp, bf16, bf16 parameters, packing) with the attention it found."""
    venv = Path(sys.executable).parents[1]
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          env={**os.environ, "VENV": str(venv)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    attn, why = attention(cuda=False, hub=False)
    assert f"sft: attention {attn} ({why})" in proc.stdout
    assert '"strategy":"fsdp"' in proc.stdout and '"precision":"bf16"' in proc.stdout
    assert '"param_dtype":"bf16"' in proc.stdout
    assert '"packing":true' in proc.stdout and f'"attn_implementation":"{attn}"' in proc.stdout
    assert "generate: vLLM bf16, 512 prompts x 512 tokens" in proc.stdout
    assert "timeouts: generate 150 s, sft 240 s, reload 150 s" in proc.stdout
    assert "ray-distill environment ready" not in proc.stdout  # install.sh did not run
