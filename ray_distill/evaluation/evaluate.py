"""avg@k evaluation of a student served by vLLM, with confidence intervals, over several suites.

    scores = evaluate_suites("/ckpt/student", {"arith": arith_rows, "max": max_rows}, k=4,
                             temperature=0.7, max_tokens=128)
    scores["arith"]["avg_at_k"], scores["arith"]["ci_low"], scores["arith"]["ci_high"]

- :func:`sample_student`: k samples per question through the same Ray Data actor adapter as the
  teachers (``generation.actor.generate_dataset``), one pass and one engine start for all questions.
- :func:`grade_samples`: the one grader (``curation.graders.grade``) on every sample.
- :func:`avg_at_k`: pure; pass@1 averaged over k samples, pass@k, a 95% CI over questions.
- :func:`evaluate_suites`: all suites in one engine pass, then split by suite.
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
import ray.data

from ray_distill import columns as C
from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
from ray_distill.curation.graders import grade
from ray_distill.generation.actor import generate_dataset

logger = logging.getLogger(__name__)

SUITE = "suite"  # evaluation suite name, carried through generation
R_GENERATION_ERROR = "generation_error"
Z_95 = 1.959963984540054


def student_engine_config(model_path: str, resources: ResourcesConfig) -> EngineConfig:
    """The student as a vLLM 'teacher' (float32 on CPU actors, the checkpoint's dtype on GPUs)."""
    dtype = "float32" if resources.num_gpus == 0 else "auto"
    return EngineConfig(kind="vllm", model=model_path, dtype=dtype, enforce_eager=True)


def sample_student(
    questions: list[dict],
    model_path: str,
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int = 0,
    resources: ResourcesConfig | None = None,
) -> pd.DataFrame:
    """``k`` samples per question (``GENERATION_COLUMNS`` + any extra question columns)."""
    if not questions:
        raise ValueError("sample_student needs at least one question")
    resources = resources or ResourcesConfig()
    student = TeacherConfig(
        name="student",
        engine=student_engine_config(model_path, resources),
        sampling=SamplingConfig(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed),
        resources=resources,
    )
    start = time.perf_counter()
    df = generate_dataset(ray.data.from_pandas(pd.DataFrame(questions)), student).to_pandas()
    if len(df) != len(questions) * k:
        raise RuntimeError(f"student sampling returned {len(df)} rows for {len(questions)} questions x k={k}")
    seconds = time.perf_counter() - start
    logger.info("sampled %d x %d from %s in %.1f s (%d tokens, engine start included)",
                len(questions), k, model_path, seconds, int(df[C.NUM_TOKENS].sum()))
    return df


def grade_samples(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with CORRECT / FORMAT_OK / PREDICTED / REASON from ``graders.grade``."""
    verdicts = [grade(str(text), str(ref)) for text, ref in zip(df[C.COMPLETION], df[C.ANSWER])]
    out = df.copy()
    out[C.CORRECT] = [v.correct for v in verdicts]
    out[C.FORMAT_OK] = [v.format_ok for v in verdicts]
    out[C.PREDICTED] = [v.predicted for v in verdicts]
    out[C.REASON] = [R_GENERATION_ERROR if err else v.reason for v, err in zip(verdicts, df[C.ERROR])]
    return out


def avg_at_k(df: pd.DataFrame) -> dict:
    """avg@k (pass@1 averaged over the k samples of each question, then over questions), pass@k,
    and a 95% normal-approximation CI of the mean of per-question pass rates (zero width for a
    single question or identical rates). Every question must have the same number of samples."""
    if df.empty:
        raise ValueError("avg_at_k needs at least one graded sample")
    per_q = df.groupby(C.QUESTION_ID)[C.CORRECT].agg(["mean", "max", "size"])
    sizes = sorted(per_q["size"].unique())
    if len(sizes) != 1:
        raise ValueError(f"questions have unequal sample counts {sizes}: rows were lost or duplicated")
    rates = per_q["mean"].astype(float)
    n_q = len(rates)
    mean = float(rates.mean())
    half = Z_95 * float(rates.std(ddof=1)) / math.sqrt(n_q) if n_q > 1 else 0.0
    return {
        "avg_at_k": mean,
        "pass_at_k": float(per_q["max"].astype(float).mean()),
        "ci_low": max(0.0, mean - half),
        "ci_high": min(1.0, mean + half),
        "n_questions": n_q,
        "k": int(sizes[0]),
        "mean_length": float(df[C.NUM_TOKENS].mean()),
    }


def evaluate_suites(
    model_path: str,
    suites: dict[str, list[dict]],
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int = 0,
    resources: ResourcesConfig | None = None,
) -> dict[str, dict]:
    """``{suite: avg_at_k(...)}`` for every suite, sampled in one engine pass."""
    empty = [name for name, rows in suites.items() if not rows]
    if empty:
        raise ValueError(f"evaluation suites without questions: {empty}")
    rows = [{**q, SUITE: name} for name, qs in suites.items() for q in qs]
    graded = grade_samples(sample_student(rows, model_path, k, temperature, max_tokens, seed, resources))
    scores = {name: avg_at_k(graded[graded[SUITE] == name]) for name in suites}
    for name, s in scores.items():
        logger.info("eval %s: avg@%d %.3f [%.3f, %.3f] over %d questions", name, s["k"], s["avg_at_k"],
                    s["ci_low"], s["ci_high"], s["n_questions"])
    return scores
