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

The stages' own glue lives beside what it drives (docs/architecture.md): the questions and the corpus in
:mod:`ray_distill.data.stage`, rows the driver holds (the probe) and adaptive sampling's rounds (on the plane) in
:mod:`ray_distill.curation.driver`, the smoke test in :mod:`ray_distill.curation.smoke_stage`, evaluation in
:mod:`ray_distill.evaluation.stage`, budget estimates in :mod:`ray_distill.accounting`.

    ray-distill run jobs/quickstart.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ray_distill import columns as C
from ray_distill.accounting import (ResourceMeter, StageEstimate, check_budget, estimate_generation, estimate_judge,
                                    fixed_samples)
from ray_distill.config import JobConfig, TeacherConfig
from ray_distill.curation import adaptive as A
from ray_distill.curation.adapters import token_counter
from ray_distill.curation.compression import compress, histogram, pass_rates
from ray_distill.curation.driver import adaptive_generate, generate, grading, mean_tokens, verify
from ray_distill.curation.plane import (Selection, generate_missing, grade, read_parquet_dir, select_buckets,
                                        write_questions)
from ray_distill.curation.selection import distance_table
from ray_distill.curation.smoke_stage import smoke_test
from ray_distill.curation.smoke_test import winner
from ray_distill.data.dev import capped_questions, probe_questions
from ray_distill.data.fs import join
from ray_distill.data.stage import Suites, load_questions, split_dev, write_job_corpus, write_stage_rejects
from ray_distill.evaluation.stage import (evaluate_all, evaluate_harness, log_student_counters, macro_scores,
                                         student_samples, student_store)
from ray_distill.generation.hosts import actor_bundles, hosted, keep_engines, release_engines
from ray_distill.generation.store import GenerationStore
from ray_distill.models import resolve_chat_template, resolve_engine
from ray_distill.progress import StageRecord, StageRunner, log_accounting
from ray_distill.runtime import init_ray
from ray_distill.students import prepare_student
from ray_distill.tracking import NullTracker, Tracker
from ray_distill.tracking.charts import bar_chart
from ray_distill.training.replay import training_rows
from ray_distill.training.sft import train_sft


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
        # One engine host samples every stage in turn (the vLLM teachers, the smoke-test students, the base student,
        # the trained one), each model swapped in (~3-5 s on CPU instead of a new host's ~10-20 s); released where
        # something else needs its resources and the cluster has no room for both (generation.hosts).
        with keep_engines():
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
    probe_length = mean_tokens(probe_gen[best])

    if not paper_order:  # compress first: the teacher never samples a question the student already solves
        with runner.stage("compress", rows_in=len(pool)) as (t, rec):
            targets, _ = compress_questions(cfg, pool, base, t, rec)
            rec.rows_out = rows["compressed"] = len(targets)
    else:
        targets = pool
    if not hosted(teacher):  # the teacher's own actors: the idle host stays only if they fit beside it
        release_engines(room_for=actor_bundles(teacher), what=f"teacher {teacher.name}'s actors")
    work = join(cfg.run_dir, "data", "generate")
    if cfg.selection.adaptive.enabled:
        with runner.stage("generate", rows_in=len(targets)) as (t, rec):  # rounds of generate + grade on storage
            adaptive, stopped = adaptive_generate(cfg, store, targets, teacher, base, probe_length, runner, t,
                                                  rec, work)
            rec.rows_out = rows["generated"] = adaptive.counters["rows"]
            rec.notes["correct"] = rows["correct"] = adaptive.counters["correct"]
            rec.notes.update({k: adaptive.counters.get(k, 0) for k in ("generated", "failed")})
            t.log_metrics({f"verdict/{k}": v for k, v in adaptive.counters["verdicts"].items()})
            graded_url = adaptive.graded_url
    else:
        m = fixed_samples(cfg, probe_length)
        fixed = _with_n(teacher, m)
        questions_url = write_questions(targets, join(work, "questions.parquet"))
        with runner.stage("generate", rows_in=len(targets)) as (t, rec):
            if cfg.budget.max_teacher_tokens is not None:
                check_budget(cfg, [estimate_generation(store, "generate", targets, fixed, probe_length)],
                             runner.totals()["teacher_tokens"])
            made = generate_missing(store, questions_url, fixed, m, work)
            rec.teacher_tokens += made["completion_tokens"]
            rec.notes.update({k: made[k] for k in ("generated", "failed")})
    if until == "generate":
        extra = {"store": store.root}
        if not cfg.selection.adaptive.enabled:
            extra["questions"] = questions_url
        return _partial(cfg, tracker, runner, rows, ranking, best, "generate", extra=extra)
    if not cfg.selection.adaptive.enabled:
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
        report = select_buckets(graded_url, join(work, "selected"),
                                Selection(s.keep_per_question, s.seed, token_counter(base), keep),
                                join(cfg.run_dir, "rejects", "generations"))
        selected = read_parquet_dir(join(work, "selected"))  # the corpus: P rows per kept question
        if keep is not None:
            rec.notes["correct_kept"] = rows["correct_compressed"] = report["correct"]
        rec.rows_out = rows["diverse"] = len(selected)
        rec.notes.update({k: v for k, v in report.items() if k not in ("rows", "correct")})
        t.log_table(distance_table(selected), "selection_distances.json")  # kept vs available, per question
    with runner.stage("corpus", rows_in=len(selected)) as (t, rec):
        corpus_dir = join(cfg.run_dir, "corpus")
        corpus = write_job_corpus(selected, corpus_dir, t, job=tracker)
        write_stage_rejects(cfg, stopped, "adaptive_sampling")
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


# ----------------------------------------------------------------------------- the flow's stages


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
    log_student_counters(t, store, "compress")
    if rec is not None:
        rec.student_tokens += int(samples[C.NUM_TOKENS].sum())
    rates = pass_rates(samples)
    kept, dropped = compress(pool, rates, c.max_pass_rate, c.min_pass_rate, c.replay_fraction, seed=cfg.seed)
    kept = capped_questions(cfg, kept)
    t.log_metrics({"kept": len(kept), "dropped": len(dropped), "mean_pass_rate": float(rates[C.PASS_RATE].mean())})
    hist = histogram(rates)
    t.log_figure(bar_chart(hist, "bin", "count", "student pass rate per question"), "pass_rate_histogram.png")
    write_stage_rejects(cfg, dropped, "compress")
    return kept, dropped


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
        if result.metrics.get("work_by_node"):  # the tokens of the node whose workers trained least (0: one idled)
            t.log_metrics({"train/min_node_tokens": min(result.metrics["work_by_node"].values())})
    return result


def evaluate_stage(cfg: JobConfig, models: dict[str, str], suites: Suites,
                   runner: StageRunner) -> tuple[list[dict], dict[str, dict]]:
    """Every model of ``{prefix: model reference}`` on the eval suites (one score dict per model, in order)
    and, with ``eval.harness``, through lm-evaluation-harness too (``{prefix: {task: {metric: value}}}``: the
    base's scores beside the student's)."""
    with runner.stage("evaluate") as (t, rec):
        with keep_engines():  # the base and the trained student sampled by one engine host in turn
            scores = evaluate_all(cfg, [(model, t, prefix) for prefix, model in models.items()], suites, rec)
        harness = evaluate_harness(cfg, models, t)
    return scores, {prefix: s for prefix, s in harness.items() if s}


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


# ----------------------------------------------------------------------------- the stage commands


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
        m = fixed_samples(cfg, lengths[tc.name])
        out.append(estimate_generation(store, "M-samples", pool, _with_n(tc, m), lengths[tc.name]))
    if cfg.verify.judge.mode != "off":
        judge_length = store.mean_completion_tokens(cfg.verify.judge.as_teacher())
        tcs = {tc.name: tc for tc in cfg.teachers}
        out += [estimate_judge(store, e, probe if e.stage == "probe" else pool,
                               _with_n(tcs[e.teacher], e.samples_per_question), cfg.verify.judge, judge_length)
                for e in list(out)]
    return out


# ----------------------------------------------------------------------------- helpers


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


_ok = A.ok_mask


def _single(teacher: TeacherConfig) -> TeacherConfig:
    return _with_n(teacher, 1)


def _with_n(teacher: TeacherConfig, n: int) -> TeacherConfig:
    return teacher.model_copy(update={"sampling": teacher.sampling.model_copy(update={"n": n})})
