"""GPU check, for a machine with one CUDA GPU (not part of CI): CUDA vLLM generation, bf16 FSDP SFT with
packing and flash attention, export + reload of the student, with tokens/s, MFU and peak memory.

    scripts/gpu_check.sh                         # the smollm2-135m preset; about 5 minutes on one H100/H200
    scripts/gpu_check.sh --model org/name --peak-tflops 989
    scripts/gpu_check.sh --dry-run               # print the plan and the training config, run nothing

Stages (each prints one line):

1. ``generate``: vLLM (bf16, CUDA) samples ``--prompts`` completions of ``--max-tokens`` tokens
   (``ignore_eos``), in a subprocess; tokens/s, MFU (2 x params FLOPs per token) and the device memory in
   use once the engine is up (weights + KV cache reserve).
2. ``sft``: ``train_sft`` on one Ray Train GPU worker, ``strategy: fsdp``, ``precision: bf16``, packing,
   ``attn_implementation: flash_attention_2`` (sdpa, said so, when flash-attn is not installed); non-pad
   tokens/s, MFU (6 x params FLOPs per token) and rank 0's peak device memory.
3. ``reload``: the exported student (``save_pretrained``) served again by vLLM in a subprocess: it loads
   and generates.

MFU needs the GPU's dense bf16 peak: known for a few GPUs by name, else ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """Dense bf16 peak of the GPU named ``device_name`` (e.g. "NVIDIA H200"), or ``override``."""
    if override:
        return override
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "L40S" before "L4"
        if key in device_name.upper():
            return PEAK_BF16_TFLOPS[key]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (``peak`` in TFLOP/s); None without a peak."""
    return tokens_per_s * flops_per_token / (peak * 1e12) if peak else None


def attention() -> tuple[str, str]:
    """The attention kernel of the SFT stage and a note saying why."""
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", "flash-attn installed"
    return "sdpa", "flash-attn is not installed: falling back to sdpa (packed rows then use a block mask)"


def train_config(args: argparse.Namespace, attn: str, use_gpu: bool):
    from ray_distill.config import TrainConfig

    return TrainConfig(num_workers=1, use_gpu=use_gpu, cpus_per_worker=1, epochs=1, batch_size=args.batch_size,
                       max_seq_len=args.max_seq_len, packing=True, strategy="fsdp", precision="bf16",
                       attn_implementation=attn, lr=1e-5, max_failures=0)


def corpus(n: int) -> list[dict]:
    from ray_distill.columns import MESSAGES, QUESTION
    from ray_distill.synthetic.tasks import make_questions
    from ray_distill.synthetic.teachers import write_solution

    qs = make_questions("arith", n, 2, 8, seed=0)
    return [{MESSAGES: [{"role": "user", "content": q[QUESTION]},
                        {"role": "assistant", "content": write_solution("verbose", q[QUESTION], 0)}]} for q in qs]


def num_params(model_dir: str) -> int:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


def generate(model: str, prompts: int, max_tokens: int, eager: bool) -> dict:
    """vLLM on CUDA (run in its own process by :func:`run_stage`)."""
    import torch
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="bfloat16", max_model_len=max_tokens + 128, gpu_memory_utilization=0.4, seed=0,
              enforce_eager=eager)
    free, total = torch.cuda.mem_get_info()
    conv = [[{"role": "user", "content": f"What is {i} + {2 * i}? Explain step by step."}] for i in range(prompts)]
    params = SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=0)
    t0 = time.perf_counter()
    outs = llm.chat(conv, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall, "device_used_mb": (total - free) / 2**20,
            "sample": outs[0].outputs[0].text[:80]}


def run_stage(stage: str, **kwargs) -> dict:
    """One stage in a fresh Python process (vLLM owns the GPU memory it reserves until its process ends)."""
    code = (f"import json; from benchmarks.gpu_check import {stage}; "
            f"print('GPU_CHECK ' + json.dumps({stage}(**json.loads({json.dumps(json.dumps(kwargs))}))))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("GPU_CHECK ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("GPU_CHECK "))


def fmt(value: float | None, spec: str = ".1%") -> str:
    return "n/a (pass --peak-tflops)" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="student to generate with and train (default: the smollm2-135m preset)")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--sft-rows", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: by its name)")
    ap.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs (faster start, slower decode)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the training config; run nothing")
    args = ap.parse_args(argv)

    attn, why = attention()
    if args.dry_run:
        cfg = train_config(args, attn, use_gpu=True)
        print(f"model: {args.model or 'preset smollm2-135m'}")
        print(f"generate: vLLM bf16, {args.prompts} prompts x {args.max_tokens} tokens")
        print(f"sft: attention {attn} ({why}); train config {cfg.model_dump_json()}")
        print("reload: vLLM serves the exported student")
        return 0

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (use --dry-run to see the plan)")
    work = tempfile.mkdtemp(prefix="rd-gpu-check-")
    if args.model is None:
        from ray_distill.presets import build_preset

        args.model = build_preset("smollm2-135m", os.path.join(work, "storage"))
    device = torch.cuda.get_device_name(0)
    peak = peak_tflops(device, args.peak_tflops)
    params = num_params(args.model)
    print(f"device {device}, bf16 peak {peak} TFLOP/s, torch {torch.__version__}, model {args.model} "
          f"({params / 1e6:.0f}M params)")

    gen = run_stage("generate", model=args.model, prompts=args.prompts, max_tokens=args.max_tokens, eager=args.eager)
    print(f"generate: {gen['tokens']} tokens in {gen['wall_s']:.1f}s, {gen['tokens_per_s']:.0f} tokens/s, "
          f"MFU {fmt(mfu(gen['tokens_per_s'], 2 * params, peak))}, device memory in use {gen['device_used_mb']:.0f} MB")

    import ray

    from ray_distill.training import train_sft

    print(f"sft: attention {attn} ({why})")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    cfg = train_config(args, attn, use_gpu=True)
    student = os.path.join(work, "student")
    m = train_sft(corpus(args.sft_rows), args.model, student, cfg, storage_path=os.path.join(work, "ray"),
                  run_name="gpu-check", log_model=False).metrics
    ray.shutdown()
    print(f"sft: {m['steps']} steps, loss {m['initial_loss']:.3f} -> {m['train_loss']:.3f}, "
          f"{m['tokens_per_s']:.0f} tokens/s, MFU {fmt(mfu(m['tokens_per_s'], 6 * params, peak))}, "
          f"peak device memory {m.get('peak_device_mb', float('nan')):.0f} MB, non-pad {m['non_pad_fraction']:.3f}")

    again = run_stage("generate", model=student, prompts=8, max_tokens=32, eager=True)
    print(f"reload: the exported student generates ({again['tokens']} tokens): {again['sample']!r}")
    print("gpu check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
