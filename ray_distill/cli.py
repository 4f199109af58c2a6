"""The ``ray-distill`` command line.

    ray-distill run jobs/quickstart.yaml train.epochs=2      # the whole DED job
    ray-distill generate jobs/quickstart.yaml                # ... up to the teacher samples in the store
    ray-distill curate jobs/quickstart.yaml                  # ... up to the curated corpus
    ray-distill train jobs/quickstart.yaml --corpus outputs/quickstart/corpus   # SFT on a corpus
    ray-distill eval jobs/quickstart.yaml --model outputs/quickstart/student    # a model on the suites
    ray-distill tune jobs/quickstart_tune.yaml               # data-budget search with Ray Tune
    ray-distill ablate jobs/ablation.yaml                    # the paper's ablation in miniature
    ray-distill validate jobs/quickstart.yaml                # load + validate a job file only
    ray-distill plan jobs/paper_math.yaml                    # GPU memory per stage vs the job's cluster
    ray-distill submit jobs/quickstart.yaml --address http://HEAD:8265   # on a cluster (secrets: on its nodes)
    ray-distill submit tune jobs/quickstart_tune.yaml --address http://HEAD:8265   # any command, on a cluster
    ray-distill --version

Bad job files and bad overrides end with a one-line error naming the file and the key; every other failure a user
can cause (data, a missing key variable, no sandbox, an unreachable cluster or storage, a model that does not load,
budget, memory) with one line naming what and where, its traceback in a log file, and its family's exit code
(ray_distill.errors; README, "The CLI").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import time
import traceback
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ray_distill.config import JobConfig, load_config, to_flat_dict
from ray_distill.errors import ConfigError, Unreachable
from ray_distill.redact import redact, redact_text, redact_value

logger = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Data-efficient reasoning distillation on Ray.")
console = Console(stderr=True)
out = Console()

JobFile = Annotated[str, typer.Argument(help="YAML job file (any fsspec URL).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.epochs=2 selection.keep_per_question=2.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs (Ray, vLLM, MLflow).")]
_where: dict[str, Any] = {}  # the running command's run directory and log file (a failure's traceback goes there)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"ray-distill {version('ray-distill')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Data-efficient reasoning distillation on Ray."""


def _setup_logging(verbose: bool, cfg: JobConfig, kind: str) -> None:
    """The job's log file (``<run dir>/logs/<kind>-<time>.log``) gets every log line, Ray's forwarded worker
    lines and Python warnings; the console gets ray-distill's stage lines, its warnings and the closing tables
    (``-v``: everything, live). See :mod:`ray_distill.console`."""
    from ray_distill.console import open_job_log

    for noisy in ("alembic", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # their INFO/DEBUG is noise even in the file
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if _where.get("log") is not None:  # one per command; tests run several in one process
        _where.pop("log").close()
    _where["log"] = open_job_log(kind, verbose, console)
    if _NATIVE_STDERR_TO_LOG:
        _where["log"].capture_native_stderr()


def _load(job: str, overrides: list[str] | None) -> JobConfig:
    try:
        cfg = load_config(job, overrides or [])
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {escape(redact_text(str(err)))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    _where["run_dir"] = cfg.run_dir  # a failure's traceback goes to a log file there
    return cfg


@contextlib.contextmanager
def _failing(tracker, verbose: bool):
    """Mark the MLflow run FAILED on any error, then let it reach :func:`_guarded` (one line, a log file, the
    family's exit code; --verbose: the traceback on the console too)."""
    try:
        yield
    except BaseException:
        _log_file_to(tracker)
        tracker.end("FAILED")
        raise


def _log_file_to(tracker) -> None:
    """The command's log file as it stands, into the MLflow run's ``logs/`` artifacts."""
    log = _where.get("log")
    if log is not None and tracker.run_id:
        try:
            tracker.log_artifact(log.path, "logs")
        except Exception as err:  # noqa: BLE001 - the log is a convenience; the job's outcome stands
            logger.warning("the log file did not reach MLflow: %s", _first_line(err))


def _error(err: BaseException, label: str = "error") -> typer.Exit:
    console.print(f"[bold red]{label}:[/] {escape(redact_text(str(err)))}", highlight=False, soft_wrap=True)
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

    from ray_distill.environment import in_ray_job, ray_address
    from ray_distill.errors import MissingVariable
    from ray_distill.preflight import check_ray_address, check_writable
    from ray_distill.runtime import init_ray

    try:
        ray_job = in_ray_job(os.environ, os.getcwd())
        target = _resolve_tracking(cfg, cluster=ray_job)
        address, source = ray_address(cfg.ray.address, os.environ)
        if problem := check_writable("storage", cfg.storage):  # before a cluster starts
            raise Unreachable(f"{problem.key}: {problem.message}")
        if address and (why := check_ray_address(address)):
            raise Unreachable(f"Ray cluster at {address} (from {source}) cannot be reached: {why}")
        nodes = init_ray(cfg)
        if nodes > 1 and not ray_job:
            target = _resolve_tracking(cfg, cluster=True)
    except ConfigError as err:
        raise _error(err) from None
    except AuthenticationError as err:
        raise MissingVariable(f"Ray cluster at {address} (from {source}): {_first_line(err)} (token auth: set "
                              "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from err
    except ConnectionError as err:
        if isinstance(err, Unreachable):
            raise
        raise Unreachable(f"Ray cluster at {address} (from {source}) cannot be reached: {_first_line(err)}") from err
    if cfg.tracking.enabled and target.uri.startswith("sqlite:") and (ray_job or nodes > 1):
        logger.warning("%s: a SQLite file on a cluster works only on a file system every node shares; "
                       "use an MLflow server (MLFLOW_TRACKING_URI)", target.describe())
    logger.info("storage: %s (%s)", redact(cfg.storage), cfg.storage_source)
    logger.info("%s", target.describe())
    return target


def _tracked(cfg: JobConfig, job: str, kind: str, run_name: str, body, verbose: bool):
    """Run ``body(cfg, tracker, runner)`` under a parent MLflow run (params, wall time, FAILED on error),
    with the CPU/GPU-seconds of every stage metered; returns ``(result, tracker, wall_seconds, target)``."""
    from ray_distill.accounting import ResourceMeter
    from ray_distill.progress import StageRunner
    from ray_distill.tracking import start_tracker

    target = _prepare(cfg)
    if _where.get("log") is not None:
        _where["log"].announce(cfg.run_dir)
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
    from ray_distill.pipeline import JobResult

    if isinstance(result, JobResult):  # a job or a stage command (tune and ablate log tables of their own)
        from ray_distill.tracking.description import describe

        tracker.set_description(describe(result, wall, result.extra.get("model_uri")))
    _log_file_to(tracker)
    tracker.end()
    return result, tracker, wall, target


@app.command()
def validate(job: JobFile, overrides: Overrides = None) -> None:
    """Load and validate a job file (with overrides) and print the resolved configuration (stdout), and where
    storage, MLflow and the Ray cluster come from (stderr); then check what can be checked before a cluster is
    touched (question and suite files readable, storage protocol known, P <= M): errors exit 2."""
    from ray_distill.environment import in_ray_job, ray_address
    from ray_distill.preflight import preflight

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
    out.print_json(data=redact_value(cfg.model_dump(mode="json")))
    for line in (f"storage: {cfg.storage} ({cfg.storage_source})", target.describe(), ray_line):
        console.print(redact_text(line), highlight=False, soft_wrap=True)
    problems = preflight(cfg)  # files readable, storage protocol known, P <= M
    for p in problems:
        color = "red" if p.level == "error" else "yellow"
        console.print(f"[bold {color}]{p.level}:[/] {p.key}: {escape(p.message)}", highlight=False, soft_wrap=True)
    if any(p.level == "error" for p in problems):
        raise typer.Exit(2)


DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the teacher tokens and cost each generation stage "
                                      "would spend (nothing is generated) and exit: 0, or 8 when they may exceed "
                                      "budget.max_teacher_tokens.")]
AllowOverBudget = Annotated[bool, typer.Option("--allow-over-budget", help="With --dry-run: exit 0 even when the "
                                               "estimate may exceed budget.max_teacher_tokens.")]


ClusterOption = Annotated[str | None, typer.Option(
    "--cluster", help="Cluster config to plan against (cluster/aws.yaml or a KubeRay manifest); default: the job's "
    "`cluster:` key.")]


def _plan(cfg: JobConfig, job: str, cluster: str | None):
    """The job's memory plan against ``cluster`` (or its ``cluster:`` key; neither: needs only)."""
    from ray_distill.planning.placement import load_cluster, resolve_cluster_path
    from ray_distill.planning.plan import plan_job

    path = cluster or (resolve_cluster_path(cfg.cluster, job) if cfg.cluster else None)
    return plan_job(cfg, load_cluster(path) if path else None)


def print_plan(plan) -> None:
    """One row per stage (per-GPU need vs capacity, the node type and how many nodes it takes), then each
    stage's components."""
    from ray_distill.planning.plan import GiB

    where = plan.cluster or "no cluster named (cluster: key or --cluster): needs only"
    table = Table(title=f"Memory plan of {plan.job} per stage and per GPU, on {where}")
    for col in ("stage", "model", "need/GPU", "capacity/GPU", "node type x nodes", "fits"):
        table.add_column(col, justify="right" if "/GPU" in col else "left")
    for s in plan.stages:
        cap, node, fits = "CPU", "-", "[dim]not checked[/]"
        if s.on_gpu:
            cap = f"{s.capacity / GiB:.1f} GiB" if s.capacity else "?"
            node = f"{s.spot.node.describe()} x {s.spot.nodes}" if s.spot else "-"
            fits = "[red]NO[/]" if not s.fits else ("[green]yes[/]" if s.capacity else "?")
        table.add_row(s.stage, s.model.rsplit("/", 1)[-1], f"{s.need / GiB:.1f} GiB", cap, node, fits)
    out.print(table)
    for s in plan.stages:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in s.components.items())
        notes = "".join(f"; {n}" for n in s.notes)
        out.print(f"  {s.stage} (GiB per GPU): {parts}{notes}", highlight=False, soft_wrap=True)


@app.command()
def plan(job: JobFile, overrides: Overrides = None, cluster: ClusterOption = None) -> None:
    """GPU memory per stage and per GPU (training: params, grads, optimizer state, activations, logits; every vLLM
    engine: weights and KV cache; smoke test; export) against the node types of the job's cluster config, from
    the config alone (no network, no storage). Exit 2 with one line when a stage cannot fit."""
    from ray_distill.planning.plan import refusal

    cfg = _load(job, overrides)
    try:
        result = _plan(cfg, job, cluster)
    except ConfigError as err:
        raise _error(err, "config error") from None
    print_plan(result)
    line = refusal(result)
    if line:
        raise _error(line, "refused")


def _refuse_unfit(cfg: JobConfig, job: str) -> None:
    """Before any compute: a job whose cluster cannot hold a stage is refused in one line (jobs naming no cluster
    are not planned; a model whose config is not at hand is logged and skipped)."""
    from ray_distill.planning.plan import refusal

    if not cfg.cluster:
        return
    try:
        line = refusal(_plan(cfg, job, None))
    except ConfigError as err:
        logger.warning("memory plan skipped: %s", redact_text(str(err)))
        return
    if line:
        raise _error(f"{line} (ray-distill plan {job} shows every stage)", "refused")


@app.command()
def run(job: JobFile, overrides: Overrides = None, verbose: Verbose = False, dry_run: DryRun = False,
        allow_over_budget: AllowOverBudget = False) -> None:
    """Run a whole DED job: generation, curation, smoke test, compression, selection, SFT, evaluation."""
    cfg = _load(job, overrides)
    if dry_run:
        if cfg.cluster:
            try:
                print_plan(_plan(cfg, job, None))
            except ConfigError as err:
                console.print(f"[yellow]memory plan skipped:[/] {redact_text(str(err))}", soft_wrap=True)
        if not print_estimates(cfg) and not allow_over_budget:
            from ray_distill.errors import EXIT_CODES, BudgetExceeded

            console.print(f"[bold red]over budget:[/] the dry run's estimate may exceed budget.max_teacher_tokens="
                          f"{cfg.budget.max_teacher_tokens:,} (--allow-over-budget: exit 0 anyway)", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(EXIT_CODES[BudgetExceeded][0])
        return
    _refuse_unfit(cfg, job)
    _setup_logging(verbose, cfg, "run")
    from ray_distill.pipeline import run_job

    result, tracker, wall, target = _tracked(cfg, job, "run", cfg.name, run_job, verbose)
    print_summary(result, wall, tracker)
    _print_where(cfg, tracker, target)


def _stage_command(job: str, overrides: list[str] | None, verbose: bool, kind: str, body) -> None:
    cfg = _load(job, overrides)
    _setup_logging(verbose, cfg, kind)
    result, tracker, wall, target = _tracked(cfg, job, kind, f"{cfg.name}-{kind}", body, verbose)
    print_summary(result, wall, tracker)
    _print_where(cfg, tracker, target)


@app.command()
def generate(job: JobFile, overrides: Overrides = None, verbose: Verbose = False) -> None:
    """Run the job up to the teacher's samples: student, questions, probe + smoke test (the teacher),
    compression, then the winner's M samples per kept question into the generation store."""
    from ray_distill.pipeline import run_job

    _stage_command(job, overrides, verbose, "generate", lambda cfg, t, r: run_job(cfg, t, r, until="generate"))


@app.command()
def curate(job: JobFile, overrides: Overrides = None, verbose: Verbose = False) -> None:
    """Run the job up to the curated corpus (verify, compress, select; stored samples are reused), written as
    chat ``messages`` under <storage>/<name>/corpus for any trainer."""
    from ray_distill.pipeline import run_job

    _stage_command(job, overrides, verbose, "curate", lambda cfg, t, r: run_job(cfg, t, r, until="corpus"))


@app.command()
def train(job: JobFile, overrides: Overrides = None, verbose: Verbose = False,
          corpus: Annotated[str | None, typer.Option(help="Corpus to train on: a corpus.jsonl/.parquet file or a directory "
                                                     "holding one, any fsspec URL (default: the job's own corpus).")] = None) -> None:
    """Fine-tune the job's base student (its `student` and `train` settings) on a chat corpus; the student is
    exported to <storage>/<name>/student."""
    from ray_distill.data.fs import join
    from ray_distill.pipeline import train_job

    cfg = _load(job, overrides)
    url = corpus or join(cfg.run_dir, "corpus")
    _stage_command(job, overrides, verbose, "train", lambda cfg, t, r: train_job(cfg, t, r, url))


@app.command(name="eval")
def eval_(job: JobFile, overrides: Overrides = None, verbose: Verbose = False,
          model: Annotated[str | None, typer.Option(help="Model to evaluate: a save_pretrained directory (any fsspec "
                                                    "URL) or a hub id org/name[@revision] (default: the job's student).")] = None) -> None:
    """Evaluate a model and the job's base student on the job's eval suites (avg@k with 95% CIs, vLLM)."""
    from ray_distill.pipeline import eval_job

    _stage_command(job, overrides, verbose, "eval", lambda cfg, t, r: eval_job(cfg, t, r, model))


@app.command()
def tune(job: JobFile, overrides: Overrides = None, verbose: Verbose = False) -> None:
    """Search data budgets with Ray Tune on stored generations; each trial = select → train → evaluate."""
    cfg = _load(job, overrides)
    _check_search(cfg)
    _setup_logging(verbose, cfg, "tune")
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
    _setup_logging(verbose, cfg, "ablate")
    from ray_distill.ablation import CURVE, run_ablation

    result, tracker, _, target = _tracked(cfg, job, "ablation", f"{cfg.name}-ablation", run_ablation, verbose)
    seeds = len(cfg.ablation.seeds)
    what = "avg@k, 95% CI over questions" if seeds == 1 else f"avg@k, mean ± sd over {seeds} seeds (range)"
    table = Table(title=f"Ablation at an equal budget of {result.budget_rows:,} training rows ({what})")
    for col in ("arm", "teacher", *dict.fromkeys(result.summary["suite"])):
        table.add_column(col)
    moves = result.summary[~result.summary["arm"].str.startswith(CURVE)]  # the curve has its own table
    for (arm, teacher), sub in moves.groupby(["arm", "teacher"], sort=False):
        table.add_row(arm, teacher, *[f"{r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if seeds == 1 else
                                      f"{r.mean:.3f} ± {r.sd:.3f} ({r.min:.3f}–{r.max:.3f})" for r in sub.itertuples()])
    if cfg.ablation.moves:  # without the per-move arms, DED at N alone is in the curve's table
        out.print(table)
    if result.curve is not None:
        curve = Table(title=f"Data-efficiency curve: DED at N = {result.budget_rows:,} rows vs random verified-correct "
                      "rows at k x N, same optimizer steps (avg@k, mean ± sd over seeds [95% CI of the mean])")
        for col in ("method", "rows", *dict.fromkeys(result.curve["suite"])):
            curve.add_column(col)
        for (method, rows), sub in result.curve.groupby(["method", "rows"], sort=False):
            curve.add_row(method, f"{rows:,}", *[f"{r.mean:.3f} ± {r.sd:.3f} [{r.seed_ci_low:.3f}, {r.seed_ci_high:.3f}]"
                                               for r in sub.itertuples()])
        out.print(curve)
    if result.paired is not None:
        paired = Table(title="DED at N minus each arm, paired by seed (mean per-seed difference "
                       "[95% paired t-interval]; seeds where DED is ahead / behind)")
        for col in ("DED minus", *dict.fromkeys(result.paired["suite"])):
            paired.add_column(col)
        for arm, sub in result.paired.groupby("baseline", sort=False):
            paired.add_row(arm, *[f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]; {r.wins}/{r.losses} of {r.seeds}"
                                  for r in sub.itertuples()])
        out.print(paired)
    out.print(f"smoke-test winner: [bold]{result.winner}[/]   best own accuracy: {result.best_accuracy_teacher}")
    _print_where(cfg, tracker, target)


def _print_where(cfg: JobConfig, tracker, target) -> None:
    """Where the outputs and the runs went, and which setting chose each (config, environment, default)."""
    out.print(f"storage: {redact(cfg.storage)} ({cfg.storage_source})", highlight=False, soft_wrap=True)
    if tracker.run_id:
        from ray_distill.environment import run_url

        out.print(f"{target.describe()}, run {tracker.run_id}", highlight=False, soft_wrap=True)
        serve, page = run_url(target.uri, tracker.experiment_id, tracker.run_id)
        if serve:
            out.print(f"MLflow UI: {serve}", highlight=False, soft_wrap=True)
        out.print(f"open the run: {page}", highlight=False, soft_wrap=True)


@app.command()
def submit(
    job: Annotated[str, typer.Argument(metavar="[COMMAND] JOB", help="The command to run on the cluster (run, tune, "
                                       "ablate, generate, curate, train, eval; default run) and its YAML job file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, then after -- the command's own "
                                                          "options, e.g. train JOB train.epochs=2 -- --corpus URL.")
                         ] = None,
    address: Annotated[str | None, typer.Option("--address", "-a", help="Ray dashboard / Jobs API URL, e.g. "
                                                "http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                                                "then $RAY_ADDRESS).")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Environment variable to pass to the job BY NAME "
                                                  "(value read here, never printed; readable through the Jobs API, so "
                                                  "secret-looking names are refused: secrets go on the nodes, "
                                                  "docs/clusters.md). Repeatable.")] = None,
    working_dir: Annotated[str, typer.Option("--working-dir", help="Directory shipped to the cluster.")] = ".",
    install: Annotated[str, typer.Option("--install", help="none (nodes have ray-distill) | pip | uv (install it "
                                         "into the job's runtime env).")] = "none",
    extra: Annotated[str, typer.Option("--extra", help="Package extra installed with --install: auto (gpu when a "
                                       "node of the cluster has GPUs, else cpu) | cpu | gpu.")] = "auto",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Stream logs and exit with the job's status.")] = True,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop the job after this many seconds.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print what would be submitted (entrypoint, "
                                          "runtime env, variables by name); contact no cluster.")] = False,
) -> None:
    """Submit a job to a Ray cluster (Ray Jobs API): validate locally, ship the working dir, run it there.
    `submit JOB` runs `ray-distill run JOB` there; `submit tune JOB` (or ablate, generate, curate, train, eval)
    runs that command."""
    from ray.exceptions import AuthenticationError

    from ray_distill.environment import submission_address
    from ray_distill.errors import MissingVariable
    from ray_distill.submit import submit_job

    command, job, overrides, command_args = split_submit_args(job, overrides or [])
    if dry_run:
        from ray_distill.errors import SubmitError
        from ray_distill.submit import build_submission

        try:
            sub = build_submission(job, overrides, env or [], working_dir, "cpu" if extra == "auto" else extra,
                                   install, command=command, command_args=command_args)  # type: ignore[arg-type]
        except ConfigError as err:
            raise _error(err, "config error") from None
        except SubmitError as err:
            raise _error(err) from None
        out.print(sub.describe(), highlight=False, soft_wrap=True)
        raise typer.Exit(0)
    try:
        address, _ = submission_address(address, os.environ)
    except ConfigError as err:
        raise _error(err) from None
    try:
        code = submit_job(job, overrides, address=address, env_names=env or [], working_dir=working_dir,
                          extra=extra, wait=wait, install=install, timeout_s=timeout,  # type: ignore[arg-type]
                          command=command, command_args=command_args)
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {escape(redact_text(str(err)))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except AuthenticationError as err:
        raise MissingVariable(f"Jobs API at {address}: {_first_line(err)} (token auth: set RAY_AUTH_MODE=token with "
                              "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from err
    except ConnectionError as err:
        raise Unreachable(f"Jobs API at {address} cannot be reached: {_first_line(err)}") from err
    raise typer.Exit(code)


def split_submit_args(first: str, rest: list[str]) -> tuple[str, str, list[str], list[str]]:
    """``(command, job, overrides, command options)`` of ``submit``'s arguments: ``[COMMAND] JOB [key=value ...]
    [-- --option value ...]`` (the first argument that starts with ``-`` begins the command's own options)."""
    from ray_distill.submit import COMMANDS

    command = "run"
    if first in COMMANDS:
        if not rest:
            raise _error(f"submit {first}: the job file is missing (submit {first} JOB [key=value ...])",
                         "config error")
        command, first, rest = first, rest[0], rest[1:]
    cut = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))
    return command, first, rest[:cut], rest[cut:]


def print_estimates(cfg: JobConfig) -> bool:
    """The dry run: per generation stage, requests, what the store already holds, expected tokens and cost;
    False when the expected teacher tokens may exceed ``budget.max_teacher_tokens``."""
    from ray_distill.pipeline import dry_run
    from ray_distill.preflight import check_protocol

    if problem := check_protocol("storage", cfg.storage):  # the estimate reads the generation store
        console.print(f"[bold red]error:[/] {problem.key}: {escape(problem.message)}: the dry run's token estimate reads the "
                      "generation store there (`ray-distill plan` needs no storage)", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    estimates = dry_run(cfg)  # a config or data error ends in one line (_guarded)
    table = Table(title=f"Dry run of {cfg.name}: teacher tokens per generation stage, before any is spent")
    for col in ("stage", "teacher", "requests", "in store", "tok/sample", "expected", "at most", "cost"):
        table.add_column(col, justify="left" if col in ("stage", "teacher") else "right")
    for e in estimates:
        table.add_row(e.stage, e.teacher, f"{e.questions:,}×{e.samples_per_question}", f"{e.cached:,}",
                      f"{e.tokens_per_sample:,.0f}" + ("" if e.length_source == "store" else "*"),
                      f"{e.expected_tokens:,.0f}", f"{e.max_tokens_total:,}", f"{e.expected_cost:,.2f}")
    out.print(table)
    probe = sum(e.expected_tokens for e in estimates if e.stage == "probe")
    worst = max((e.expected_tokens for e in estimates if e.stage != "probe" and e.role == "teacher"), default=0)
    out.print("* no stored samples of this teacher yet: sampling.max_tokens assumed per sample")
    out.print(f"expected teacher tokens: probe {probe:,.0f} + M-sample generation of the winner ≤ {worst:,.0f} "
              f"(upper bound: compression and adaptive sampling only lower it)")
    judged = [e for e in estimates if e.role == "judge"]
    if judged:
        j_probe = sum(e.expected_tokens for e in judged if e.stage == "probe/judge")
        j_worst = max((e.expected_tokens for e in judged if e.stage != "probe/judge"), default=0)
        out.print(f"expected judge tokens: at most {j_probe:,.0f} on the probe + {j_worst:,.0f} on the M samples "
                  f"({cfg.verify.judge.mode} mode; one call per sample judged, stored verdicts free)")
    cap = cfg.budget.max_teacher_tokens
    if cap is not None:
        verdict = "[green]within[/]" if probe + worst <= cap else "[red]may exceed[/]"
        out.print(f"budget.max_teacher_tokens={cap:,}: {verdict}")
    return cap is None or probe + worst <= cap


def print_summary(result, wall: float, tracker) -> None:
    """The tables of a job's result; a stage command prints those of the stages it ran."""
    acc = result.extra.get("accounting", [])
    teacher_total = sum(r["teacher_tokens"] for r in acc)
    corpus_rows = result.rows.get("diverse", 0)
    if result.ranking:
        _print_ranking(result.ranking)
    if result.rows:
        rows = Table(title="Rows kept at each stage", min_width=40)
        rows.add_column("stage")
        rows.add_column("rows", justify="right")
        for name, n in result.rows.items():
            rows.add_row(name, f"{n:,}")
        out.print(rows)
    if result.scores_after:
        scores = Table(title="Student avg@k (95% CI)", min_width=40)
        for col in ("suite", "before", "after"):
            scores.add_column(col)
        for suite, after in result.scores_after.items():
            scores.add_row(suite, _fmt_score(result.scores_before.get(suite, {})), _fmt_score(after))
        macro = result.extra.get("macro", {})
        if len(result.scores_after) > 1:  # each suite counts once, whatever its size
            for group in macro.get("after", {}):
                scores.add_row(f"macro ({group})", f"{macro.get('before', {}).get(group, float('nan')):.3f}",
                               f"{macro['after'][group]:.3f}")
        out.print(scores)
    spend = Table(title="What each stage spent", min_width=60)
    for col in ("stage", "seconds", "teacher tokens", "student tokens", "CPU-s", "GPU-s"):
        spend.add_column(col, justify="left" if col == "stage" else "right")
    for r in acc:
        spend.add_row(r["stage"], f"{r['wall_s']:.1f}", f"{r['teacher_tokens']:,}", f"{r['student_tokens']:,}",
                      f"{r['cpu_s']:.0f}", f"{r['gpu_s']:.0f}")
    spend.add_row("[bold]total[/]", f"{wall:.1f}", f"{teacher_total:,}", f"{sum(r['student_tokens'] for r in acc):,}",
                  f"{sum(r['cpu_s'] for r in acc):.0f}", f"{sum(r['gpu_s'] for r in acc):.0f}")
    for table in harness_tables(result.extra.get("harness") or {}):
        out.print(table)
    out.print(spend)
    judge_calls = sum(r.get("judge_calls", 0) for r in acc)
    if judge_calls:
        out.print(f"LLM judge: {judge_calls:,} calls, {sum(r.get('judge_tokens', 0) for r in acc):,} tokens")
    if corpus_rows:
        out.print(f"teacher tokens per kept corpus sample: {teacher_total / corpus_rows:,.1f}")
    where = {"winner": result.winner, "store": result.extra.get("store", ""), "corpus": result.corpus_dir,
             "student" if result.until != "evaluate" or result.winner else "model": result.model_path,
             "MLflow model": result.extra.get("model_uri") or ""}
    out.print("   ".join(f"{k}: [bold]{v}[/]" if k == "winner" else f"{k}: {v}" for k, v in where.items() if v))


def _print_ranking(ranking: list[dict]) -> None:
    from ray_distill.curation.smoke_test import STUDENT_SCORE, top_two_note

    by = ranking[0]["ranked_by"]
    title = ("Teacher smoke test (the best student on the dev suite wins; 95% CI)" if by == STUDENT_SCORE else
             "Teachers ranked by their own probe accuracy (smoke test off; 95% CI)")
    diagnostics = [c for c in ("teacher_accuracy", "mean_length", "entropy") if c != by]
    table = Table(title=title, min_width=60)
    for col in ("rank", "teacher", by, "train rows", *diagnostics, "reason"):
        table.add_column(col, no_wrap=col == by)  # the score and its interval on one line
    for r in ranking:
        score = "–" if r["reason"] else f"{r[by]:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        table.add_row(str(r["rank"]), r["teacher"], score, f"{r['train_rows']:,}" if r["train_rows"] else "–",
                      *[f"{r[c]:.3f}" for c in diagnostics], r["reason"])
    out.print(table)
    out.print(top_two_note(ranking))


def harness_tables(scores: dict[str, dict[str, dict[str, float]]]) -> list[Table]:
    """The lm-evaluation-harness scores (``eval.harness``) of the base student and the exported one
    (``{"before"|"after": {task: {metric: value}}}``), one row per task metric, a column each."""
    if not scores:
        return []
    table = Table(title="lm-evaluation-harness (base student, exported student)", min_width=40)
    prefixes = [p for p in ("before", "after") if p in scores]
    for col in ("task", "metric", *prefixes):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")

    def cell(metrics: dict[str, float], metric: str) -> str:
        if metric not in metrics:
            return "–"
        name, sep, flt = metric.partition("/")
        err = metrics.get(f"{name}_stderr{sep}{flt}")
        return f"{metrics[metric]:.3f}" + (f" ± {err:.3f}" if err is not None else "")

    rows = dict.fromkeys((task, metric) for p in prefixes for task, ms in scores[p].items() for metric in ms
                         if not metric.partition("/")[0].endswith("_stderr"))
    for task, metric in rows:
        table.add_row(task, metric, *[cell(scores[p].get(task, {}), metric) for p in prefixes])
    return [table]


def _fmt_score(m: dict) -> str:
    if not m:
        return "–"
    return f"{m['avg_at_k']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _guarded(command):
    """``command`` with every failure ended by :func:`_fail`; typer's own exits (and usage errors) pass."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        _where.clear()
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt too: one line, exit 130
            raise _fail(err, bool(kwargs.get("verbose"))) from None
        finally:
            if _where.get("log") is not None:  # after _fail appended the traceback to it
                _where.pop("log").close(keep_worker_lines=True)

    return guarded


def _fail(err: BaseException, verbose: bool = False) -> typer.Exit:
    """One line naming what failed and where (the user's error found inside Ray's wrappers), the traceback in a
    log file whose path the line ends with, and the exit code of the error's family (ray_distill.errors)."""
    from ray_distill.errors import EXIT_CODES, INTERRUPTED, UNEXPECTED, OutOfMemory, causes, family, label

    user_err, code = family(err)
    if code == UNEXPECTED:
        root = next(causes(err))
        name, what = "unexpected error", f"{type(root).__name__}: {_first_line(root)}"
    else:
        name, what = ("interrupted", "stopped by the user") if code == INTERRUPTED else (label(user_err),
                                                                                          _first_line(user_err))
    if code == EXIT_CODES[OutOfMemory][0]:
        what += " (`ray-distill plan JOB` shows each stage's memory per GPU and the knobs that lower it)"
    log = _write_log(err)
    console.print(f"[bold red]{name}:[/] {escape(redact_text(what))}" + (f" (traceback: {log})" if log else ""),
                  highlight=False, soft_wrap=True)
    if verbose:
        console.print(redact_text("".join(traceback.format_exception(err))), highlight=False, markup=False)
    return typer.Exit(code)


def _write_log(err: BaseException) -> str | None:
    """Append ``err``'s traceback (credentials redacted) to the job's log file: the root logger's file, else
    ``<run dir>/logs/error-<time>.log`` (local storage), else a new temporary file; its path, or None."""
    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n" + \
        redact_text("".join(traceback.format_exception(err)))
    candidates = [h.baseFilename for h in logging.getLogger().handlers
                  if isinstance(h, logging.FileHandler) and os.path.isfile(h.baseFilename)]  # not os.devnull
    run_dir = _where.get("run_dir")
    if run_dir and "://" not in run_dir:
        candidates.append(os.path.join(run_dir, "logs", f"error-{time.strftime('%Y%m%d-%H%M%S')}.log"))
    for path in candidates:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    try:
        fd, path = tempfile.mkstemp(prefix="ray-distill-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


for _command in app.registered_commands:  # after every @app.command() above
    _command.callback = _guarded(_command.callback)


# In the CLI's own process (main), what C/C++ code writes to fd 2 goes to the job's log file
# (console.JobLog.capture_native_stderr); commands run inside another process (tests) leave its fd 2 alone.
_NATIVE_STDERR_TO_LOG = False


def main() -> None:  # pragma: no cover - entry point
    global _NATIVE_STDERR_TO_LOG
    _NATIVE_STDERR_TO_LOG = True
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
