"""The one linear builder of a DED job; reading :func:`run_job` shows the whole flow in data-flow order:

    student → questions (+decontamination; the dev suite held out) → probe generation (every candidate
    teacher) → verify → teacher smoke test (scored on the dev suite) → question compression (student
    pass rate, vLLM) → M-sample generation of the winner on the kept questions (all M at once, or
    adaptively in rounds) → verify
    → diverse selection (farthest-P by Levenshtein) → corpus → SFT (Ray Train)
    → evaluation before/after (vLLM, avg@k)

With ``compression.order: paper`` the M-sample generation runs on every question and compression
comes after it (the paper's order, for comparison: teacher tokens on dropped questions are lost).
Every stage records its teacher/student tokens, wall time and reserved CPU/GPU-seconds; caps in
``budget`` stop a job before it spends past them (``ray-distill run --dry-run`` estimates first).

    ray-distill run jobs/quickstart.yaml
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import ray

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, SuiteConfig, TeacherConfig
from ray_distill.accounting import BudgetExceeded, ResourceMeter, StageEstimate, estimate
from ray_distill.curation import adaptive as A
from ray_distill.curation.adapters import GradeBatch, select_dataset
from ray_distill.curation.compression import compress, histogram, pass_rates
from ray_distill.curation.judge import judge_summary
from ray_distill.curation.judge_stage import count_stored_verdicts, judge_dataset
from ray_distill.curation.selection import distance_table
from ray_distill.curation.plane import (Grading, Selection, generate_missing, grade, grader_pool_size, read_parquet_dir,
                                        select_buckets, write_graded, write_questions)
from ray_distill.curation.smoke_test import (STUDENT_SCORE, TEACHER_ACCURACY, below_floor_reason,
                                             rank_teachers, top_two_note, training_questions, verified_floor, winner)
from ray_distill.curation.stats import token_entropies_under_model
from ray_distill.data.corpus import corpus_hash, to_chat_row, write_corpus, write_rejects
from ray_distill.data.dev import capped_questions, carve, probe_questions
from ray_distill.data.fs import join
from ray_distill.data.sources import decontaminate, load_source
from ray_distill.evaluation.evaluate import evaluate_suites, grade_samples, sample_student
from ray_distill.evaluation.metrics import macro_average, wilson_interval
from ray_distill.evaluation.harness import run_harness
from ray_distill.generation.store import GenerationStore
from ray_distill.models import resolve_chat_template, resolve_engine
from ray_distill.progress import StageRecord, StageRunner
from ray_distill.runtime import init_ray
from ray_distill.students import prepare_student
from ray_distill.tracking import NullTracker, Tracker
from ray_distill.training.sft import SFTJob, train_sft, train_sft_many
from ray_distill.training.replay import training_rows

logger = logging.getLogger(__name__)

_ROW = "_verify_row"  # a row's input position, carried through verification


@dataclass
class JobResult:
    run_dir: str
    winner: str = ""
    ranking: list[dict] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows kept after each stage, in order
    scores_before: dict[str, dict] = field(default_factory=dict)
    scores_after: dict[str, dict] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    corpus_dir: str = ""
    model_path: str = ""
    extra: dict = field(default_factory=dict)
    until: str = "evaluate"  # the last stage that ran (the stage commands stop early)


# The stage commands: `ray-distill generate|curate` run the job up to (and including) this stage;
# `train` and `eval` run the job's train / evaluate stage on a given corpus / model.
STOP_AFTER = {"generate": "generate", "curate": "corpus"}


def run_job(cfg: JobConfig, tracker: Tracker, runner: StageRunner | None = None, until: str = "evaluate") -> JobResult:
    """The whole job (``until="evaluate"``), or its first stages up to ``until`` (``generate``: teacher
    samples in the store; ``corpus``: the curated corpus written)."""
    init_ray(cfg)
    cfg = resolve_models(cfg)
    runner = runner or StageRunner(tracker)
    meter = None
    if runner.meter is None:
        runner.meter = meter = ResourceMeter().start()
    try:
        return _run_job(cfg, tracker, runner, until)
    finally:
        if meter is not None:
            meter.stop()


def _run_job(cfg: JobConfig, tracker: Tracker, runner: StageRunner, until: str = "evaluate") -> JobResult:
    store = GenerationStore(join(cfg.storage, "generations"))
    rows: dict[str, int] = {}
    paper_order = cfg.compression.order == "paper"

    base, pool, suites, dev = student_and_questions(cfg, runner)
    rows["questions"] = len(pool)
    with runner.stage("generate_probe") as (t, rec):
        probe = probe_questions(cfg, pool)
        if cfg.budget.max_teacher_tokens is not None:  # estimates read the store: only when there is a cap
            check_budget(cfg, [estimate_generation(store, "generate_probe", probe, _single(tc)) for tc in cfg.teachers], 0)
        probe_gen = {tc.name: generate(store, probe, _single(tc), t, rec) for tc in cfg.teachers}
        rec.rows_in, rec.rows_out = len(probe), sum(len(df) for df in probe_gen.values())
    with runner.stage("verify_probe", rows_in=rec.rows_out) as (t, rec):
        graded_all = verify(cfg, pd.concat(list(probe_gen.values()), ignore_index=True), base, t, rec)
        probe_graded = {name: graded_all[graded_all[C.TEACHER] == name] for name in probe_gen}
        rec.rows_out = sum(int(_ok(df).sum()) for df in probe_graded.values())
    with runner.stage("smoke_test") as (t, rec):
        ranking = smoke_test(cfg, probe_graded, dev, base, t, rec)
        best = winner(ranking) if len(ranking) > 1 or cfg.smoke_test.enabled else cfg.teachers[0].name
        rec.notes["winner"] = best
    teacher = next(tc for tc in cfg.teachers if tc.name == best)
    probe_length = _mean_tokens(probe_gen[best])

    if not paper_order:  # compress first: the teacher never samples a question the student already solves
        with runner.stage("compress", rows_in=len(pool)) as (t, rec):
            targets, _ = compress_questions(cfg, pool, base, t, rec)
            rec.rows_out = rows["compressed"] = len(targets)
    else:
        targets = pool
    if cfg.selection.adaptive.enabled:
        with runner.stage("generate", rows_in=len(targets)) as (t, rec):
            graded, stopped = adaptive_generate(cfg, store, targets, teacher, base, probe_length, runner, t, rec)
            rec.rows_out = rows["generated"] = len(graded)
            rows["correct"] = int(_ok(graded).sum())
            rec.notes["correct"] = rows["correct"]
            _log_verdicts(t, graded)
        # adaptive rounds grade in the driver; their graded rows go to storage for the same selection
        work = join(cfg.run_dir, "data", "generate")
        graded_url = write_graded(graded, join(work, "graded"))
        if until == "generate":
            return _partial(cfg, tracker, runner, rows, ranking, best, "generate", extra={"store": store.root})
    else:
        m = _fixed_samples(cfg, probe_length)
        fixed = _with_n(teacher, m)
        work = join(cfg.run_dir, "data", "generate")
        questions_url = write_questions(targets, join(work, "questions.parquet"))
        with runner.stage("generate", rows_in=len(targets)) as (t, rec):
            if cfg.budget.max_teacher_tokens is not None:
                check_budget(cfg, [estimate_generation(store, "generate", targets, fixed, probe_length)],
                             runner.totals()["teacher_tokens"])
            made = generate_missing(store, questions_url, fixed, m, work)
            rec.teacher_tokens += made["completion_tokens"]
            rec.notes.update({k: made[k] for k in ("generated", "failed")})
        if until == "generate":
            return _partial(cfg, tracker, runner, rows, ranking, best, "generate",
                            extra={"store": store.root, "questions": questions_url})
        stopped = []
        with runner.stage("verify") as (t, rec):
            phase = grade(store, questions_url, fixed, m, work, grading(cfg, base), made)
            rec.rows_in = rows["generated"] = phase.counters["requested"]
            rec.rows_out = rows["correct"] = phase.counters["correct"]
            t.log_metrics({f"{teacher.name}/{k}": v for k, v in phase.counters.items() if isinstance(v, int)})
            t.log_metrics({f"verdict/{k}": v for k, v in phase.counters["verdicts"].items()})
            graded_url = phase.graded_url
            if phase.judge:
                rec.judge_calls += int(phase.judge["judge/calls"])
                rec.judge_tokens += int(phase.judge["judge/tokens"])
                t.log_metrics(phase.judge)
    keep = None
    if paper_order:  # the paper's order: compress after sampling (teacher tokens on dropped questions are lost)
        with runner.stage("compress", rows_in=len(pool)) as (t, rec):
            kept, _ = compress_questions(cfg, pool, base, t, rec)
            keep = frozenset(str(q[C.QUESTION_ID]) for q in kept)
            rec.rows_out = rows["compressed"] = len(kept)
    with runner.stage("select", rows_in=rows["correct"]) as (t, rec):
        s = cfg.selection
        report = select_buckets(graded_url, join(work, "selected"), Selection(s.keep_per_question, s.seed, base, keep),
                                join(cfg.run_dir, "rejects", "generations"))
        selected = read_parquet_dir(join(work, "selected"))  # the corpus: P rows per kept question
        if keep is not None:
            rec.notes["correct_kept"] = rows["correct_compressed"] = report["correct"]
        rec.rows_out = rows["diverse"] = len(selected)
        rec.notes.update({k: v for k, v in report.items() if k not in ("rows", "correct")})
        t.log_table(distance_table(selected), "selection_distances.json")  # kept vs available, per question
    with runner.stage("corpus", rows_in=len(selected)) as (t, rec):
        corpus_dir = join(cfg.run_dir, "corpus")
        corpus = write_job_corpus(selected, corpus_dir, t)
        _write_rejects(cfg, stopped, "adaptive_sampling")
        rec.rows_out = len(corpus)
    if until == "corpus":
        return _partial(cfg, tracker, runner, rows, ranking, best, "corpus", corpus_dir=corpus_dir)
    result = train_stage(cfg, corpus, base, runner)
    (before, after), harness = evaluate_stage(cfg, {"before": base, "after": result.model_path}, suites, runner)
    tracker.log_metrics({f"rows/{k}": v for k, v in rows.items()})
    tracker.log_table(pd.DataFrame({"stage": list(rows), "rows": list(rows.values())}), "rows_per_stage.json")
    model_uri = log_student(cfg, tracker, result, corpus, corpus_dir, after, harness.get("after"))
    accounting = log_accounting(tracker, runner, len(corpus))
    return JobResult(
        run_dir=cfg.run_dir, winner=best, ranking=ranking, rows=rows, scores_before=before, scores_after=after,
        stage_seconds={r.name: r.seconds for r in runner.records}, corpus_dir=corpus_dir,
        model_path=result.model_path, extra={"accounting": accounting, "macro": macro_scores(cfg, before, after),
                                             "harness": harness, "model_uri": model_uri},
    )


# ----------------------------------------------------------------------------- teacher token economy


def train_stage(cfg: JobConfig, corpus: list[dict], base: str, runner: StageRunner):
    """SFT of the base student on the corpus and any replayed rows (Ray Train, ``training.replay``); the
    student goes to ``<run_dir>/student``."""
    with runner.stage("train", rows_in=len(corpus)) as (t, rec):
        rows, replayed = training_rows(cfg, corpus)
        t.log_metrics({"train/replay_rows": replayed["replay_rows"]})
        if replayed["replay_rows"]:
            rec.notes.update(replayed)
        result = train_sft(rows, base, join(cfg.run_dir, "student"), cfg.train,
                           storage_path=join(cfg.run_dir, "ray_train"), run_name="sft", tracker_handle=t.handle(),
                           chat_template=cfg.student.chat_template, log_model=False)  # see log_student
        rec.notes.update({k: v for k, v in result.metrics.items()
                          if k in ("train_loss", "tokens_per_s", "non_pad_fraction", "restarts", "num_nodes")})
    return result


def log_student(cfg: JobConfig, tracker: Tracker, trained, corpus: list[dict], corpus_url: str,
                scores_after: dict[str, dict], harness: dict[str, dict[str, float]] | None = None) -> str | None:
    """The exported student as an MLflow model of the job's run (``tracking.log_model``), its eval scores
    and training loss linked to it, the loss also to the curated corpus; registered with
    ``tracking.register_model``. Returns its ``models:/`` URI (None when not logged)."""
    if not cfg.tracking.log_model:
        return None
    reg = cfg.tracking.register_model
    register_as = cfg.name if reg is True else (reg or None)
    metrics = {f"{suite}/avg_at_k": s["avg_at_k"] for suite, s in scores_after.items()}
    metrics |= {f"harness/{task}/{m}": v for task, ms in (harness or {}).items() for m, v in ms.items()}
    train = {k: v for k, v in trained.metrics.items() if k == "train_loss"}
    source = corpus_url if corpus_url.endswith((".parquet", ".jsonl")) else join(corpus_url, "corpus.parquet")
    return tracker.log_model(trained.model_path, "student", metrics, corpus=pd.DataFrame(corpus),
                             corpus_source=source, corpus_metrics=train, register_as=register_as)


def evaluate_stage(cfg: JobConfig, models: dict[str, str], suites: Suites,
                   runner: StageRunner) -> tuple[list[dict], dict[str, dict]]:
    """Every model of ``{prefix: model reference}`` on the eval suites (one score dict per model, in order)
    and, with ``eval.harness``, through lm-evaluation-harness too (``{prefix: {task: {metric: value}}}``: the
    base's scores beside the student's)."""
    with runner.stage("evaluate") as (t, rec):
        scores = evaluate_all(cfg, [(model, t, prefix) for prefix, model in models.items()], suites, rec)
        harness = {prefix: evaluate_harness(cfg, model, t, prefix=prefix) for prefix, model in models.items()}
    return scores, {prefix: s for prefix, s in harness.items() if s}


def _partial(cfg: JobConfig, tracker: Tracker, runner: StageRunner, rows: dict, ranking: list[dict], best: str,
             until: str, corpus_dir: str = "", extra: dict | None = None) -> JobResult:
    """The result of a job stopped after ``until`` (the stage commands), with what it spent."""
    tracker.log_metrics({f"rows/{k}": v for k, v in rows.items()})
    accounting = log_accounting(tracker, runner, rows.get("diverse", 0))
    return JobResult(run_dir=cfg.run_dir, winner=best, ranking=ranking, rows=rows, corpus_dir=corpus_dir,
                     stage_seconds={r.name: r.seconds for r in runner.records}, until=until,
                     extra={"accounting": accounting, **(extra or {})})


def train_job(cfg: JobConfig, tracker: Tracker, runner: StageRunner, corpus_url: str) -> JobResult:
    """``ray-distill train``: the job's base student fine-tuned on the corpus at ``corpus_url`` (a
    ``corpus.jsonl``/``.parquet`` file or a directory holding one, e.g. ``curate``'s ``<run_dir>/corpus``)."""
    from ray_distill.data.corpus import read_corpus

    init_ray(cfg)
    cfg = resolve_models(cfg)
    with runner.stage("student") as (t, rec):
        base = prepare_student(cfg, t)
    with runner.stage("corpus") as (t, rec):
        corpus = read_corpus(corpus_url)
        rec.rows_out = len(corpus)
        t.log_params({"corpus": corpus_url})
    result = train_stage(cfg, corpus, base, runner)
    model_uri = log_student(cfg, tracker, result, corpus, corpus_url, {})
    accounting = log_accounting(tracker, runner, len(corpus))
    return JobResult(run_dir=cfg.run_dir, rows={"corpus": len(corpus)}, corpus_dir=corpus_url,
                     model_path=result.model_path, stage_seconds={r.name: r.seconds for r in runner.records},
                     until="train", extra={"accounting": accounting, "model_uri": model_uri})


def eval_job(cfg: JobConfig, tracker: Tracker, runner: StageRunner, model: str | None) -> JobResult:
    """``ray-distill eval``: ``model`` (a path, URL or hub id; default: the job's exported student) and
    the base student on the job's eval suites."""
    from ray_distill.models import check_model

    init_ray(cfg)
    cfg = resolve_models(cfg)
    model = model or join(cfg.run_dir, "student")
    check_model(model, "--model")
    with runner.stage("student") as (t, rec):
        base = prepare_student(cfg, t)
    with runner.stage("questions") as (t, rec):
        suites = load_questions(cfg, t)[1]
    (before, after), harness = evaluate_stage(cfg, {"before": base, "after": model}, suites, runner)
    accounting = log_accounting(tracker, runner, 0)
    return JobResult(run_dir=cfg.run_dir, scores_before=before, scores_after=after, model_path=model,
                     stage_seconds={r.name: r.seconds for r in runner.records}, until="evaluate",
                     extra={"accounting": accounting, "macro": macro_scores(cfg, before, after), "harness": harness})


def adaptive_generate(cfg: JobConfig, store: GenerationStore, questions: list[dict], teacher: TeacherConfig,
                      base: str, probe_length: float | None, runner: StageRunner, t: Tracker,
                      rec: StageRecord) -> tuple[pd.DataFrame, list[dict]]:
    """Sample ``questions`` in rounds and stop each one early (``curation.adaptive``); returns every
    graded sample and the stopped-without-enough rows (for the rejects file). The store keeps every
    sample, so a later, larger budget continues where this one stopped."""
    plan = sampling_plan(cfg)
    budget = cfg.budget.max_teacher_tokens
    by_id = {q[C.QUESTION_ID]: q for q in questions}
    want = {qid: plan.first_round() for qid in by_id}  # samples each active question has after this round
    graded, previous, final = pd.DataFrame(), None, {}
    sampled = pd.Series(dtype=int)
    round_index = 0
    while want:
        round_index += 1
        active = [by_id[q] for q in want]
        if budget is not None:
            length = (_mean_tokens(graded) if len(graded) else probe_length) \
                or store.mean_completion_tokens(teacher) or teacher.sampling.max_tokens
            est = (sum(want.values()) - store.count_cached(active, teacher, want)) * length
            if runner.totals()["teacher_tokens"] + rec.teacher_tokens + est > budget:
                final.update({q: A.JOB_BUDGET for q in want})
                logger.warning("teacher token budget %d reached: %d questions stop after round %d",
                               budget, len(want), round_index - 1)
                break
        # one generation call (one actor pool, one engine start) per round, each question with its own n
        gen = generate(store, active, teacher, t, rec, n=want)
        graded, fresh = A.merge_round(graded, gen)
        graded = pd.concat([graded, verify(cfg, fresh, base, t, rec)], ignore_index=True)
        status = A.round_status(graded, list(want), round_index, plan, previous, sampled)
        previous = A.distinct_correct(graded)
        final.update({q: s for q, s in status.items() if s != A.CONTINUE})
        sampled = graded.groupby(C.QUESTION_ID).size()
        want = {q: plan.next_total(int(previous.get(q, 0)), int(sampled[q]))
                for q, s in status.items() if s == A.CONTINUE}
        logger.info("adaptive round %d: %d samples so far, %d questions still active", round_index, len(graded), len(want))
    counts = pd.Series(final, dtype=object).value_counts().to_dict()
    rec.notes.update({"rounds": round_index, **{f"stop_{k}": int(v) for k, v in counts.items()}})
    t.log_metrics({f"adaptive/{k}": int(v) for k, v in counts.items()})
    distinct = A.distinct_correct(graded) if len(graded) else pd.Series(dtype=int)
    stopped = [{**by_id[q], C.REASON: s, "distinct_correct": int(distinct.get(q, 0))}
               for q, s in final.items() if s in (A.HOPELESS, A.JOB_BUDGET, A.TOKEN_CAP)
               and int(distinct.get(q, 0)) < plan.target]
    return graded, stopped


def sampling_plan(cfg: JobConfig) -> A.SamplingPlan:
    return A.plan_from_config(cfg)


def _fixed_samples(cfg: JobConfig, probe_length: float | None) -> int:
    """M, or fewer when the per-question token cap cannot pay for M samples of the expected length."""
    m, cap = cfg.selection.samples_per_question, cfg.budget.max_teacher_tokens_per_question
    if cap is None or not probe_length:
        return m
    fit = max(1, int(cap // probe_length))
    if fit < m:
        logger.warning("per-question cap of %d teacher tokens pays for %d of M=%d samples (~%.0f tokens each)",
                       cap, fit, m, probe_length)
    return min(m, fit)


def estimate_generation(store: GenerationStore, stage: str, questions: list[dict], teacher: TeacherConfig,
                        mean_length: float | None = None) -> StageEstimate:
    """Dry-run line for one generation call: requests, how many the store already has, expected tokens."""
    n = teacher.sampling.n
    cached = store.count_cached(questions, teacher, n) if questions else 0
    if mean_length is None:
        mean_length = store.mean_completion_tokens(teacher)
    return estimate(stage, teacher, len(questions), n, cached, mean_length)


def check_budget(cfg: JobConfig, estimates: list[StageEstimate], spent: float) -> None:
    """Raise :class:`BudgetExceeded` before spending when the expected tokens pass the job's cap."""
    cap = cfg.budget.max_teacher_tokens
    need = sum(e.expected_tokens for e in estimates)
    if cap is not None and spent + need > cap:
        what = ", ".join(f"{e.teacher}: {e.to_generate:,} samples x ~{e.tokens_per_sample:.0f} tokens" for e in estimates)
        raise BudgetExceeded(
            f"budget.max_teacher_tokens={cap:,}: {estimates[0].stage} would spend ~{need:,.0f} teacher tokens "
            f"({what}) after {spent:,.0f} already spent; raise the cap or shrink the job (see --dry-run)")


def dry_run(cfg: JobConfig) -> list[StageEstimate]:
    """What the job would ask its teachers for, without generating: the probe of every candidate, then
    the M-sample generation of each candidate (the winner is not known yet). The question count of the
    M-sample stage is an upper bound under compress-first (compression drops some)."""
    cfg = resolve_models(cfg)  # the store keys hash the chat templates' text
    store = GenerationStore(join(cfg.storage, "generations"))
    pool, suites = load_questions(cfg, NullTracker(), write_rejects=False)
    pool = split_dev(cfg, pool, suites, NullTracker(), write_rejects=False)[0]
    probe = probe_questions(cfg, pool)
    lengths = {tc.name: store.mean_completion_tokens(tc) for tc in cfg.teachers}  # one scan per teacher
    out = [estimate_generation(store, "probe", probe, _single(tc), lengths[tc.name]) for tc in cfg.teachers]
    for tc in cfg.teachers:  # M as the run takes it (a per-question token cap may lower it)
        m = _fixed_samples(cfg, lengths[tc.name])
        out.append(estimate_generation(store, "M-samples", pool, _with_n(tc, m), lengths[tc.name]))
    if cfg.verify.judge.mode != "off":
        judge_length = store.mean_completion_tokens(cfg.verify.judge.as_teacher())
        tcs = {tc.name: tc for tc in cfg.teachers}
        out += [estimate_judge(store, e, probe if e.stage == "probe" else pool,
                               _with_n(tcs[e.teacher], e.samples_per_question), cfg.verify.judge, judge_length)
                for e in list(out)]
    return out


def estimate_judge(store: GenerationStore, gen: StageEstimate, questions: list[dict], teacher: TeacherConfig,
                   judge, mean_length: float | None) -> StageEstimate:
    """Dry-run line for the judge's verdicts on one generation stage's samples: at most one call per sample
    (fallback mode judges only the rows math-verify cannot decide, and malformed rows are never judged); a
    sample already stored whose verdict is stored too costs nothing."""
    cached = count_stored_verdicts(store, judge, store.lookup(questions, teacher)) if questions else 0
    return estimate(f"{gen.stage}/judge", judge.as_teacher(), gen.questions, gen.samples_per_question, cached,
                    mean_length, role="judge")


def log_accounting(tracker: Tracker, runner: StageRunner, corpus_rows: int) -> list[dict]:
    """Per-stage and total spend to MLflow (table + metrics); returns the table rows."""
    table = [{"stage": r.name, "wall_s": r.seconds, "teacher_tokens": r.teacher_tokens,
              "student_tokens": r.student_tokens, "judge_tokens": r.judge_tokens, "judge_calls": r.judge_calls,
              "cpu_s": r.cpu_s, "gpu_s": r.gpu_s} for r in runner.records]
    totals = runner.totals()
    per_sample = totals["teacher_tokens"] / corpus_rows if corpus_rows else float("nan")
    tracker.log_table(pd.DataFrame(table), "accounting.json")
    tracker.log_metrics({f"total/{k}": v for k, v in totals.items()}
                        | {"teacher_tokens_per_corpus_sample": per_sample})
    return table


# ----------------------------------------------------------------------------- stages (thin glue)


def resolve_models(cfg: JobConfig) -> JobConfig:
    """``cfg`` with every engine as its actors load it (presets built into the storage cache, chat-template
    files read: ``models.resolve_engine``) and the student's chat template read; hub ids stay hub ids."""
    teachers = [tc.model_copy(update={"engine": resolve_engine(tc.engine, cfg.storage, f"teachers.{i}.engine")})
                for i, tc in enumerate(cfg.teachers)]
    template = resolve_chat_template(cfg.student.chat_template, "student.chat_template")
    update = {"teachers": teachers, "student": cfg.student.model_copy(update={"chat_template": template})}
    judge = cfg.verify.judge
    if judge.mode != "off":
        judge = judge.model_copy(update={"engine": resolve_engine(judge.engine, cfg.storage, "verify.judge.engine")})
        update["verify"] = cfg.verify.model_copy(update={"judge": judge})
    return cfg.model_copy(update=update)


Suites = dict[str, list[dict]]  # suite name -> question rows


def student_and_questions(cfg: JobConfig, runner: StageRunner) -> tuple[str, list[dict], Suites, Suites]:
    """The first two stages of every command: the base student, the training pool, the eval suites
    (reported) and the dev suite (``{name: rows}``, what selection scores on)."""
    with runner.stage("student") as (t, rec):
        base = prepare_student(cfg, t)
    with runner.stage("questions") as (t, rec):
        pool, suites = load_questions(cfg, t)
        pool, dev = split_dev(cfg, pool, suites, t)
        rec.rows_out = len(pool)
    return base, pool, suites, dev


def load_questions(cfg: JobConfig, t: Tracker, write_rejects: bool = True) -> tuple[list[dict], dict[str, list[dict]]]:
    """The training pool (held-out questions and contaminated ones removed) and the evaluation suites."""
    suites: dict[str, list[dict]] = {}
    for suite in cfg.eval.suites:
        suite_rows, suite_rejects = load_source(suite)
        if write_rejects:
            _write_rejects(cfg, suite_rejects, f"suite_{suite.name}")
        suites[suite.name] = suite_rows
    held_out = dict(suites)
    if cfg.dev.suite is not None:  # the dev suite (what selection scores on) is held out too
        held_out[cfg.dev.suite.name] = load_source(cfg.dev.suite, where="dev.suite")[0]
    eval_texts = {r[C.QUESTION] for rs in held_out.values() for r in rs}
    pool, rejects = load_source(cfg.questions, exclude=eval_texts)
    d = cfg.questions.decontamination
    # exact normalised matches always (whatever their spacing or case); shared n-grams only when enabled
    pool, contaminated, counts = decontaminate(pool, held_out, ngram=d.ngram if d.enabled else None)
    if write_rejects:
        _write_rejects(cfg, rejects, "questions")
        _write_rejects(cfg, contaminated, "decontamination")
    t.log_metrics({"questions": len(pool), "rejected": len(rejects),
                   **{f"contaminated/{k}": v for k, v in counts.items()}})
    return pool, suites


def split_dev(cfg: JobConfig, pool: list[dict], suites: Suites, t: Tracker,
              write_rejects: bool = True) -> tuple[list[dict], Suites]:
    """(the training pool without the dev questions, the dev suite ``{name: rows}``): the configured
    ``dev.suite`` (held out of the pool by :func:`load_questions`), or ``dev.num_questions`` carved out
    of the pool (``data.dev.carve``; a pool question with the same normalised text as a carved one, under another
    id, leaves the pool too: rejects ``dev_twins``, reason ``contaminated:<dev>``). Dev questions that overlap an
    eval suite are dropped (rejects ``dev_overlap``), so selection never scores on a reported question. Ids and
    texts go to MLflow."""
    d = cfg.dev
    rejects: list[dict] = []
    twins: list[dict] = []
    if d.suite is not None:
        rows, rejects = load_source(d.suite, where="dev.suite")
    else:
        try:
            pool, rows = carve(pool, d.num_questions, d.seed)
        except ValueError as err:
            raise ConfigError(f"dev.num_questions: {err}; set dev.suite or lower dev.num_questions") from None
        # a problem present twice under two ids: its other copies leave the training pool too (by normalised text)
        pool, twins, _ = decontaminate(pool, {d.name: rows}, ngram=None)
    q = cfg.questions.decontamination
    rows, overlap, _ = decontaminate(rows, suites, ngram=q.ngram if q.enabled else None)  # exact matches always
    if not rows:
        raise ConfigError(f"dev: every question of the dev suite {d.name!r} overlaps an eval suite")
    if write_rejects:
        _write_rejects(cfg, rejects, f"suite_{d.name}")
        _write_rejects(cfg, overlap, "dev_overlap")
        _write_rejects(cfg, twins, "dev_twins")
    t.log_params({"dev_suite": d.name, "dev_source": "suite" if d.suite is not None else "carved"})
    t.log_metrics({"dev/questions": len(rows), "dev/overlapping_eval": len(overlap)})
    t.log_table(pd.DataFrame({C.QUESTION_ID: [str(r[C.QUESTION_ID]) for r in rows],
                              C.QUESTION: [r[C.QUESTION] for r in rows]}), "dev_questions.json")
    logger.info("dev suite %r: %d questions (%s), %d dropped for overlapping an eval suite", d.name, len(rows),
                "configured" if d.suite is not None else f"carved out of the pool, seed {d.seed}", len(overlap))
    return pool, {d.name: rows}


def generate(store: GenerationStore, questions: list[dict], teacher: TeacherConfig, t: Tracker,
             rec: StageRecord | None = None, n: dict[str, int] | None = None) -> pd.DataFrame:
    """Samples ``0..n-1`` of every question from the store (``n``: the teacher's, or one per question
    id), generating what is missing; the teacher tokens generated by this call are added to ``rec``
    (cached samples cost nothing)."""
    df, counters = store.get_or_generate(questions, teacher, n)
    t.log_metrics({f"{teacher.name}/{k}": v for k, v in counters.items() if isinstance(v, (int, float))})
    if rec is not None:
        rec.teacher_tokens += int(counters.get("completion_tokens", 0))
    return df


def verify(cfg: JobConfig, gen: pd.DataFrame, base: str, t: Tracker | None = None,
           rec: StageRecord | None = None) -> pd.DataFrame:
    """Grade generated rows held by the driver (probe, adaptive rounds, searches: bounded sets) on a
    Ray Data actor pool sized to the cluster, then, with ``verify.judge``, through the judge's actor pool
    (``curation.judge_stage``); rows in = rows out. The judge's calls and tokens go to ``rec``, its verdict
    counts and agreement with math-verify to ``t``. The main generation grades on storage instead
    (:func:`ray_distill.curation.plane.grade`)."""
    g = grading(cfg, base)
    # Ray Data returns blocks in the order its actors finish them: the input order is restored, so what
    # callers draw from the rows (smoke-test rows, ablation arms) does not depend on actor timing
    ds = ray.data.from_pandas(gen.assign(**{_ROW: np.arange(len(gen))})).map_batches(
        GradeBatch, fn_constructor_kwargs={"max_tokens": g.max_tokens, "require_think": g.require_think,
                                           "tokenizer_path": g.tokenizer, "code": g.code},
        batch_format="pandas", batch_size=256, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=grader_pool_size(g)))
    if g.judge is not None:
        ds = judge_dataset(ds, g.judge, join(cfg.storage, "generations"))
    graded = ds.to_pandas()
    if len(graded) != len(gen):
        raise RuntimeError(f"verify lost rows: {len(gen)} in, {len(graded)} out")
    graded = graded.sort_values(_ROW).drop(columns=[_ROW]).reset_index(drop=True)
    summary = judge_summary(graded)
    if summary:
        if rec is not None:
            rec.judge_calls += int(summary["judge/calls"])
            rec.judge_tokens += int(summary["judge/tokens"])
        if t is not None:
            t.log_metrics(summary)
    return graded


def grading(cfg: JobConfig, base: str) -> Grading:
    judge = cfg.verify.judge if cfg.verify.judge.mode != "off" else None
    return Grading(max_tokens=cfg.format.max_tokens, require_think=cfg.format.require_think, tokenizer=base,
                   code=cfg.format.code.model_dump(), num_graders=cfg.format.num_graders, judge=judge)


def smoke_test(cfg: JobConfig, probe: dict[str, pd.DataFrame], dev: Suites, base: str,
               t: Tracker, rec: StageRecord | None = None) -> list[dict]:
    """Teacher selection (``curation.smoke_test``): per candidate, a short SFT of the student on the same
    number of its verified probe answers (shared questions first), scored on the dev suite; a teacher
    without a verified probe row ranks last with its reason. With ``smoke_test.enabled: false`` the
    teachers' own probe accuracy ranks them instead, and the table says so (``ranked_by``).

    Every candidate's SFT runs in one Ray Train launch and every corpus entropy in one Ray task: their
    start-ups (the worker group's ~20 s, the base student's load) are paid once, not once per teacher."""
    s = cfg.smoke_test
    by = STUDENT_SCORE if s.enabled else TEACHER_ACCURACY
    verified = {name: graded[_ok(graded)] for name, graded in probe.items()}
    n_probe = max((int(g[C.QUESTION_ID].nunique()) for g in probe.values()), default=0)
    floor = verified_floor(n_probe, s.min_verified) if s.enabled else 1  # ranked by accuracy: no training to starve
    picks = training_questions({n: ok[C.QUESTION_ID].astype(str) for n, ok in verified.items()}, seed=cfg.seed,
                               floor=floor)
    shared = set.intersection(*(set(p) for p in picks.values() if p)) if any(picks.values()) else set()
    entropy = student_entropy(cfg, base, {name: (ok[C.COMPLETION].tolist(), ok[C.PROMPT].tolist())
                                          for name, ok in verified.items() if len(ok)})
    results, per_question, to_train = [], {}, {}
    with contextlib.ExitStack() as stack:
        children = {name: stack.enter_context(t.child(f"teacher/{name}", tags={"ray_distill.teacher": name}))
                    for name in probe}
        for name, graded in probe.items():
            ok = verified[name]
            train = ok[ok[C.QUESTION_ID].astype(str).isin(picks[name])]
            res = {"teacher": name, STUDENT_SCORE: float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                   TEACHER_ACCURACY: float(graded[C.CORRECT].mean()), "verified_rows": len(ok),
                   "probe_questions": int(graded[C.QUESTION_ID].nunique()),
                   "train_rows": len(train) if s.enabled else 0, "shared_questions": len(shared) if s.enabled else 0,
                   "mean_length": float(graded[C.NUM_TOKENS].mean()), "entropy": entropy.get(name, float("nan")),
                   "reason": below_floor_reason(len(ok), floor)}
            if res["reason"]:
                children[name].set_tags({"reason": res["reason"]})
                logger.warning("smoke test: %s ranks last: %s (floor: smoke_test.min_verified=%g of %d probe "
                               "questions)", name, res["reason"], s.min_verified, res["probe_questions"])
            elif s.enabled:
                to_train[name] = train
            else:  # ranked by the teacher's own accuracy: its CI and paired margins over the probe questions
                per_question[name] = graded.groupby(C.QUESTION_ID)[C.CORRECT].mean().astype(float).to_dict()
                res["ci_low"], res["ci_high"] = wilson_interval(res[TEACHER_ACCURACY], max(1, len(per_question[name])))
            results.append(res)
        scores = smoke_student_scores(cfg, to_train, dev, base, children, rec) if to_train else {}
        for res in results:
            if res["teacher"] in scores:
                m = scores[res["teacher"]]
                res.update({STUDENT_SCORE: m["avg_at_k"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]})
                per_question[res["teacher"]] = m["question_rates"]
            children[res["teacher"]].log_metrics({k: v for k, v in res.items() if isinstance(v, float | int)})
    trained = {r["train_rows"] for r in results if r["train_rows"]}
    if len(trained) > 1:
        raise RuntimeError(f"smoke test: candidates trained on unequal row counts {sorted(trained)}")
    ranking = rank_teachers(results, by=by, per_question=per_question)
    note = top_two_note(ranking)
    logger.info("smoke test: %s", note)
    first = ranking[0]
    if first["separable"] is not None:
        t.log_metrics({"top_two/margin": first["margin"], "top_two/margin_ci_low": first["margin_ci_low"],
                       "top_two/margin_ci_high": first["margin_ci_high"], "top_two/separable": float(first["separable"])})
    t.set_tags({"ray_distill.top_two": note, "ray_distill.ranked_by": by})
    table = pd.DataFrame(ranking)
    t.log_table(table, "teacher_ranking.json")
    title = f"student avg@k on {cfg.dev.name} after smoke-test SFT" if s.enabled else "teacher's own probe accuracy"
    t.log_figure(_bar_chart(table, "teacher", by, title), "teacher_ranking.png")
    return ranking


def student_entropy(cfg: JobConfig, base: str, corpora: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    """``token_entropies_under_model`` of the base student over each teacher's (texts, prompts), run as one Ray
    task on the student's serving resources, not in the driver (on GPUs the model is loaded in 16-bit and spread
    over all of them: ``curation.stats.entropy_load_plan``); {} without a corpus."""
    if not corpora:
        return {}
    r = cfg.student.serving.resources
    task = ray.remote(num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                      resources=dict(r.custom_resources) or None)(token_entropies_under_model)
    return ray.get(task.remote(base, corpora, chat_template=cfg.student.chat_template))


def smoke_student_scores(cfg: JobConfig, train: dict[str, pd.DataFrame], dev: Suites, base: str,
                         trackers: dict[str, Tracker], rec: StageRecord | None) -> dict[str, dict]:
    """Short SFTs of the base student on each teacher's smoke-test rows (one Ray Train launch for all), then
    each student's scores on the dev suite; per teacher, logged to its ``trackers`` run."""
    s = cfg.smoke_test
    train_cfg = cfg.train.model_copy(update={"epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size})
    jobs = [SFTJob([to_chat_row(r) for r in rows.to_dict("records")], join(cfg.run_dir, "smoke", name),
                   trackers[name].handle()) for name, rows in train.items()]
    trained = train_sft_many(jobs, base, train_cfg, storage_path=join(cfg.run_dir, "ray_train"), run_name="smoke",
                             log_model=False, chat_template=cfg.student.chat_template)
    scores = evaluate_all(cfg, [(r.model_path, trackers[name], "smoke") for name, r in zip(train, trained)], dev, rec)
    return {name: by_suite[cfg.dev.name] for name, by_suite in zip(train, scores)}


def compress_questions(cfg: JobConfig, pool: list[dict], base: str, t: Tracker,
                       rec: StageRecord | None = None) -> tuple[list[dict], list[dict]]:
    """The student samples k answers per question with vLLM; questions it already solves are dropped.
    ``selection.max_questions`` of the kept questions go on, a seeded sample (``data.dev.capped_questions``; all of
    them without a cap, with or without compression)."""
    if not cfg.compression.enabled:
        return capped_questions(cfg, pool), []
    c = cfg.compression
    store = student_store(cfg)
    samples = student_samples(cfg, pool, base, store)
    _log_student_counters(t, store, "compress")
    if rec is not None:
        rec.student_tokens += int(samples[C.NUM_TOKENS].sum())
    rates = pass_rates(samples)
    kept, dropped = compress(pool, rates, c.max_pass_rate, c.min_pass_rate, c.replay_fraction, seed=cfg.seed)
    kept = capped_questions(cfg, kept)
    t.log_metrics({"kept": len(kept), "dropped": len(dropped), "mean_pass_rate": float(rates[C.PASS_RATE].mean())})
    hist = histogram(rates)
    t.log_figure(_bar_chart(hist, "bin", "count", "student pass rate per question"), "pass_rate_histogram.png")
    _write_rejects(cfg, dropped, "compress")
    return kept, dropped


def student_pass_rates(cfg: JobConfig, pool: list[dict], base: str) -> pd.DataFrame:
    """Per question: the base student's pass rate over k vLLM samples (same grader as everywhere)."""
    return pass_rates(student_samples(cfg, pool, base))


def student_samples(cfg: JobConfig, pool: list[dict], base: str, store: GenerationStore | None = None) -> pd.DataFrame:
    """k graded vLLM samples of the base student per question (compression's evidence), from the job's
    generation store when it has them."""
    c = cfg.compression
    return grade_samples(sample_student(pool, base, c.k, c.temperature, c.max_tokens, seed=cfg.seed,
                                        student=cfg.student, store=store or student_store(cfg)),
                         cfg.format.code.model_dump(), finished_only=cfg.format.require_think)


def student_store(cfg: JobConfig) -> GenerationStore:
    """The job's generation store, where student samples are kept like the teachers' (under ``student``)."""
    return GenerationStore(join(cfg.storage, "generations"))


def _log_student_counters(t: Tracker, store: GenerationStore, prefix: str) -> None:
    """``<prefix>/student_generated`` and ``_cached``: 0 generated on a rerun (the store had them all)."""
    totals = store.totals["student"]
    t.log_metrics({f"{prefix}/student_{k}": int(totals[k]) for k in ("generated", "cached")})


def select(cfg: JobConfig, graded: pd.DataFrame, base: str) -> pd.DataFrame:
    ok = graded[_ok(graded)]
    if ok.empty:
        raise RuntimeError("no verified-correct teacher samples to select from; check the teacher and the grader")
    s = cfg.selection
    selected = select_dataset(ok, s.keep_per_question, s.seed, base).to_pandas()  # blocks in finishing order
    return selected.sort_values(list(C.ROW_ORDER), kind="stable").reset_index(drop=True)


def write_job_corpus(selected: pd.DataFrame, out_dir: str, t: Tracker) -> list[dict]:
    corpus = [to_chat_row(r) for r in selected.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX]).to_dict("records")]
    paths = write_corpus(corpus, out_dir)
    t.log_dataset(pd.DataFrame(corpus), name="curated_corpus", source=paths["parquet"])
    for p in paths.values():
        if "://" not in p:
            t.log_artifact(p, "corpus")
    t.log_metrics({"corpus_rows": len(corpus), "corpus_questions": int(selected[C.QUESTION_ID].nunique())})
    t.set_tags({"ray_distill.corpus_sha256": corpus_hash(corpus)})  # same config + seed: same hash
    return corpus


def evaluate(cfg: JobConfig, model: str, suites: dict[str, list[dict]], t: Tracker, prefix: str,
             rec: StageRecord | None = None) -> dict[str, dict]:
    """``model`` scored on ``suites`` (``evaluate_suites`` through the student store), logged to ``t`` as
    ``<prefix>/<suite>/<metric>`` and the macro averages; ``{}`` without suites."""
    return evaluate_all(cfg, [(model, t, prefix)], suites, rec)[0]


def evaluate_all(cfg: JobConfig, runs: list[tuple[str, Tracker, str]], suites: dict[str, list[dict]],
                 rec: StageRecord | None = None) -> list[dict[str, dict]]:
    """:func:`evaluate` of every ``(model, tracker, prefix)``, the models sampled concurrently (one engine
    actor each: their start-ups, mostly a fresh process importing vLLM, overlap), logged one after the other
    from this thread."""
    if not suites:
        logger.warning("no evaluation suites configured: %s evaluation skipped", ", ".join(p for _, _, p in runs))
        return [{} for _ in runs]
    models = list(dict.fromkeys(model for model, _, _ in runs))  # a model named twice is sampled once
    if len(models) == 1:
        sampled = {models[0]: _score(cfg, models[0], suites)}
    else:
        with ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="evaluate") as pool:
            sampled = dict(zip(models, pool.map(lambda model: _score(cfg, model, suites), models)))
    return [_log_scores(cfg, t, prefix, suites, *sampled[model], rec) for model, t, prefix in runs]


def finished_only(cfg: JobConfig, suite: SuiteConfig | None) -> bool:
    """Whether an answer inside unfinished reasoning (an unclosed think block) scores wrong on ``suite``: its own
    ``finished_only``, else the job's ``format.require_think`` (a job of reasoning responses is strict everywhere:
    curation, pass rates, the dev suite and evaluation; one that relaxed the think format grades whole texts)."""
    if suite is not None and suite.finished_only is not None:
        return suite.finished_only
    return cfg.format.require_think


def _configured_suites(cfg: JobConfig) -> dict[str, SuiteConfig]:
    return {s.name: s for s in [*cfg.eval.suites, *([cfg.dev.suite] if cfg.dev.suite else [])]}


def _score(cfg: JobConfig, model: str, suites: dict[str, list[dict]]) -> tuple[dict[str, dict], GenerationStore]:
    e = cfg.eval
    store = student_store(cfg)
    configured = _configured_suites(cfg)
    settings = {name: e.sampling(configured[name]) for name in suites if name in configured}
    pass_k = {name: configured[name].pass_k for name in suites if name in configured}
    finished = {name: finished_only(cfg, configured.get(name)) for name in suites}
    scores = evaluate_suites(model, suites, e.k, e.temperature, e.max_tokens, seed=cfg.seed, student=cfg.student,
                             code=cfg.format.code.model_dump(), settings=settings, pass_k=pass_k, store=store,
                             finished_only=finished)
    return scores, store


def _log_scores(cfg: JobConfig, t: Tracker, prefix: str, suites: dict[str, list[dict]], scores: dict[str, dict],
                store: GenerationStore, rec: StageRecord | None) -> dict[str, dict]:
    _log_student_counters(t, store, prefix)
    if rec is not None:
        rec.student_tokens += int(sum(m.get("tokens", m["mean_length"] * m["k"] * m["n_questions"])
                                      for m in scores.values()))
    t.log_metrics({f"{prefix}/{suite}/{k}": v for suite, m in scores.items() for k, v in m.items()
                   if isinstance(v, (int, float))})
    configured = _configured_suites(cfg)
    domains = {name: configured[name].domain for name in suites if name in configured}
    t.log_metrics({f"{prefix}/macro_{group}/avg_at_k": v for group, v in macro_average(scores, domains).items()})
    return scores


def evaluate_harness(cfg: JobConfig, model: str, t: Tracker, prefix: str) -> dict[str, dict[str, float]]:
    """``eval.harness``: lm-evaluation-harness tasks on ``model`` (``evaluation.harness``), logged as
    ``<prefix>/harness/<task>/<metric>`` beside the suites' scores; ``{}`` when not configured."""
    if cfg.eval.harness is None:
        return {}
    scores = run_harness(model, cfg.eval.harness, cfg.student)
    t.log_metrics({f"{prefix}/harness/{task}/{m}": v for task, ms in scores.items() for m, v in ms.items()})
    t.log_table(pd.DataFrame([{"task": task, "metric": m, "value": v} for task, ms in scores.items()
                              for m, v in ms.items()]), f"harness_{prefix}.json")
    return scores


# ----------------------------------------------------------------------------- helpers


def macro_scores(cfg: JobConfig, before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{"before"|"after": {"all"|"in_domain"|"ood": macro avg@k}}``: each suite counts once."""
    domains = {s.name: s.domain for s in cfg.eval.suites}
    return {"before": macro_average(before, domains), "after": macro_average(after, domains)}


def in_domain_score(cfg: JobConfig, scores: dict[str, dict]) -> float:
    names = [s.name for s in cfg.eval.suites if s.domain == "in_domain"]
    return _mean_score({n: scores[n] for n in names if n in scores})


def _mean_score(scores: dict[str, dict]) -> float:
    vals = [m["avg_at_k"] for m in scores.values()]
    return float(sum(vals) / len(vals)) if vals else float("nan")


_ok = A.ok_mask


def _mean_tokens(df: pd.DataFrame) -> float | None:
    """Mean completion tokens of the successful samples whose count the engine reported (None: none)."""
    ok = df[df[C.ERROR] == ""] if C.ERROR in df.columns else df
    tokens = ok[C.NUM_TOKENS][ok[C.NUM_TOKENS] >= 0]
    return float(tokens.mean()) if len(tokens) else None


def _single(teacher: TeacherConfig) -> TeacherConfig:
    return _with_n(teacher, 1)


def _with_n(teacher: TeacherConfig, n: int) -> TeacherConfig:
    return teacher.model_copy(update={"sampling": teacher.sampling.model_copy(update={"n": n})})


def _log_verdicts(t: Tracker, graded: pd.DataFrame) -> None:
    reasons = graded[C.REASON].replace("", "kept").value_counts().to_dict()
    t.log_metrics({f"verdict/{k}": int(v) for k, v in reasons.items()})


def _write_rejects(cfg: JobConfig, rows: list[dict], stage: str) -> None:
    if rows:
        write_rejects([{**r, "stage": stage} for r in rows], join(cfg.run_dir, "rejects", f"{stage}.jsonl"))


def _bar_chart(df: pd.DataFrame, x: str, y: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(df[x].astype(str), df[y].astype(float))
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.tight_layout()
    plt.close(fig)
    return fig
