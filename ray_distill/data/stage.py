"""A job's data ends: the questions read (the training pool, the eval suites, the dev suite: read through
:mod:`.sources`, decontaminated and split) and the curated corpus written; rejects go under ``<run_dir>/rejects``.

    pool, suites = load_questions(cfg, tracker)
    pool, dev = split_dev(cfg, pool, suites, tracker)
    corpus = write_job_corpus(selected, join(cfg.run_dir, "corpus"), tracker)
"""

from __future__ import annotations

import logging

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import JobConfig
from ray_distill.data.corpus import corpus_hash, to_chat_row, write_corpus, write_rejects
from ray_distill.data.dev import carve
from ray_distill.data.fs import join
from ray_distill.data.sources import decontaminate, load_source
from ray_distill.errors import ConfigError
from ray_distill.tracking import Tracker

logger = logging.getLogger(__name__)

Suites = dict[str, list[dict]]  # suite name -> question rows


def load_questions(cfg: JobConfig, t: Tracker, write_rejects: bool = True) -> tuple[list[dict], dict[str, list[dict]]]:
    """The training pool (held-out questions and contaminated ones removed) and the evaluation suites."""
    suites: dict[str, list[dict]] = {}
    for suite in cfg.eval.suites:
        suite_rows, suite_rejects = load_source(suite)
        if write_rejects:
            write_stage_rejects(cfg, suite_rejects, f"suite_{suite.name}")
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
        write_stage_rejects(cfg, rejects, "questions")
        write_stage_rejects(cfg, contaminated, "decontamination")
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
        write_stage_rejects(cfg, rejects, f"suite_{d.name}")
        write_stage_rejects(cfg, overlap, "dev_overlap")
        write_stage_rejects(cfg, twins, "dev_twins")
    t.log_params({"dev_suite": d.name, "dev_source": "suite" if d.suite is not None else "carved"})
    t.log_metrics({"dev/questions": len(rows), "dev/overlapping_eval": len(overlap)})
    t.log_table(pd.DataFrame({C.QUESTION_ID: [str(r[C.QUESTION_ID]) for r in rows],
                              C.QUESTION: [r[C.QUESTION] for r in rows]}), "dev_questions.json")
    logger.info("dev suite %r: %d questions (%s), %d dropped for overlapping an eval suite", d.name, len(rows),
                "configured" if d.suite is not None else f"carved out of the pool, seed {d.seed}", len(overlap))
    return pool, {d.name: rows}


def write_stage_rejects(cfg: JobConfig, rows: list[dict], stage: str) -> None:
    if rows:
        write_rejects([{**r, "stage": stage} for r in rows], join(cfg.run_dir, "rejects", f"{stage}.jsonl"))


def write_job_corpus(selected: pd.DataFrame, out_dir: str, t: Tracker, job: Tracker | None = None) -> list[dict]:
    """The corpus as chat rows in ``out_dir``; its dataset is an input of the corpus stage's run ``t`` and of
    the job's own run ``job`` (the first run a user opens in MLflow shows what the student learnt from)."""
    corpus = [to_chat_row(r) for r in selected.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX]).to_dict("records")]
    paths = write_corpus(corpus, out_dir)
    frame = pd.DataFrame(corpus)
    for run in (t, job) if job is not None else (t,):
        run.log_dataset(frame, name="curated_corpus", source=paths["parquet"])
    for p in paths.values():
        if "://" not in p:
            t.log_artifact(p, "corpus")
    t.log_metrics({"corpus_rows": len(corpus), "corpus_questions": int(selected[C.QUESTION_ID].nunique())})
    t.set_tags({"ray_distill.corpus_sha256": corpus_hash(corpus)})  # same config + seed: same hash
    return corpus
