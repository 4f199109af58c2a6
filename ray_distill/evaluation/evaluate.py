"""Evaluation of a student served by vLLM over several suites: avg@k, pass@1, pass@k (unbiased
estimator), a 95% CI, mean response length.

    scores = evaluate_suites("/ckpt/student", {"arith": arith_rows, "max": max_rows}, k=4,
                             temperature=0.7, max_tokens=128)
    scores["arith"]["avg_at_k"], scores["arith"]["pass_at_k"], scores["arith"]["mean_length"]

- :func:`sample_student`: k samples per question through the same Ray Data actor adapter as the
  teachers (``generation.actor.generate_dataset``), one pass and one engine start for all questions.
- :func:`grade_samples`: the one grading entry point (``curation.graders.grade_row``: math by
  reference answer, code by running the question's ``tests`` in the sandbox, in parallel threads) on
  every sample; a failed generation (non-empty ``error``) is graded incorrect, never dropped.
- :func:`avg_at_k`: pure; avg@k, pass@1 and pass@k (Chen et al. 2021), a 95% CI over questions.
- :func:`evaluate_suites`: all suites in one engine pass, then split by suite.

Suites are question rows from any source (``SuiteConfig``: a jsonl/parquet file on any fsspec URL or
a synthetic family); extra columns (e.g. a code question's tests) travel with every sample to the
grader.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd
import ray.data

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, StudentConfig, TeacherConfig
from ray_distill.curation.graders import Verdict, grade_rows, sandbox_from_config
from ray_distill.generation.actor import generate_dataset
from ray_distill.generation.store import GenerationStore, model_digest

logger = logging.getLogger(__name__)

SUITE = "suite"  # evaluation suite name, carried through generation
R_GENERATION_ERROR = "generation_error"
Z_95 = 1.959963984540054


def student_engine_config(model: str, student: StudentConfig) -> EngineConfig:
    """The student ``model`` (a model reference: path, URL or ``org/name[@revision]``) as a vLLM 'teacher'
    with the student's serving settings and chat template (float32 on CPU actors, the checkpoint's dtype on
    GPUs)."""
    from ray_distill.models import split_ref

    serving = student.serving
    gpu = serving.resources.num_gpus > 0
    name, revision = split_ref(model)
    return EngineConfig(kind="vllm", model=name, revision=revision or "main", dtype="auto" if gpu else "float32",
                        enforce_eager=not gpu, tensor_parallel_size=serving.tensor_parallel_size,
                        max_model_len=serving.max_model_len, chat_template=student.chat_template,
                        chat_template_kwargs=student.chat_template_kwargs)


def sample_student(
    questions: list[dict],
    model_path: str,
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int = 0,
    student: StudentConfig | None = None,
    store: GenerationStore | None = None,
) -> pd.DataFrame:
    """``k`` samples per question (``GENERATION_COLUMNS`` + any extra question columns); ``student``: the
    job's student settings (serving resources, chat template; None: the defaults). With a ``store`` the
    samples are drawn once and read back afterwards (keyed by the checkpoint's content digest), so a rerun
    or a resumed job does not resample the student; failed requests are retried on the next call."""
    if not questions:
        raise ValueError("sample_student needs at least one question")
    student = student or StudentConfig()
    engine = TeacherConfig(
        name="student",
        engine=student_engine_config(model_path, student),
        sampling=SamplingConfig(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed),
        resources=student.serving.resources,
    )
    start = time.perf_counter()
    if store is None:
        df = generate_dataset(ray.data.from_pandas(pd.DataFrame(questions)), engine).to_pandas()
    else:  # one row per (question, sample index) in question order; extra columns (suite, ...) put back
        # a store row is one request: batch_size questions x k samples per engine wave, as without a store
        res = engine.resources
        engine = engine.model_copy(update={"resources": res.model_copy(update={"batch_size": res.batch_size * k})})
        df, _ = store.get_or_generate(questions, engine, k, digest=model_digest(model_path))
        qdf = pd.DataFrame(questions)
        extra = qdf.drop(columns=[c for c in qdf.columns if c in C.GENERATION_COLUMNS])
        if len(extra.columns):
            df = pd.concat([df, extra.loc[extra.index.repeat(k)].reset_index(drop=True)], axis=1)
    if len(df) != len(questions) * k:
        raise RuntimeError(f"student sampling returned {len(df)} rows for {len(questions)} questions x k={k}")
    seconds = time.perf_counter() - start
    logger.info("sampled %d x %d from %s in %.1f s (%d tokens, engine start included)",
                len(questions), k, model_path, seconds, int(df[C.NUM_TOKENS].sum()))
    return df


def grade_samples(df: pd.DataFrame, code: dict | None = None) -> pd.DataFrame:
    """A copy of ``df`` with CORRECT / FORMAT_OK / PREDICTED / REASON from ``graders.grade_rows``;
    code rows run in a sandbox with the limits of ``code`` (a ``CodeGraderConfig`` dump, the job's
    ``format.code``; None: the defaults).

    A row whose generation failed (non-empty ``error``) is incorrect with reason
    ``generation_error``: it stays in the table and counts against the student."""
    texts, refs = df[C.COMPLETION].fillna("").astype(str).tolist(), df[C.ANSWER].fillna("").astype(str).tolist()
    tests = df[C.TESTS].fillna("").astype(str).tolist() if C.TESTS in df.columns else [""] * len(df)  # code rows
    ok = [i for i, failed in enumerate(_failed(df)) if not failed]
    verdicts: list[Verdict | None] = [None] * len(df)
    graded = grade_rows([texts[i] for i in ok], [refs[i] for i in ok], [tests[i] for i in ok],
                        sandbox=sandbox_from_config(code) if any(tests) else None)
    for i, verdict in zip(ok, graded):
        verdicts[i] = verdict
    out = df.copy()
    out[C.CORRECT] = [bool(v and v.correct) for v in verdicts]
    out[C.FORMAT_OK] = [bool(v and v.format_ok) for v in verdicts]
    out[C.PREDICTED] = [v.predicted if v else "" for v in verdicts]
    out[C.REASON] = [v.reason if v else R_GENERATION_ERROR for v in verdicts]
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with ``c`` correct among ``n`` samples (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, the chance that k samples drawn without replacement hold a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(df: pd.DataFrame) -> dict:
    """Scores of graded samples (k per question; failed generations count as incorrect):

    - ``avg_at_k``: pass@1 averaged over the k samples of each question, then over questions, with a
      95% normal-approximation CI (``ci_low``/``ci_high``) of that mean (zero width for one question);
    - ``pass_at_1`` (equal to ``avg_at_k``) and ``pass_at_k`` (k = samples per question), each the
      mean over questions of the unbiased per-question estimator :func:`pass_at_k`;
    - ``mean_length``: mean completion tokens of the successful generations, ``tokens`` their sum;
      ``n_errors``: the failed ones;
    - ``question_rates``: ``{question_id: pass@1 over its k samples}``, for paired comparisons of two
      models on the same questions (not a metric: callers log the numeric entries only).

    Every question must have the same number of samples (rows lost or duplicated are refused)."""
    if df.empty:
        raise ValueError("avg_at_k needs at least one graded sample")
    if df[C.CORRECT].isna().any():
        raise ValueError(f"avg_at_k: {int(df[C.CORRECT].isna().sum())} samples have no '{C.CORRECT}' verdict")
    failed = _failed(df)
    correct = df[C.CORRECT].astype(bool) & ~failed
    per_q = correct.groupby(df[C.QUESTION_ID]).agg(["sum", "size"])
    sizes = sorted(per_q["size"].unique())
    if len(sizes) != 1:
        raise ValueError(f"questions have unequal sample counts {sizes}: rows were lost or duplicated")
    k = int(sizes[0])
    rates = per_q["sum"] / k
    n_q = len(rates)
    mean = float(rates.mean())
    half = Z_95 * float(rates.std(ddof=1)) / math.sqrt(n_q) if n_q > 1 else 0.0
    lengths = df.loc[~failed, C.NUM_TOKENS]
    return {
        "avg_at_k": mean,
        "pass_at_1": float(np.mean([pass_at_k(k, int(c), 1) for c in per_q["sum"]])),
        "pass_at_k": float(np.mean([pass_at_k(k, int(c), k) for c in per_q["sum"]])),
        "ci_low": max(0.0, mean - half),
        "ci_high": min(1.0, mean + half),
        "n_questions": n_q,
        "k": k,
        "mean_length": float(lengths.mean()) if len(lengths) else float("nan"),
        "tokens": int(lengths.sum()),
        "n_errors": int(failed.sum()),
        "question_rates": {str(q): float(r) for q, r in rates.items()},
    }


def _failed(df: pd.DataFrame) -> pd.Series:
    """True where the generation of a sample failed (a table without ``error`` has no failures)."""
    if C.ERROR not in df.columns:
        return pd.Series(False, index=df.index)
    return df[C.ERROR].fillna("").astype(str) != ""


def evaluate_suites(
    model_path: str,
    suites: dict[str, list[dict]],
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int = 0,
    student: StudentConfig | None = None,
    code: dict | None = None,
    store: GenerationStore | None = None,
) -> dict[str, dict]:
    """``{suite: avg_at_k(...)}`` for every suite, sampled in one engine pass (read back from ``store``
    when it has them, see :func:`sample_student`); code rows graded in the sandbox of ``code`` (the job's
    ``format.code``)."""
    empty = [name for name, rows in suites.items() if not rows]
    if empty:
        raise ValueError(f"evaluation suites without questions: {empty}")
    rows = [{**q, SUITE: name} for name, qs in suites.items() for q in qs]
    graded = grade_samples(sample_student(rows, model_path, k, temperature, max_tokens, seed, student, store), code)
    scores = {name: avg_at_k(graded[graded[SUITE] == name]) for name in suites}
    for name, s in scores.items():
        logger.info("eval %s: avg@%d %.3f [%.3f, %.3f], pass@%d %.3f, mean length %.1f over %d questions",
                    name, s["k"], s["avg_at_k"], s["ci_low"], s["ci_high"], s["k"], s["pass_at_k"], s["mean_length"],
                    s["n_questions"])
    return scores
