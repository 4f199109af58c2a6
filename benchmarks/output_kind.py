"""What vLLM's default output kind costs an engine stepped by hand (as ``generation.continuous`` does):
``RequestOutputKind.CUMULATIVE`` (the ``SamplingParams`` default) vs ``FINAL_ONLY`` (what ``LLM.generate``
sets, and what the engines here now set), same requests, alternated in one process.

    python benchmarks/output_kind.py                   # 256 questions x 4 samples, long-tailed lengths

With CUMULATIVE, every ``step()`` returns a ``RequestOutput`` of every running request with all its tokens
so far; with FINAL_ONLY only the finished ones. Tokens/s = completion tokens / seconds of stepping. The tiny
random student rarely samples EOS, so with ``max_tokens`` 480 the lengths are long-tailed (as in
``benchmarks/generation.py --long-tail``).

Measured on a shared 2-core CPU machine (1 thread, 3 alternated rounds): CUMULATIVE 6434 / 6473 / 6685
tokens/s, FINAL_ONLY 7237 / 7165 / 7039 (ratio 0.89 / 0.90 / 0.95), the same 113,548 tokens both ways.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=480)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ.update(ENV)
    import torch
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from ray_distill.generation.actor import sample_seed
    from ray_distill.generation.engines import question_messages, render_prompt, vllm_engine_kwargs
    from ray_distill.synthetic.student import save_random_student
    from ray_distill.synthetic.tasks import make_questions

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-output-kind-") as work:
        model = save_random_student("tiny", os.path.join(work, "tiny"))
        llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, **vllm_engine_kwargs())
        tok = llm.get_tokenizer()
        qs = make_questions("arith", args.questions, 1, 4, seed=3)
        reqs = [(render_prompt(tok, question_messages(q["question"])).token_ids, sample_seed(0, q["question_id"], i))
                for q in qs for i in range(args.n)]
        engine = llm.llm_engine

        def run(kind: RequestOutputKind) -> tuple[float, int]:
            for i, (ids, seed) in enumerate(reqs):
                engine.add_request(f"{kind.name}-{i}", {"prompt_token_ids": ids},
                                   SamplingParams(n=1, seed=seed, temperature=1.0, max_tokens=args.max_tokens,
                                                  output_kind=kind))
            start, tokens = time.perf_counter(), 0
            while engine.has_unfinished_requests():
                tokens += sum(len(o.outputs[0].token_ids) for o in engine.step() if o.finished)
            return tokens / (time.perf_counter() - start), tokens

        run(RequestOutputKind.FINAL_ONLY)  # warm-up
        rates: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.FINAL_ONLY):
                tps, tokens = run(kind)
                rates.setdefault(kind.name, []).append(tps)
                print(f"round {r} {kind.name:<11} {tps:8.0f} tokens/s ({tokens} tokens)", flush=True)
        ratios = [c / f for c, f in zip(rates["CUMULATIVE"], rates["FINAL_ONLY"])]
        print("CUMULATIVE / FINAL_ONLY per round: " + ", ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    main()
