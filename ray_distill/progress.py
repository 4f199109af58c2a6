"""Stage bookkeeping for long jobs: every stage is timed, gets a nested MLflow run, and reports its
rows in/out and rate on the console while the job runs."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
from rich.console import Console

from ray_distill.accounting import ResourceMeter
from ray_distill.console import active as active_log
from ray_distill.tracking import Tracker

logger = logging.getLogger(__name__)


@dataclass
class StageRecord:
    name: str
    seconds: float = 0.0
    rows_in: int | None = None
    rows_out: int | None = None
    teacher_tokens: int = 0  # teacher completion tokens generated (not read from the store)
    student_tokens: int = 0  # tokens the student generated (pass rates, evaluation)
    judge_tokens: int = 0  # LLM-judge completion tokens generated (not read from the store)
    judge_calls: int = 0  # LLM-judge requests sent (verdicts read from the store are free)
    cpu_s: float = 0.0  # CPU-seconds reserved by Ray work during the stage
    gpu_s: float = 0.0
    notes: dict = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        rows = self.rows_in if self.rows_in is not None else self.rows_out
        return rows / self.seconds if rows and self.seconds > 0 else None


class StageRunner:
    """``with runner.stage("verify", rows_in=n) as (tracker, rec): ... rec.rows_out = m``"""

    def __init__(self, tracker: Tracker, console: Console | None = None, meter: ResourceMeter | None = None):
        self.tracker = tracker
        self.console = console or Console(stderr=True)
        self.records: list[StageRecord] = []
        self.meter = meter

    @contextlib.contextmanager
    def stage(self, name: str, rows_in: int | None = None, parent: Tracker | None = None) -> Iterator[tuple[Tracker, StageRecord]]:
        rec = StageRecord(name, rows_in=rows_in)
        job_log = active_log()
        if job_log is None or job_log.verbose:  # else a live line in a terminal, the log file in any case
            self.console.print(f"[bold cyan]▶ {name}[/]" + (f"  ({rows_in} rows in)" if rows_in is not None else ""))
        logger.info("stage %s started%s", name, f" ({rows_in} rows in)" if rows_in is not None else "")
        live_task = job_log.stage_started(name) if job_log else None
        start = time.perf_counter()
        used = self.meter.snapshot() if self.meter else None
        with (parent or self.tracker).child(name, tags={"ray_distill.stage": name}) as child:
            try:
                yield child, rec
            finally:
                rec.seconds = time.perf_counter() - start
                if job_log:
                    job_log.stage_ended(live_task)
                if self.meter and used is not None:
                    spent = self.meter.since(used)
                    rec.cpu_s, rec.gpu_s = spent.cpu_s, spent.gpu_s
                metrics = {"wall_s": rec.seconds, "teacher_tokens": rec.teacher_tokens,
                           "student_tokens": rec.student_tokens, "judge_tokens": rec.judge_tokens,
                           "judge_calls": rec.judge_calls, "cpu_s": rec.cpu_s, "gpu_s": rec.gpu_s}
                if rec.rows_in is not None:
                    metrics["rows_in"] = rec.rows_in
                if rec.rows_out is not None:
                    metrics["rows_out"] = rec.rows_out
                metrics.update({k: v for k, v in rec.notes.items() if isinstance(v, (int, float))})
                child.log_metrics(metrics)
        self.records.append(rec)
        self.console.print(f"[green]✔ {name}[/]  {_describe(rec)}", highlight=False, soft_wrap=True)
        logger.info("stage %s finished: %s", name, _describe(rec))

    def seconds(self, name: str) -> float:
        return sum(r.seconds for r in self.records if r.name == name)

    def totals(self) -> dict[str, float]:
        """Job totals of the accounting fields over every finished stage."""
        keys = ("seconds", "teacher_tokens", "student_tokens", "judge_tokens", "judge_calls", "cpu_s", "gpu_s")
        return {k: sum(getattr(r, k) for r in self.records) for k in keys}


def _describe(rec: StageRecord) -> str:
    parts = []
    if rec.rows_in is not None or rec.rows_out is not None:
        parts.append(f"{_n(rec.rows_in)} → {_n(rec.rows_out)} rows")
    if rec.rate:
        parts.append(f"{rec.rate:,.1f} rows/s")
    parts.append(f"{rec.seconds:.1f} s")
    if rec.teacher_tokens:
        parts.append(f"{rec.teacher_tokens:,} teacher tokens")
    if rec.student_tokens:
        parts.append(f"{rec.student_tokens:,} student tokens")
    if rec.judge_calls or rec.judge_tokens:
        parts.append(f"{rec.judge_calls:,} judge calls, {rec.judge_tokens:,} judge tokens")
    parts += [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.notes.items()]
    return ", ".join(parts)


def _n(v: int | None) -> str:
    return "–" if v is None else f"{v:,}"


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
