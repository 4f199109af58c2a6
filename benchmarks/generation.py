"""Teacher generation throughput: bare ``vllm.LLM.generate`` vs the Ray Data pipeline with the store.

    python benchmarks/generation.py                         # 2048 questions x n=4, tiny student, 64 tokens
    python benchmarks/generation.py --questions 512 --batch-sizes 64 256
    python benchmarks/generation.py --long-tail --questions 512 --batch-sizes 64 --concurrent-batches 0 8 32

Both sides get the same requests: one per (question, sample) with the sample's own seed, the prompt
rendered by the model's chat template, on the same tiny random student (``save_random_student("tiny")``),
with the same CPU threads and vLLM settings (in-process engine core, 1 GiB KV cache, no chunked prefill
and no prefix caching: ``vllm_engine_kwargs``).

Throughput is marginal: every side runs the first half of the questions, then all of them, and
tokens/s = (tokens of all - tokens of the half) / (seconds of all - seconds of the half). Start-up
(engine, actor, Ray Data) and the drain at the end (the last requests decoding alone) occur once in
each run and cancel; what remains is the rate while requests keep coming. (A window over the store's
part files would not do: with several batches in flight, a part's tokens were decoded long before it
was written.)

(a) bare: ``vllm.LLM`` in a child process, engine start timed on its own, a warm-up batch, then one
    ``generate`` over the half and one over all the requests: everything at once, the ideal
    continuous batching.
(b) pipeline: ``GenerationStore.get_or_generate`` into an empty store with a ``vllm`` teacher on a local
    Ray cluster (one engine actor, ``--cpus`` CPUs), for every batch size x ``engine.max_concurrent_batches``
    (``--concurrent-batches``; 0 is the synchronous path, one ``LLM.generate`` wave per batch, else that
    many batches in flight in one continuously batched engine). Fixed = seconds of all - tokens / rate.
Ratio = pipeline tokens/s / bare tokens/s (goal >= 0.95), each the median of its runs: the bare run
comes first and after every round of pipeline runs (``--rounds``), since on a shared machine the load
drifts between runs (the bare figures show by how much); compare the columns of one run. Also printed:
each round's rate over the mean of the two bare runs around it, and the median of those (with one
configuration per run, the steadiest figure: each ratio's two sides ran minutes apart).

``--long-tail``: output lengths with a long tail. The random student rarely samples its EOS token (about
1 in 100 at temperature 1), so with ``max_tokens`` 480 a request stops after a geometric number of tokens
(median ~80) or at the cap: a wave of 64 requests lasts as long as its longest one, several times its
mean. The bare run prints the length percentiles.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import tempfile
import time

import numpy as np

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
    """Child process: engine start, warm-up, then a timed generate over the first half of the questions'
    requests and one over all of them."""
    os.environ.update(ENV, OMP_NUM_THREADS=str(args.cpus))
    import torch
    from vllm import LLM, SamplingParams

    from ray_distill.generation.engines import question_messages, render_prompt, vllm_engine_kwargs

    torch.set_num_threads(args.cpus)
    _, reqs = requests(args)
    start = time.perf_counter()
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=args.max_model_len,
              **vllm_engine_kwargs())
    engine_s = time.perf_counter() - start
    tok = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": render_prompt(tok, question_messages(q)).token_ids} for q, _ in reqs]
    params = [SamplingParams(n=1, seed=s, temperature=args.temperature, max_tokens=args.max_tokens) for _, s in reqs]
    llm.generate(prompts[: args.warmup], params[: args.warmup], use_tqdm=False)
    runs = []
    for size in (len(reqs) // 2 // args.n * args.n, len(reqs)):  # the first half of the questions, then all
        start = time.perf_counter()
        results = llm.generate(prompts[:size], params[:size], use_tqdm=False)
        lengths = [len(r.outputs[0].token_ids) for r in results]
        runs.append({"seconds": time.perf_counter() - start, "tokens": sum(lengths), "samples": len(results),
                     "lengths": lengths})
    out.put({"engine_s": engine_s, "half": runs[0], "all": runs[1]})


def pipeline(args, model: str, batch_size: int, concurrent: int, root: str, questions: list[dict]) -> dict:
    """One get_or_generate call into an empty store."""
    from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
    from ray_distill.generation.store import GenerationStore

    teacher = TeacherConfig(
        name="tiny", engine=EngineConfig(kind="vllm", model=model, dtype="float32", max_model_len=args.max_model_len,
                                         max_concurrent_batches=concurrent),
        sampling=SamplingConfig(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed),
        resources=ResourcesConfig(num_actors=1, num_cpus=args.cpus, batch_size=batch_size))
    store = GenerationStore(root, flush_rows=batch_size)
    start = time.perf_counter()
    _, counters = store.get_or_generate(questions, teacher)
    return {"seconds": time.perf_counter() - start, "tokens": counters["completion_tokens"],
            "samples": counters["generated"]}


def marginal(half: dict, whole: dict) -> float:
    """Tokens/s of the second half: start-up and the final drain, in both runs, cancel."""
    return (whole["tokens"] - half["tokens"]) / (whole["seconds"] - half["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=2048)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=None, help="default 64 (--long-tail: 480)")
    p.add_argument("--max-model-len", type=int, default=None, help="default 256 (--long-tail: 512, the model's limit)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=1, help="CPU threads of the engine (both sides)")
    p.add_argument("--warmup", type=int, default=32, help="requests of the bare warm-up batch")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--concurrent-batches", type=int, nargs="+", default=[0, 8],
                   help="engine.max_concurrent_batches values (0: synchronous waves)")
    p.add_argument("--long-tail", action="store_true", help="long-tailed output lengths (see the module doc)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of pipeline runs, each followed by a bare run")
    args = p.parse_args()
    args.max_tokens = args.max_tokens or (480 if args.long_tail else 64)
    args.max_model_len = args.max_model_len or (512 if args.long_tail else 256)

    from ray_distill.synthetic.student import save_random_student

    with tempfile.TemporaryDirectory(prefix="bench-generation-") as work:
        run(args, work, save_random_student("tiny", os.path.join(work, "tiny")))


def run(args, work: str, model: str) -> None:
    n_req = args.questions * args.n
    print(f"{args.questions} questions x n={args.n} = {n_req} requests{' (long tail)' if args.long_tail else ''}, "
          f"max_tokens={args.max_tokens}, temperature={args.temperature}, {args.cpus} CPU thread(s) per engine, "
          f"{args.rounds} round(s)")
    import ray

    os.environ.update(ENV)
    questions, _ = requests(args)
    bares = [run_bare(args, model)]
    results: dict[tuple[int, int], list[tuple[dict, dict]]] = {}
    for r in range(args.rounds):  # bare, pipelines, bare, pipelines, ..., bare: drift shows and averages out
        ray.init(num_cpus=args.cpus + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for bs in args.batch_sizes:
                for cb in args.concurrent_batches:
                    half, whole = (pipeline(args, model, bs, cb, os.path.join(work, f"store-{bs}-{cb}-{r}-{part}"), qs)
                                   for part, qs in (("half", questions[: len(questions) // 2]), ("all", questions)))
                    results.setdefault((bs, cb), []).append((half, whole))
                    print(f"(b) round {r}, batch_size {bs}, {cb} batches in flight: {marginal(half, whole):8.0f} "
                          "tokens/s", flush=True)
        finally:
            ray.shutdown()
        bares.append(run_bare(args, model))

    bare_tps = float(np.median(bares))
    print(f"(a) bare median {bare_tps:8.0f} tokens/s over {len(bares)} runs ({', '.join(f'{b:.0f}' for b in bares)})")
    for (bs, cb), runs in results.items():
        rates = [marginal(half, whole) for half, whole in runs]
        tps = float(np.median(rates))
        half, whole = runs[-1]
        path = "synchronous waves" if cb == 0 else f"continuous, {cb} batches in flight"
        bracketed = [rate / ((bares[r] + bares[r + 1]) / 2) for r, rate in enumerate(rates)]
        print(f"(b) pipeline, batch_size {bs:4d}, {path}: {whole['samples']} samples, {whole['tokens']} tokens in "
              f"{whole['seconds']:6.1f} s (half: {half['tokens']} in {half['seconds']:6.1f} s); median {tps:8.0f} "
              f"tokens/s over {len(rates)} rounds ({', '.join(f'{x:.0f}' for x in rates)}), "
              f"fixed {whole['seconds'] - whole['tokens'] / tps:6.1f} s | ratio b/a = {tps / bare_tps:.3f}; "
              f"per round vs its two bare runs {', '.join(f'{x:.2f}' for x in bracketed)}, "
              f"median {float(np.median(bracketed)):.3f}", flush=True)


def run_bare(args, model: str) -> float:
    """(a) in a spawned child process; prints its line and returns its tokens/s."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=bare, args=(args, model, q))
    child.start()
    while True:
        try:
            a = q.get(timeout=10)
            break
        except queue.Empty:
            if not child.is_alive():
                raise SystemExit(f"the bare vLLM process exited with code {child.exitcode}") from None
    child.join()
    half, whole = a["half"], a["all"]
    tps = marginal(half, whole)
    lengths = np.sort(whole["lengths"])
    pct = {q: int(lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))]) for q in (50, 90, 99)}
    print(f"(a) bare vllm.LLM.generate : engine start {a['engine_s']:6.1f} s | {whole['samples']} samples, "
          f"{whole['tokens']} tokens in {whole['seconds']:6.1f} s (half: {half['tokens']} in {half['seconds']:6.1f} s)"
          f" = {tps:8.0f} tokens/s | output lengths: mean {lengths.mean():.0f}, p50 {pct[50]}, p90 {pct[90]}, "
          f"p99 {pct[99]}, max {lengths[-1]}", flush=True)
    return tps


if __name__ == "__main__":
    main()
