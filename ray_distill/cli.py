"""The ``ray-distill`` command line.

    ray-distill run jobs/quickstart.yaml train.epochs=2      # the whole DED job
    ray-distill tune jobs/quickstart_tune.yaml               # data-budget search with Ray Tune
    ray-distill ablate jobs/ablation.yaml                    # the paper's ablation in miniature
    ray-distill validate jobs/quickstart.yaml                # load + validate a job file only
    ray-distill submit jobs/quickstart.yaml --address http://HEAD:8265 --env HF_TOKEN   # on a cluster

Bad job files and bad overrides end with a one-line error naming the file and the key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ray_distill.config import ConfigError, JobConfig, load_config, to_flat_dict

logger = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Data-efficient reasoning distillation on Ray.")
console = Console(stderr=True)
out = Console()

JobFile = Annotated[str, typer.Argument(help="YAML job file (any fsspec URL).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.epochs=2 selection.keep_per_question=2.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs (Ray, vLLM, MLflow).")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("ray", "vllm", "mlflow", "alembic", "urllib3", "filelock", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def _load(job: str, overrides: list[str] | None) -> JobConfig:
    try:
        return load_config(job, overrides or [])
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _failing(tracker, verbose: bool):
    """Mark the MLflow run FAILED on any error; data errors end with one line (--verbose: traceback)."""
    from ray_distill.accounting import BudgetExceeded
    from ray_distill.data.questions import DataError

    try:
        yield
    except (ConfigError, DataError, BudgetExceeded) as err:
        tracker.end("FAILED")
        if verbose:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except BaseException:
        tracker.end("FAILED")
        raise


def _error(err: BaseException, label: str = "error") -> typer.Exit:
    console.print(f"[bold red]{label}:[/] {err}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _check_search(cfg: JobConfig) -> None:
    """Refuse a search space that no trial could vary, or a tune.metric trials do not report (one line)."""
    from ray_distill.tuning.space import check_space
    from ray_distill.tuning.trial import METRICS

    try:
        check_space(cfg, METRICS)
    except ConfigError as err:
        raise _error(err, "config error") from None


def _resolve_tracking(cfg: JobConfig, cluster: bool):
    from ray_distill.environment import resolve_tracking

    return resolve_tracking(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.storage, os.environ,
                            os.getcwd(), cluster=cluster, enabled=cfg.tracking.enabled)


def _prepare(cfg: JobConfig):
    """Before any work: where outputs and runs go (config > environment > default) and the Ray cluster
    (joined at ``ray.address`` / ``RAY_ADDRESS``, or started). Refusals end here with one line (exit 2)."""
    from ray.exceptions import AuthenticationError

    from ray_distill.environment import in_ray_job
    from ray_distill.runtime import init_ray

    try:
        ray_job = in_ray_job(os.environ, os.getcwd())
        target = _resolve_tracking(cfg, cluster=ray_job)
        nodes = init_ray(cfg)
        if nodes > 1 and not ray_job:
            target = _resolve_tracking(cfg, cluster=True)
    except ConfigError as err:
        raise _error(err) from None
    except (AuthenticationError, ConnectionError) as err:
        raise _error(f"{err} (token auth: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from None
    if cfg.tracking.enabled and target.uri.startswith("sqlite:") and (ray_job or nodes > 1):
        logger.warning("%s: a SQLite file on a cluster works only on a file system every node shares; "
                       "use an MLflow server (MLFLOW_TRACKING_URI)", target.describe())
    logger.info("storage: %s (%s)", cfg.storage, cfg.storage_source)
    logger.info("%s", target.describe())
    return target


def _tracked(cfg: JobConfig, job: str, kind: str, run_name: str, body, verbose: bool):
    """Run ``body(cfg, tracker, runner)`` under a parent MLflow run (params, wall time, FAILED on error),
    with the CPU/GPU-seconds of every stage metered; returns ``(result, tracker, wall_seconds, target)``."""
    from ray_distill.accounting import ResourceMeter
    from ray_distill.environment import redact
    from ray_distill.progress import StageRunner
    from ray_distill.tracking import start_tracker

    target = _prepare(cfg)
    tags = {"ray_distill.job": job, "ray_distill.kind": kind, "ray_distill.storage_source": cfg.storage_source,
            "ray_distill.tracking_uri_source": target.uri_source,
            "ray_distill.experiment_source": target.experiment_source}
    tracker = start_tracker(cfg.tracking.enabled, target.uri, target.experiment, cfg.storage, run_name=run_name,
                            tags=tags)
    params = to_flat_dict(cfg)
    params.update({"tracking.tracking_uri": redact(target.uri), "tracking.experiment": target.experiment})
    tracker.log_params(params)
    start = time.perf_counter()
    meter = ResourceMeter().start()
    try:
        with _failing(tracker, verbose):
            result = body(cfg, tracker, StageRunner(tracker, console, meter))
    finally:
        meter.stop()
    wall = time.perf_counter() - start
    tracker.log_metrics({"wall_s": wall})
    tracker.end()
    return result, tracker, wall, target


@app.command()
def validate(job: JobFile, overrides: Overrides = None) -> None:
    """Load and validate a job file (with overrides) and print the resolved configuration (stdout), and where
    storage, MLflow and the Ray cluster come from (stderr)."""
    from ray_distill.environment import in_ray_job, ray_address

    cfg = _load(job, overrides)
    if cfg.tune.search_space:
        _check_search(cfg)
    try:
        target = _resolve_tracking(cfg, cluster=in_ray_job(os.environ, os.getcwd()))
    except ConfigError as err:
        raise _error(err, "config error") from None
    try:
        address, source = ray_address(cfg.ray.address, os.environ)
        ray_line = f"Ray: {address} (from {source})" if address else "Ray: a local cluster, started by the job"
    except ConfigError as err:  # e.g. RAY_ADDRESS set for `ray job submit`: fine for submitting, not for `run`
        ray_line = f"Ray: `run` here would stop: {err}"
    out.print_json(cfg.model_dump_json())
    for line in (f"storage: {cfg.storage} ({cfg.storage_source})", target.describe(), ray_line):
        console.print(line, highlight=False, soft_wrap=True)


DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the teacher tokens and cost each generation stage "
                                      "would spend (nothing is generated) and exit.")]


@app.command()
def run(job: JobFile, overrides: Overrides = None, verbose: Verbose = False, dry_run: DryRun = False) -> None:
    """Run a whole DED job: generation, curation, smoke test, compression, selection, SFT, evaluation."""
    cfg = _load(job, overrides)
    _setup_logging(verbose)
    if dry_run:
        print_estimates(cfg)
        return
    from ray_distill.pipeline import run_job

    result, tracker, wall, target = _tracked(cfg, job, "run", cfg.name, run_job, verbose)
    print_summary(result, wall, tracker)
    _print_where(cfg, tracker, target)


@app.command()
def tune(job: JobFile, overrides: Overrides = None, verbose: Verbose = False) -> None:
    """Search data budgets with Ray Tune on stored generations; each trial = select → train → evaluate."""
    cfg = _load(job, overrides)
    _check_search(cfg)
    _setup_logging(verbose)
    from ray_distill.tuning.search import run_search

    result, tracker, _, target = _tracked(cfg, job, "tune", f"{cfg.name}-tune", run_search, verbose)
    table = Table(title="Ray Tune trials (data budgets)")
    for col in result.trials.columns:
        table.add_column(str(col))
    for row in result.trials.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    out.print(table)
    statuses = result.trials["status"].value_counts().to_dict()
    out.print(f"trials: {len(result.trials)} ({', '.join(f'{n} {s}' for s, n in statuses.items())})   "
              f"base student dev score={result.baseline.get('score', float('nan')):.3f}")
    out.print(f"teacher tokens generated during the search: "
              f"[bold]{result.counters.get('search/teacher_tokens_generated', 0):,}[/] "
              f"({result.counters.get('search/teacher_rows_generated', 0):,} samples)")
    out.print(f"[bold]best trial:[/] {result.best_config}  dev score={result.best_score:.3f} "
              f"(the eval suites are reported by running the best job)")
    out.print(f"best job written to {result.best_job_path}")
    _print_where(cfg, tracker, target)


@app.command()
def ablate(job: JobFile, overrides: Overrides = None, verbose: Verbose = False) -> None:
    """The paper's ablation in miniature: random vs +correct vs +compressed vs +diverse, and the smoke-test
    teacher vs the most accurate one, at an equal training budget."""
    cfg = _load(job, overrides)
    _setup_logging(verbose)
    from ray_distill.ablation import run_ablation

    result, tracker, _, target = _tracked(cfg, job, "ablation", f"{cfg.name}-ablation", run_ablation, verbose)
    seeds = len(cfg.ablation.seeds)
    what = "avg@k, 95% CI over questions" if seeds == 1 else f"avg@k, mean ± sd over {seeds} seeds (range)"
    table = Table(title=f"Ablation at an equal budget of {result.budget_rows:,} training rows ({what})")
    for col in ("arm", "teacher", *dict.fromkeys(result.summary["suite"])):
        table.add_column(col)
    for (arm, teacher), sub in result.summary.groupby(["arm", "teacher"], sort=False):
        table.add_row(arm, teacher, *[f"{r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if seeds == 1 else
                                      f"{r.mean:.3f} ± {r.sd:.3f} ({r.min:.3f}–{r.max:.3f})" for r in sub.itertuples()])
    out.print(table)
    out.print(f"smoke-test winner: [bold]{result.winner}[/]   best own accuracy: {result.best_accuracy_teacher}")
    _print_where(cfg, tracker, target)


def _print_where(cfg: JobConfig, tracker, target) -> None:
    """Where the outputs and the runs went, and which setting chose each (config, environment, default)."""
    out.print(f"storage: {cfg.storage} ({cfg.storage_source})", highlight=False, soft_wrap=True)
    if tracker.run_id:
        out.print(f"{target.describe()}, run {tracker.run_id}", highlight=False, soft_wrap=True)


@app.command()
def submit(
    job: JobFile,
    overrides: Overrides = None,
    address: Annotated[str | None, typer.Option("--address", "-a", help="Ray dashboard / Jobs API URL, e.g. "
                                                "http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                                                "then $RAY_ADDRESS).")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Environment variable to pass to the job BY NAME "
                                                  "(value read here, never printed). Repeatable.")] = None,
    working_dir: Annotated[str, typer.Option("--working-dir", help="Directory shipped to the cluster.")] = ".",
    install: Annotated[str, typer.Option("--install", help="none (nodes have ray-distill) | pip | uv (install it "
                                         "into the job's runtime env).")] = "none",
    extra: Annotated[str, typer.Option("--extra", help="Package extra installed with --install: cpu | gpu.")] = "cpu",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Stream logs and exit with the job's status.")] = True,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop the job after this many seconds.")] = None,
) -> None:
    """Submit a job to a Ray cluster (Ray Jobs API): validate locally, ship the working dir, run it there."""
    from ray.exceptions import AuthenticationError

    from ray_distill.environment import submission_address
    from ray_distill.submit import SubmitError, submit_job

    try:
        address, _ = submission_address(address, os.environ)
    except ConfigError as err:
        raise _error(err) from None
    try:
        code = submit_job(job, overrides or [], address=address, env_names=env or [], working_dir=working_dir,
                          extra=extra, wait=wait, install=install, timeout_s=timeout)  # type: ignore[arg-type]
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (SubmitError, ConnectionError, AuthenticationError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def print_estimates(cfg: JobConfig) -> None:
    """The dry run: per generation stage, requests, what the store already holds, expected tokens and cost."""
    from ray_distill.data.questions import DataError
    from ray_distill.pipeline import dry_run

    try:
        estimates = dry_run(cfg)
    except (ConfigError, DataError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table(title=f"Dry run of {cfg.name}: teacher tokens per generation stage, before any is spent")
    for col in ("stage", "teacher", "requests", "in store", "tok/sample", "expected", "at most", "cost"):
        table.add_column(col, justify="left" if col in ("stage", "teacher") else "right")
    for e in estimates:
        table.add_row(e.stage, e.teacher, f"{e.questions:,}×{e.samples_per_question}", f"{e.cached:,}",
                      f"{e.tokens_per_sample:,.0f}" + ("" if e.length_source == "store" else "*"),
                      f"{e.expected_tokens:,.0f}", f"{e.max_tokens_total:,}", f"{e.expected_cost:,.2f}")
    out.print(table)
    probe = sum(e.expected_tokens for e in estimates if e.stage == "probe")
    worst = max((e.expected_tokens for e in estimates if e.stage != "probe"), default=0)
    out.print("* no stored samples of this teacher yet: sampling.max_tokens assumed per sample")
    out.print(f"expected teacher tokens: probe {probe:,.0f} + M-sample generation of the winner ≤ {worst:,.0f} "
              f"(upper bound: compression and adaptive sampling only lower it)")
    cap = cfg.budget.max_teacher_tokens
    if cap is not None:
        verdict = "[green]within[/]" if probe + worst <= cap else "[red]may exceed[/]"
        out.print(f"budget.max_teacher_tokens={cap:,}: {verdict}")


def print_summary(result, wall: float, tracker) -> None:
    from ray_distill.curation.smoke_test import STUDENT_SCORE, top_two_note

    by = result.ranking[0]["ranked_by"]
    title = ("Teacher smoke test (the best student on the dev suite wins; 95% CI)" if by == STUDENT_SCORE else
             "Teachers ranked by their own probe accuracy (smoke test off; 95% CI)")
    diagnostics = [c for c in ("teacher_accuracy", "mean_length", "entropy") if c != by]
    ranking = Table(title=title, min_width=60)
    for col in ("rank", "teacher", by, "train rows", *diagnostics, "reason"):
        ranking.add_column(col)
    for r in result.ranking:
        score = "–" if r["reason"] else f"{r[by]:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        ranking.add_row(str(r["rank"]), r["teacher"], score, f"{r['train_rows']:,}" if r["train_rows"] else "–",
                        *[f"{r[c]:.3f}" for c in diagnostics], r["reason"])
    rows = Table(title="Rows kept at each stage", min_width=40)
    rows.add_column("stage")
    rows.add_column("rows", justify="right")
    for name, n in result.rows.items():
        rows.add_row(name, f"{n:,}")
    scores = Table(title="Student avg@k (95% CI)", min_width=40)
    for col in ("suite", "before", "after"):
        scores.add_column(col)
    for suite, after in result.scores_after.items():
        before = result.scores_before.get(suite, {})
        scores.add_row(suite, _fmt_score(before), _fmt_score(after))
    spend = Table(title="What each stage spent", min_width=60)
    for col in ("stage", "seconds", "teacher tokens", "student tokens", "CPU-s", "GPU-s"):
        spend.add_column(col, justify="left" if col == "stage" else "right")
    acc = result.extra.get("accounting", [])
    for r in acc:
        spend.add_row(r["stage"], f"{r['wall_s']:.1f}", f"{r['teacher_tokens']:,}", f"{r['student_tokens']:,}",
                      f"{r['cpu_s']:.0f}", f"{r['gpu_s']:.0f}")
    teacher_total = sum(r["teacher_tokens"] for r in acc)
    corpus_rows = result.rows.get("diverse", 0)
    spend.add_row("[bold]total[/]", f"{wall:.1f}", f"{teacher_total:,}", f"{sum(r['student_tokens'] for r in acc):,}",
                  f"{sum(r['cpu_s'] for r in acc):.0f}", f"{sum(r['gpu_s'] for r in acc):.0f}")
    out.print(ranking)
    out.print(top_two_note(result.ranking))
    for t in (rows, scores, spend):
        out.print(t)
    if corpus_rows:
        out.print(f"teacher tokens per kept corpus sample: {teacher_total / corpus_rows:,.1f}")
    out.print(f"winner: [bold]{result.winner}[/]   corpus: {result.corpus_dir}   student: {result.model_path}")


def _fmt_score(m: dict) -> str:
    if not m:
        return "–"
    return f"{m['avg_at_k']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def main() -> None:  # pragma: no cover - entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
