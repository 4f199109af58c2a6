"""Evaluation of a student served by vLLM over several suites: avg@k, pass@1, pass@k (unbiased
estimator, for any k up to the samples drawn), a 95% Wilson interval, mean response length.

    scores = evaluate_suites("/ckpt/student", {"arith": arith_rows, "max": max_rows}, k=4,
                             temperature=0.7, max_tokens=128)
    scores["arith"]["avg_at_k"], scores["arith"]["pass_at_k"], scores["arith"]["mean_length"]

- :func:`sample_student`: k samples per question through the same Ray Data actor adapter as the
  teachers (``generation.actor.generate_dataset``), one pass and one engine start for all questions.
- :func:`grade_samples`: the one grading entry point (``curation.graders.grade_row``: math by
  reference answer, code by running the question's ``tests`` in the sandbox, in parallel threads) on
  every sample, by Ray tasks across the cluster from :data:`CLUSTER_GRADING_ROWS` rows on; a failed
  generation (non-empty ``error``) is graded incorrect, never dropped.
- :func:`avg_at_k`: pure; avg@k, pass@1 and pass@k (Chen et al. 2021), a 95% Wilson interval over
  questions (``evaluation.metrics``).
- :func:`evaluate_suites`: all suites in one engine pass per distinct (temperature, max_tokens), each
  suite with its own k (:func:`engine_passes`), then split by suite.

Suites are question rows from any source (``SuiteConfig``: a jsonl/parquet file on any fsspec URL or
a synthetic family); extra columns (e.g. a code question's tests) travel with every sample to the
grader.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
import ray
import ray.data

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, StudentConfig, TeacherConfig
from ray_distill.curation.graders import Verdict, grade_rows, sandbox_from_config
from ray_distill.evaluation.metrics import pass_at_k, wilson_interval
from ray_distill.generation.hosts import generation
from ray_distill.generation.store import GenerationStore, model_digest, sample_counts

__all__ = ["avg_at_k", "evaluate_suites", "grade_samples", "pass_at_k", "sample_student", "wilson_interval"]

logger = logging.getLogger(__name__)

SUITE = "suite"  # evaluation suite name, carried through generation
R_GENERATION_ERROR = "generation_error"


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
                        max_model_len=serving.max_model_len, long_lived=serving.long_lived,
                        chat_template=student.chat_template,
                        chat_template_kwargs=student.chat_template_kwargs)


def sample_student(
    questions: list[dict],
    model_path: str,
    k: int | Mapping[str, int],
    temperature: float,
    max_tokens: int,
    seed: int = 0,
    student: StudentConfig | None = None,
    store: GenerationStore | None = None,
) -> pd.DataFrame:
    """``k`` samples per question (``GENERATION_COLUMNS`` + any extra question columns); ``student``: the
    job's student settings (serving resources, chat template; None: the defaults). With a ``store`` the
    samples are drawn once and read back afterwards (keyed by the checkpoint's content digest), so a rerun
    or a resumed job does not resample the student; failed requests are retried on the next call. ``k`` may
    be ``{question_id: k}`` (with a ``store`` only): suites with different k in one engine pass."""
    if not questions:
        raise ValueError("sample_student needs at least one question")
    if isinstance(k, Mapping) and store is None:
        raise ValueError("sample_student: a k per question needs a generation store")
    counts = sample_counts([str(q[C.QUESTION_ID]) for q in questions], k)
    student = student or StudentConfig()
    engine = TeacherConfig(
        name="student",
        engine=student_engine_config(model_path, student),
        sampling=SamplingConfig(n=max(counts), temperature=temperature, max_tokens=max_tokens, seed=seed),
        resources=student.serving.resources,
    )
    start = time.perf_counter()
    if store is None:
        with generation(ray.data.from_pandas(pd.DataFrame(questions)), engine) as ds:
            df = ds.to_pandas()
    else:  # one row per (question, sample index) in question order; extra columns (suite, ...) put back
        # a store row is one request: batch_size questions x k samples per engine wave, as without a store
        res = engine.resources
        engine = engine.model_copy(update={"resources": res.model_copy(update={"batch_size": res.batch_size
                                                                                * max(counts)})})
        df, _ = store.get_or_generate(questions, engine, k, digest=model_digest(model_path))
        qdf = pd.DataFrame(questions)
        extra = qdf.drop(columns=[c for c in qdf.columns if c in C.GENERATION_COLUMNS])
        if len(extra.columns):
            df = pd.concat([df, extra.loc[extra.index.repeat(counts)].reset_index(drop=True)], axis=1)
    if len(df) != sum(counts):
        raise RuntimeError(f"student sampling returned {len(df)} rows for {len(questions)} questions "
                           f"({sum(counts)} samples asked)")
    seconds = time.perf_counter() - start
    ks = "/".join(str(c) for c in sorted(set(counts)))
    logger.info("sampled %d x %s from %s in %.1f s (%d tokens, engine start included)",
                len(questions), ks, model_path, seconds, int(df[C.NUM_TOKENS].sum()))
    return df


# grade_samples: this many rows or more are graded by Ray tasks across the cluster, in chunks of this many; fewer
# are graded here (benchmarks/grading.py, 2 CPUs: 2,048 rows 4.2 s here vs 2.2 s on warm task workers, 8,192 rows
# 17.8 vs 9.5 s; the first tasks of a job also pay their workers' imports, a few seconds)
CLUSTER_GRADING_ROWS = 2048
GRADING_CHUNK_ROWS = 256


def grade_samples(df: pd.DataFrame, code: dict | None = None, finished_only: bool = True,
                  cluster_rows: int = CLUSTER_GRADING_ROWS) -> pd.DataFrame:
    """A copy of ``df`` with CORRECT / FORMAT_OK / PREDICTED / REASON from ``graders.grade_rows``;
    code rows run in a sandbox with the limits of ``code`` (a ``CodeGraderConfig`` dump, the job's
    ``format.code``; None: the defaults). ``finished_only``: an answer inside an unclosed think block (the
    sample ran out of tokens mid-reasoning) is wrong (``graders.final_answer_region``). From ``cluster_rows``
    rows on (with Ray running), chunks of rows are graded by Ray tasks on the cluster's CPUs, not in this process.

    A row whose generation failed (non-empty ``error``) is incorrect with reason
    ``generation_error``: it stays in the table and counts against the student."""
    if len(df) >= cluster_rows and ray.is_initialized():
        chunks = [_grading_task().remote(df.iloc[i: i + GRADING_CHUNK_ROWS], code, finished_only)
                  for i in range(0, len(df), GRADING_CHUNK_ROWS)]
        return pd.concat(ray.get(chunks))
    return _grade_here(df, code, finished_only)


@functools.lru_cache(maxsize=None)
def _grading_task():
    """:func:`_grade_here` as a Ray task, built (and its function exported) once per process."""
    return ray.remote(num_cpus=1, max_retries=3)(_grade_here)


def _grade_here(df: pd.DataFrame, code: dict | None, finished_only: bool) -> pd.DataFrame:
    """:func:`grade_samples` in this process (math rows in this thread, code rows in a thread pool)."""
    texts, refs = df[C.COMPLETION].fillna("").astype(str).tolist(), df[C.ANSWER].fillna("").astype(str).tolist()
    tests = df[C.TESTS].fillna("").astype(str).tolist() if C.TESTS in df.columns else [""] * len(df)  # code rows
    formats = (df[C.ANSWER_FORMAT].fillna("").astype(str).tolist() if C.ANSWER_FORMAT in df.columns
               else [""] * len(df))  # multiple-choice suites
    ok = [i for i, failed in enumerate(_failed(df)) if not failed]
    verdicts: list[Verdict | None] = [None] * len(df)
    graded = grade_rows([texts[i] for i in ok], [refs[i] for i in ok], [tests[i] for i in ok],
                        sandbox=sandbox_from_config(code) if any(tests) else None, formats=[formats[i] for i in ok],
                        finished_only=finished_only)
    for i, verdict in zip(ok, graded):
        verdicts[i] = verdict
    out = df.copy()
    out[C.CORRECT] = [bool(v and v.correct) for v in verdicts]
    out[C.FORMAT_OK] = [bool(v and v.format_ok) for v in verdicts]
    out[C.PREDICTED] = [v.predicted if v else "" for v in verdicts]
    out[C.REASON] = [v.reason if v else R_GENERATION_ERROR for v in verdicts]
    return out


def avg_at_k(df: pd.DataFrame, pass_k: list[int] | tuple[int, ...] = ()) -> dict:
    """Scores of graded samples (k per question; failed generations count as incorrect):

    - ``avg_at_k``: pass@1 averaged over the k samples of each question, then over questions, with a
      95% Wilson interval (``ci_low``/``ci_high``, ``metrics.wilson_interval`` over the questions);
    - ``pass_at_1`` (equal to ``avg_at_k``) and ``pass_at_k`` (k = samples per question), each the
      mean over questions of the unbiased per-question estimator :func:`pass_at_k`, and
      ``pass_at_<j>`` for every j of ``pass_k`` (each at most the samples per question);
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
    too_many = [j for j in pass_k if j > k]
    if too_many:
        raise ValueError(f"pass@{too_many[0]} needs at least {too_many[0]} samples per question, got {k}")
    rates = per_q["sum"] / k
    n_q = len(rates)
    mean = float(rates.mean())
    low, high = wilson_interval(min(1.0, max(0.0, mean)), n_q)
    lengths = df.loc[~failed, C.NUM_TOKENS]
    return {
        "avg_at_k": mean,
        "pass_at_1": float(np.mean([pass_at_k(k, int(c), 1) for c in per_q["sum"]])),
        "pass_at_k": float(np.mean([pass_at_k(k, int(c), k) for c in per_q["sum"]])),
        **{f"pass_at_{j}": float(np.mean([pass_at_k(k, int(c), j) for c in per_q["sum"]])) for j in pass_k},
        "ci_low": low,
        "ci_high": high,
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


def suite_plan(suites: dict[str, list[dict]], k: int, temperature: float, max_tokens: int,
               settings: dict[str, dict] | None = None) -> dict[tuple[float, int], list[dict]]:
    """The sample rows of every suite grouped by ``(temperature, max_tokens)``: one row per question and
    sample index ``0..k-1`` (the suite's k), each carrying its suite name. ``settings``: per suite,
    ``{k, temperature, max_tokens}`` overriding the shared values (``EvalConfig.sampling``)."""
    groups: dict[tuple[float, int], list[dict]] = {}
    for name, qs in suites.items():
        s = {"k": k, "temperature": temperature, "max_tokens": max_tokens, **(settings or {}).get(name, {})}
        groups.setdefault((float(s["temperature"]), int(s["max_tokens"])), []).extend(
            {**q, SUITE: name, C.SAMPLE_INDEX: i} for q in qs for i in range(int(s["k"])))
    return groups


def engine_passes(plan: list[dict], per_question_k: bool) -> list[tuple[list[dict], int | dict[str, int]]]:
    """A plan's sample rows as ``(question rows, k)`` engine passes: one pass for the whole plan when
    ``per_question_k`` (``k`` then ``{question_id: k}``; a question id asked with two different k falls back),
    else one pass per k (:func:`_by_k`)."""
    by_k = _by_k(plan)
    if per_question_k and len(by_k) > 1:
        counts: dict[str, int] = {}
        for kk, rows in by_k.items():
            for r in rows:
                counts.setdefault(str(r[C.QUESTION_ID]), kk)
        if all(counts[str(r[C.QUESTION_ID])] == kk for kk, rows in by_k.items() for r in rows):
            return [([r for rows in by_k.values() for r in rows], counts)]
    return [(rows, kk) for kk, rows in by_k.items()]


def _by_k(plan: list[dict]) -> dict[int, list[dict]]:
    """A plan's sample rows back to question rows (with their suite), grouped by their k."""
    k_of: dict[tuple, int] = {}
    first: dict[tuple, dict] = {}
    for r in plan:
        key = (r[SUITE], r[C.QUESTION_ID])
        k_of[key] = k_of.get(key, 0) + 1
        first.setdefault(key, {c: v for c, v in r.items() if c != C.SAMPLE_INDEX})
    out: dict[int, list[dict]] = {}
    for key, row in first.items():
        out.setdefault(k_of[key], []).append(row)
    return out


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
    settings: dict[str, dict] | None = None,
    pass_k: dict[str, list[int]] | None = None,
    finished_only: dict[str, bool] | None = None,
) -> dict[str, dict]:
    """``{suite: avg_at_k(...)}`` for every suite, sampled in one engine pass per distinct (temperature,
    max_tokens) with a ``store`` (each suite its own k), else per (temperature, max_tokens, k)
    (:func:`suite_plan`; ``settings`` overrides k/temperature/max_tokens per suite), read
    back from ``store`` when it has them (see :func:`sample_student`); code rows graded in the sandbox of
    ``code`` (the job's ``format.code``); ``pass_k``: per suite, the extra pass@j to report; ``finished_only``: per
    suite, whether an answer inside unfinished reasoning is wrong (default True: :func:`grade_samples`)."""
    empty = [name for name, rows in suites.items() if not rows]
    if empty:
        raise ValueError(f"evaluation suites without questions: {empty}")
    start = time.perf_counter()
    frames = [sample_student(rows, model_path, kk, t, m, seed, student, store)
              for (t, m), plan in suite_plan(suites, k, temperature, max_tokens, settings).items()
              for rows, kk in engine_passes(plan, per_question_k=store is not None)]
    samples = pd.concat(frames, ignore_index=True)
    logger.info("sampled %d answers of %s in %.1f s (%d engine pass%s, engine starts included)", len(samples),
                model_path, time.perf_counter() - start, len(frames), "" if len(frames) == 1 else "es")
    graded = pd.concat([grade_samples(samples[samples[SUITE] == name], code, (finished_only or {}).get(name, True))
                        for name in suites])
    scores = {name: avg_at_k(graded[graded[SUITE] == name], (pass_k or {}).get(name, ())) for name in suites}
    for name, s in scores.items():
        logger.info("eval %s: avg@%d %.3f [%.3f, %.3f], pass@%d %.3f, mean length %.1f over %d questions",
                    name, s["k"], s["avg_at_k"], s["ci_low"], s["ci_high"], s["k"], s["pass_at_k"], s["mean_length"],
                    s["n_questions"])
    return scores
