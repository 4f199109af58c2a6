"""GPU check, for a machine with one CUDA GPU (not part of CI): CUDA vLLM generation, bf16 FSDP SFT with
packing under NCCL with the fastest working attention, export + reload of the student in vLLM; one table
with tokens/s, MFU, peak memory and the memory planner's prediction, printed and written to ``--out``.

    scripts/gpu_check.sh                         # install (EXTRA=gpu scripts/install.sh), then this; <= 9 min
    scripts/gpu_check.sh --no-install --model org/name --peak-tflops 989
    scripts/gpu_check.sh --dry-run               # the plan and the training config: no install, no GPU

Stages, each in its own process under its own timeout (``STAGE_TIMEOUT_S``: a hung stage cannot eat the
GPU lease; a failed or timed-out stage is a row of the table and the next stage still runs):

1. ``generate``: vLLM (bf16, CUDA) samples ``--prompts`` completions of ``--max-tokens`` tokens
   (``ignore_eos``); tokens/s, MFU (2 x params FLOPs per token) and the device memory in use once the engine
   is up (weights + KV cache reserve).
2. ``sft``: ``train_sft`` on one Ray Train GPU worker (NCCL), ``strategy: fsdp``, ``precision: bf16``,
   ``param_dtype: bf16``, packing, the attention of :func:`attention` (flash-attn when it really runs here);
   non-pad tokens/s, MFU (6 x params FLOPs per token), rank 0's peak device memory beside the planner's
   prediction for the same recipe (``ray_distill.planning``), and the exported weights' dtype.
3. ``reload``: the exported student served again by vLLM, the way a job serves it: on a long-lived engine host
   (``ray_distill.generation.hosts``) that served the base model first and swaps the export in place; it loads
   and generates, and the device memory in use after the swap shows the first engine's memory was given back.

MFU needs the GPU's dense bf16 peak: known for a few GPUs by name, else ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}
STAGE_TIMEOUT_S = {"generate": 150, "sft": 240, "reload": 150}  # 9 minutes in all, vLLM/Ray start-ups included
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def attention(cuda: bool, hub: bool = True) -> tuple[str, str]:
    """The attention kernel of the SFT stage and why: ``flash_attention_2`` when the flash-attn package imports
    and (with ``cuda``) runs a tiny forward here, or, without it, when the gpu extra's ``kernels`` package
    fetches and runs the hub's prebuilt flash-attn2 kernel (``hub``; transformers then uses that kernel for
    ``flash_attention_2``); else ``sdpa``, saying why."""
    why = []
    try:
        import flash_attn

        if cuda:
            _tiny_flash(flash_attn.flash_attn_func)
        return "flash_attention_2", f"flash-attn {flash_attn.__version__}" + (" ran a kernel" if cuda else " imports")
    except Exception as err:  # noqa: BLE001 - any failure means: not usable here, said so
        why.append(f"flash-attn: {type(err).__name__}: {str(err)[:80]}")
    if cuda and hub:
        try:
            from kernels import get_kernel

            _tiny_flash(get_kernel("kernels-community/flash-attn2").flash_attn_func)
            return "flash_attention_2", "hub kernel kernels-community/flash-attn2 ran a kernel (no flash-attn)"
        except Exception as err:  # noqa: BLE001
            why.append(f"hub kernel: {type(err).__name__}: {str(err)[:80]}")
    return "sdpa", "; ".join(why)


def _tiny_flash(flash_attn_func) -> None:
    import torch

    q = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    out = flash_attn_func(q, q, q, causal=True)
    out = out[0] if isinstance(out, tuple) else out
    torch.cuda.synchronize()
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")


def train_config(args: argparse.Namespace, attn: str, use_gpu: bool):
    from ray_distill.config import TrainConfig

    return TrainConfig(num_workers=1, use_gpu=use_gpu, cpus_per_worker=1, epochs=1, batch_size=args.batch_size,
                       max_seq_len=args.max_seq_len, packing=True, strategy="fsdp", precision="bf16",
                       param_dtype="bf16", attn_implementation=attn, lr=1e-5, max_failures=0)


def planned_peak_mb(model: str, cfg) -> float | None:
    """The memory planner's per-GPU training bytes for ``cfg`` on ``model`` (MB), None when the planner is not
    importable here."""
    try:
        from ray_distill.planning.memory import train_memory
        from ray_distill.planning.plan import train_knobs
        from ray_distill.planning.shapes import model_shape
    except ImportError:
        return None
    return sum(train_memory(model_shape(model), train_knobs(cfg)).values()) / 2**20


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
            "sample": outs[0].outputs[0].text[:60]}


def sft(model: str, rows: int, batch_size: int, max_seq_len: int, attn: str, work: str) -> dict:
    """bf16 FSDP SFT with packing on one Ray Train GPU worker (NCCL), then the export's weight dtypes."""
    import ray

    from ray_distill.training import train_sft

    cfg = train_config(argparse.Namespace(batch_size=batch_size, max_seq_len=max_seq_len), attn, use_gpu=True)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        result = train_sft(corpus(rows), model, os.path.join(work, "student"), cfg,
                           storage_path=os.path.join(work, "ray"), run_name="gpu-check", log_model=False)
    finally:
        ray.shutdown()
    return {**{k: v for k, v in result.metrics.items() if isinstance(v, int | float)}, "model_path": result.model_path,
            "export_dtypes": sorted(safetensors_dtypes(result.model_path))}


def host_swap(base: str, export: str, max_tokens: int) -> dict:
    """The base model, then the export, sampled on one engine host inside ``keep_engines`` (one GPU): seconds per
    model (the export's is the swap), device memory in use after each (``nvidia-smi``), the export's first text."""
    import ray

    from ray_distill.config import StudentConfig
    from ray_distill.evaluation.evaluate import sample_student
    from ray_distill.generation.hosts import keep_engines

    questions = [{"question_id": f"q{i}", "question": f"What is {i} + {2 * i}?", "answer": str(3 * i),
                  "domain": "arith", "family": "arith", "difficulty": 1} for i in range(8)]
    student = StudentConfig(serving={"resources": {"num_gpus": 1}, "max_model_len": max_tokens + 128})
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    out: dict = {}
    try:
        with keep_engines():
            for name, model in (("base", base), ("export", export)):
                t0 = time.perf_counter()
                df = sample_student(questions, model, 1, 0.0, max_tokens, student=student)
                out[f"{name}_s"] = time.perf_counter() - t0
                out[f"{name}_used_mb"] = _device_used_mb()
                out["tokens"], out["sample"] = int(df["num_tokens"].sum()), df["completion"].iloc[0][:60]
    finally:
        ray.shutdown()
    return out


def _device_used_mb() -> float:
    """GPU 0's memory in use, every process's (``nvidia-smi``): an engine host's memory lives in its own process."""
    used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                          capture_output=True, text=True, check=True).stdout
    return float(used.strip().splitlines()[0])


def safetensors_dtypes(folder: str) -> set[str]:
    out = set()
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with open(os.path.join(folder, name), "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            out |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return out


def run_stage(stage: str, timeout_s: float, **kwargs) -> dict:
    """One stage in a fresh Python process (vLLM owns the GPU memory it reserves until its process ends),
    killed with its whole process group after ``timeout_s``; ``{"error": ...}`` when it fails."""
    code = (f"import json; from benchmarks.gpu_check import {stage}; "
            f"print('GPU_CHECK ' + json.dumps({stage}(**json.loads({json.dumps(json.dumps(kwargs))}))))")
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": path}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in out.splitlines() if line.startswith("GPU_CHECK ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(f"--- {stage} failed (exit {proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}\n")
        last = (err.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:160]}"}
    return json.loads(lines[-1].removeprefix("GPU_CHECK "))


def fmt(value: float | None, spec: str = ".1%") -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[tuple[str, str, str]]) -> str:
    """A Markdown table of (check, result, figures)."""
    lines = ["| check | result | figures |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n"


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
    ap.add_argument("--out", default=os.path.join(ROOT, "outputs", "gpu_check.md"), help="where the table goes")
    ap.add_argument("--no-install", action="store_true", help="(scripts/gpu_check.sh: skip the install)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the training config; run nothing")
    args = ap.parse_args(argv)

    if args.dry_run:
        attn, why = attention(cuda=False, hub=False)
        cfg = train_config(args, attn, use_gpu=True)
        print(f"model: {args.model or 'preset smollm2-135m'}")
        print(f"generate: vLLM bf16, {args.prompts} prompts x {args.max_tokens} tokens")
        print(f"sft: attention {attn} ({why}); train config {cfg.model_dump_json()}")
        print("reload: an engine host serves the base model, then the exported student swapped in")
        print("timeouts: " + ", ".join(f"{k} {v} s" for k, v in STAGE_TIMEOUT_S.items()) + f"; table -> {args.out}")
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
    attn, why = attention(cuda=True)
    rows = [("device", device, f"bf16 peak {fmt(peak, '.0f')} TFLOP/s, torch {torch.__version__}, "
             f"model {os.path.basename(args.model.rstrip('/'))} ({params / 1e6:.0f}M params)"),
            ("attention", attn, why)]

    gen = run_stage("generate", STAGE_TIMEOUT_S["generate"], model=args.model, prompts=args.prompts,
                    max_tokens=args.max_tokens, eager=args.eager)
    rows.append(("vLLM generate", "FAILED: " + gen["error"], "") if "error" in gen else
                ("vLLM generate", "ok", f"{gen['tokens']} tokens in {gen['wall_s']:.1f} s, {gen['tokens_per_s']:.0f} "
                 f"tokens/s, MFU {fmt(mfu(gen['tokens_per_s'], 2 * params, peak))}, device memory in use "
                 f"{gen['device_used_mb']:.0f} MB"))

    cfg = train_config(args, attn, use_gpu=True)
    planned = planned_peak_mb(args.model, cfg)
    m = run_stage("sft", STAGE_TIMEOUT_S["sft"], model=args.model, rows=args.sft_rows, batch_size=args.batch_size,
                  max_seq_len=args.max_seq_len, attn=attn, work=work)
    if "error" in m:
        rows.append(("bf16 FSDP SFT (NCCL, packing)", "FAILED: " + m["error"], f"plan: {fmt(planned, '.0f')} MB"))
    else:
        rows.append(("bf16 FSDP SFT (NCCL, packing)", "ok",
                     f"{m['steps']:.0f} steps, loss {m['initial_loss']:.3f} -> {m['train_loss']:.3f}, "
                     f"{m['tokens_per_s']:.0f} tokens/s, MFU {fmt(mfu(m['tokens_per_s'], 6 * params, peak))}, "
                     f"non-pad {m['non_pad_fraction']:.3f}"))
        rows.append(("SFT peak memory vs plan", "measured / planned",
                     f"{m.get('peak_device_mb', float('nan')):.0f} MB / "
                     + ("plan: n/a (ray_distill.planning not importable)" if planned is None else f"{planned:.0f} MB")))
        rows.append(("export", ",".join(m["export_dtypes"]), m["model_path"]))
        again = run_stage("host_swap", STAGE_TIMEOUT_S["reload"], base=args.model, export=m["model_path"], max_tokens=32)
        label = "vLLM reload of the export (engine host: base, then export swapped in)"
        rows.append((label, "FAILED: " + again["error"], "") if "error" in again else
                    (label, "ok", f"base {again['base_s']:.1f} s, swap + export {again['export_s']:.1f} s; device "
                     f"memory in use {again['base_used_mb']:.0f} -> {again['export_used_mb']:.0f} MB; "
                     f"{again['tokens']} tokens: {again['sample']!r}"))
    text = table(rows)
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"table written to {args.out}")
    return 1 if any(r[1].startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
