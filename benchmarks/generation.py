"""Teacher generation throughput: bare ``vllm.LLM.generate`` vs the Ray Data pipeline with the store.

    python benchmarks/generation.py                         # 2048 questions x n=4, tiny student, 64 tokens
    python benchmarks/generation.py --questions 512 --batch-sizes 64 256

Both sides get the same requests: one per (question, sample) with the sample's own seed, the prompt
rendered by the model's chat template, on the same tiny random student (``save_random_student("tiny")``),
with the same CPU threads and vLLM settings (in-process engine core, 1 GiB KV cache).

(a) bare: ``vllm.LLM`` in a child process; engine start is timed on its own, a warm-up batch runs, then
    one ``generate`` call over every request is timed (steady state).
(b) pipeline: ``GenerationStore.get_or_generate`` with a ``vllm`` teacher on a local Ray cluster (one
    engine actor, ``--cpus`` CPUs). The store writes a part file per batch as results stream in; steady
    state = tokens of the parts in the second half of the run / the time between the middle part and
    the last (part mtimes): actor and engine start are long over, and so is any backlog of finished
    batches the driver was slow to write at first. The fixed cost is the rest: total time - tokens /
    steady rate (actor and engine start, Ray Data start-up).
Ratio = pipeline steady tokens/s / bare tokens/s (goal >= 0.95). The bare run is repeated after the
pipeline runs and the ratio uses the mean of both: on a shared machine the load drifts between runs
(the two bare figures show by how much); compare the columns of one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time

# the settings the engine actors get (``actor.VLLM_CPU_ENV_DEFAULTS``), for both sides
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
       "TOKENIZERS_PARALLELISM": "false"}


def requests(args) -> tuple[list[dict], list[tuple[str, int]]]:
    """The question rows and the (question text, seed) of every request, as the pipeline derives them."""
    from ray_distill.generation.actor import sample_seed
    from ray_distill.synthetic.tasks import make_questions

    questions = make_questions("arith", args.questions, 1, 4, seed=3)
    reqs = [(q["question"], sample_seed(args.seed, q["question_id"], i)) for q in questions for i in range(args.n)]
    return questions, reqs


def bare(args, model: str, out: mp.Queue) -> None:
    """Child process: engine start, warm-up, then one timed generate over all requests."""
    os.environ.update(ENV, OMP_NUM_THREADS=str(args.cpus))
    import torch
    from vllm import LLM, SamplingParams

    from ray_distill.generation.engines import question_messages, render_prompt

    torch.set_num_threads(args.cpus)
    _, reqs = requests(args)
    start = time.perf_counter()
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=args.max_model_len)
    engine_s = time.perf_counter() - start
    tok = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": render_prompt(tok, question_messages(q))} for q, _ in reqs]
    params = [SamplingParams(n=1, seed=s, temperature=args.temperature, max_tokens=args.max_tokens) for _, s in reqs]
    llm.generate(prompts[: args.warmup], params[: args.warmup], use_tqdm=False)
    start = time.perf_counter()
    results = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(r.outputs[0].token_ids) for r in results)
    out.put({"engine_s": engine_s, "seconds": seconds, "tokens": tokens, "samples": len(results)})


def pipeline(args, model: str, batch_size: int, root: str) -> dict:
    """One get_or_generate call into an empty store; steady state from the part files' mtimes."""
    import pyarrow.parquet as pq

    from ray_distill import columns as C
    from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
    from ray_distill.generation.store import GenerationStore

    questions, _ = requests(args)
    teacher = TeacherConfig(
        name="tiny", engine=EngineConfig(kind="vllm", model=model, dtype="float32", max_model_len=args.max_model_len),
        sampling=SamplingConfig(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed),
        resources=ResourcesConfig(num_actors=1, num_cpus=args.cpus, batch_size=batch_size))
    store = GenerationStore(root, flush_rows=batch_size)
    start = time.time()
    _, counters = store.get_or_generate(questions, teacher)
    total_s = time.time() - start
    parts = sorted((os.path.getmtime(p), pq.read_table(p, columns=[C.NUM_TOKENS]).column(0).to_numpy().sum())
                   for p in store.part_files("tiny"))
    if len(parts) < 14:  # the steady window needs several parts, or one burst of writes decides the figure
        raise SystemExit(f"batch_size {batch_size}: only {len(parts)} parts (need 14); use more --questions")
    mid = len(parts) // 2
    steady_tokens = sum(t for _, t in parts[mid + 1:])
    steady_s = parts[-1][0] - parts[mid][0]
    return {"batch_size": batch_size, "parts": len(parts) - mid - 1, "tokens": counters["completion_tokens"],
            "total_s": total_s, "steady_tokens": steady_tokens, "steady_s": steady_s,
            "samples": counters["generated"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=2048)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=1, help="CPU threads of the engine (both sides)")
    p.add_argument("--warmup", type=int, default=32, help="requests of the bare warm-up batch")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    args = p.parse_args()

    from ray_distill.synthetic.student import save_random_student

    with tempfile.TemporaryDirectory(prefix="bench-generation-") as work:
        run(args, work, save_random_student("tiny", os.path.join(work, "tiny")))


def run(args, work: str, model: str) -> None:
    n_req = args.questions * args.n
    print(f"{args.questions} questions x n={args.n} = {n_req} requests, max_tokens={args.max_tokens}, "
          f"temperature={args.temperature}, {args.cpus} CPU thread(s) per engine")

    first = run_bare(args, model)
    import ray

    os.environ.update(ENV)
    ray.init(num_cpus=args.cpus + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        results = {bs: pipeline(args, model, bs, os.path.join(work, f"store-{bs}")) for bs in args.batch_sizes}
    finally:
        ray.shutdown()
    second = run_bare(args, model)

    bare_tps = (first + second) / 2
    print(f"(a) bare mean {bare_tps:8.0f} tokens/s")
    for bs, b in results.items():
        tps = b["steady_tokens"] / b["steady_s"]
        print(f"(b) pipeline, batch_size {bs:4d}: fixed {b['total_s'] - b['tokens'] / tps:6.1f} s | "
              f"{b['samples']} samples, {b['tokens']} tokens in {b['total_s']:6.1f} s total; steady "
              f"{b['steady_tokens']} tokens in the last {b['parts']} parts, {b['steady_s']:6.1f} s = "
              f"{tps:8.0f} tokens/s | ratio b/a = {tps / bare_tps:.3f}")


def run_bare(args, model: str) -> float:
    """(a) in a spawned child process; prints its line and returns its steady tokens/s."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=bare, args=(args, model, q))
    child.start()
    a = q.get()
    child.join()
    tps = a["tokens"] / a["seconds"]
    print(f"(a) bare vllm.LLM.generate : engine start {a['engine_s']:6.1f} s | {a['samples']} samples, "
          f"{a['tokens']} tokens in {a['seconds']:6.1f} s = {tps:8.0f} tokens/s (steady)", flush=True)
    return tps


if __name__ == "__main__":
    main()
