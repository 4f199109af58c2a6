"""Diversity-selection throughput: rapidfuzz token Levenshtein vs a pure-Python DP.

    python benchmarks/selection.py                     # 16 trajectories/question, ~2k and ~16k tokens
    python benchmarks/selection.py --lengths 2000 --questions 4 --dp-pairs 2

Per question, ``farthest_point`` picks P of M trajectories; it needs about M*(P-1) distances. The
rapidfuzz path is timed end to end over ``--questions`` questions. The DP is far too slow to run a
whole question at 16k tokens (O(n*m) Python steps per pair), so it is timed on ``--dp-pairs`` pairs
and extrapolated: seconds/question = seconds/pair * distances/question (printed as "extrapolated").
Synthetic trajectories share a base solution (Zipf-distributed ids over a 32k vocabulary) with ~15% of
tokens substituted/inserted/deleted, like samples of one teacher on one question. Timings on a shared
machine are noisy: compare the two columns of one run.
"""

from __future__ import annotations

import argparse
import random
import time
from itertools import accumulate

from rapidfuzz.distance import Levenshtein

from ray_distill.curation.selection import farthest_point


def dp_levenshtein(a: list[int], b: list[int]) -> int:
    """Classic two-row dynamic programme."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


VOCAB = 32000
# Zipf-distributed token ids, like text under a real BPE vocabulary (a few thousand distinct ids).
_CUM_WEIGHTS = list(accumulate(1.0 / (rank + 10) for rank in range(VOCAB)))


def _tokens(rng: random.Random, k: int) -> list[int]:
    return rng.choices(range(VOCAB), cum_weights=_CUM_WEIGHTS, k=k)


def make_question(rng: random.Random, m: int, length: int, noise: float = 0.15) -> list[list[int]]:
    base = _tokens(rng, length)
    return [_mutate(rng, base, noise) for _ in range(m)]


def _mutate(rng: random.Random, base: list[int], noise: float) -> list[int]:
    fresh = iter(_tokens(rng, len(base)))
    out = []
    for tok in base:
        r = rng.random()
        if r < noise / 3:
            out.append(next(fresh))  # substitute
        elif r < 2 * noise / 3:
            out.extend([tok, next(fresh)])  # insert
        elif r >= noise:
            out.append(tok)  # keep (else delete)
    return out


def distances_per_question(m: int, p: int) -> int:
    return sum(m - k for k in range(1, min(p, m)))


def bench_length(length: int, args: argparse.Namespace) -> None:
    rng = random.Random(length)
    questions = [make_question(rng, args.m, length) for _ in range(args.questions)]
    mean_len = sum(map(len, questions[0])) / args.m
    start = time.perf_counter()
    for seed, seqs in enumerate(questions):
        farthest_point(seqs, args.p, seed)
    rf_q = (time.perf_counter() - start) / args.questions
    per_q = distances_per_question(args.m, args.p)
    seqs = questions[0]
    start = time.perf_counter()
    for k in range(args.dp_pairs):
        dp = dp_levenshtein(seqs[0], seqs[k + 1])
        assert dp == Levenshtein.distance(seqs[0], seqs[k + 1]), "DP and rapidfuzz disagree"
    dp_pair = (time.perf_counter() - start) / args.dp_pairs
    dp_q = dp_pair * per_q
    print(f"~{mean_len:,.0f} tokens, M={args.m}, P={args.p}, {per_q} distances/question")
    print(f"  rapidfuzz : {1 / rf_q:10.2f} questions/s  ({rf_q * 1e3:.2f} ms/question, {args.questions} questions)")
    print(f"  python DP : {1 / dp_q:10.5f} questions/s  ({dp_pair:.2f} s/pair on {args.dp_pairs} pair(s),"
          f" extrapolated x{per_q})")
    print(f"  speed-up  : {dp_q / rf_q:10.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 16000])
    parser.add_argument("--m", type=int, default=16, help="trajectories per question")
    parser.add_argument("--p", type=int, default=4, help="trajectories kept per question")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--dp-pairs", type=int, default=1)
    args = parser.parse_args()
    for length in args.lengths:
        bench_length(length, args)


if __name__ == "__main__":
    main()
