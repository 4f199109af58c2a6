"""Keys never print: canary values in the environment (the variable a hosted teacher's api_key_env names, whose
name does not look secret, and HF_TOKEN, AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY), then the real CLI in a
subprocess: `validate`, `submit --dry-run`, and a tiny job against the stub OpenAI-compatible server (its first
reply a 429 whose body echoes the Authorization header, as a careless proxy would). No canary in the console,
the MLflow params and tags, the run's artifacts, or anything else under the job's storage; the key did reach
the server. Then Ray's forwarding of worker output to the driver's console, with a worker that prints them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANARIES = {
    "TEACHER_ACCESS": "tk-canary-7d41c9e0a2b8f356",  # named by api_key_env; not a secret-looking name
    "HF_TOKEN": "hf_CanaryQx8Lm2Vb7Nc4Zp1",
    "AWS_SECRET_ACCESS_KEY": "awsCanary9Jt5Wq3Er7Ty1Ui",
    "OPENAI_API_KEY": "sk-canary-Gh6Jk2Lm8Np4",
}
# What the job's command costs: `generate` (questions, the hosted teacher's samples into the store, one MLflow
# run). A whole `run` (base student, Ray Train, vLLM evaluation) takes minutes on 2 cores and reaches the engine
# the same way.
JOB = """\
name: canary
storage: {storage}
seed: 0
questions:
  synthetic: {{family: arith, num_questions: 6, min_difficulty: 1, max_difficulty: 2, seed: 1}}
teachers:
  - name: hosted
    engine: {{kind: openai, model: stub, base_url: '{base_url}', api_key_env: TEACHER_ACCESS, max_concurrency: 4,
              retry_backoff_s: 0.01, requests_per_minute: 6000}}
    sampling: {{temperature: 0.8, max_tokens: 64}}
    resources: {{num_actors: 1, batch_size: 6, num_cpus: 0.5}}
student: {{preset: tiny, base_epochs: 0}}
format: {{require_think: true, max_tokens: 64}}
smoke_test: {{enabled: false}}
dev: {{num_questions: 2}}
compression: {{enabled: false}}
selection: {{samples_per_question: 2, keep_per_question: 1}}
train: {{num_workers: 1, epochs: 1, batch_size: 8, max_seq_len: 128}}
eval:
  k: 1
  max_tokens: 32
  suites:
    - {{name: tiny, domain: in_domain, synthetic: {{family: arith, num_questions: 2, min_difficulty: 1, max_difficulty: 2, seed: 9}}}}
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(CANARIES, COLUMNS="200", RAY_DEDUP_LOGS="0")
    return subprocess.run([sys.executable, "-m", "ray_distill.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _leaks(text: str) -> list[str]:
    return [name for name, value in CANARIES.items() if value in text]


@pytest.mark.slow  # a job's stage command end to end (Ray, Ray Data, MLflow): ~1 min on an idle 2-core machine
def test_canary_keys_reach_the_server_and_nothing_else(openai_stub, tmp_path, secrets_in_files):
    from mlflow import MlflowClient

    storage = tmp_path / "storage"
    job = tmp_path / "canary.yaml"
    headers = {"retry-after-ms": "50"}
    with openai_stub(fail_first=1, fail_headers=headers) as server:
        job.write_text(JOB.format(storage=storage, base_url=server.base_url))
        checks = {
            "validate": _cli("validate", str(job), cwd=tmp_path),
            "submit --dry-run": _cli("submit", str(job), "--dry-run", "--working-dir", str(tmp_path), cwd=tmp_path),
            "submit --dry-run --env HF_TOKEN": _cli("submit", str(job), "--dry-run", "--env", "HF_TOKEN",
                                                    "--working-dir", str(tmp_path), cwd=tmp_path),
            "validate, a key pasted into api_key_env": _cli(
                "validate", str(job), f"teachers.0.engine.api_key_env={CANARIES['OPENAI_API_KEY']}", cwd=tmp_path),
        }
        start = time.monotonic()
        checks["generate"] = _cli("generate", str(job), cwd=tmp_path)
        generate_s = time.monotonic() - start
    expected_rc = {"validate": 0, "submit --dry-run": 0, "submit --dry-run --env HF_TOKEN": 2,
                   "validate, a key pasted into api_key_env": 2, "generate": 0}
    for name, proc in checks.items():
        console = proc.stdout + proc.stderr
        assert proc.returncode == expected_rc[name], (name, console[-4000:])
        assert not _leaks(console), (name, _leaks(console))
    assert "a key seems to have been pasted" in checks["validate, a key pasted into api_key_env"].stderr
    assert "a secret never travels with the job" in checks["submit --dry-run --env HF_TOKEN"].stderr
    logs = "".join(p.read_text() for p in (storage / "canary" / "logs").glob("*.log"))  # the job's log file
    assert "retry 1/5" in logs + checks["generate"].stdout + checks["generate"].stderr  # the 429, key blanked

    # the key did its job: every request carried it (the first got the 429 that echoed it back)
    assert len(server.requests) >= 3 and {auth for _, auth in server.requests} == {
        f"Bearer {CANARIES['TEACHER_ACCESS']}"}

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        assert not _leaks(repr(run.data.params)) and not _leaks(repr(run.data.tags)), run.info.run_name
    assert any(r.data.params.get("teachers.0.engine.api_key_env") == "TEACHER_ACCESS" for r in runs)  # the name
    artifacts = [p for p in storage.rglob("*") if p.is_file() and "mlartifacts" in p.parts]
    assert artifacts  # the run logged some
    assert not secrets_in_files(storage, CANARIES)  # artifacts, mlflow.db, the generation store, rejects, ...
    print(f"generate took {generate_s:.1f} s")


@pytest.mark.slow  # a stage command on Ray (~30 s on an idle 2-core machine)
@pytest.mark.parametrize("status, code, label, said", [
    (401, 11, "key refused", "answered 401 (AuthenticationError) to the key in TEACHER_ACCESS"),
    (404, 12, "engine failing", "2 of its first 2 requests failed (2 x NotFoundError)"),  # a wrong model name
])
def test_a_server_that_refuses_the_requests_stops_the_job_in_one_line(status, code, label, said, openai_stub, tmp_path):
    """Every request answered 401: `generate` stops at the first refusal with one line naming the teacher's
    server and the key's variable (exit 11), having sent no more than the first requests in flight. Every
    request answered 404 (not retried): it stops once the first requests' failure rate is certain (exit 12)."""
    storage = tmp_path / "storage"
    job = tmp_path / "refused.yaml"
    with openai_stub(fail_first=10**6, fail_status=status) as server:
        job.write_text(JOB.format(storage=storage, base_url=server.base_url))
        proc = _cli("generate", str(job), "teachers.0.engine.error_window=2", "teachers.0.engine.max_concurrency=1",
                    cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{label}: ")]
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(lines) == 1 and "stub at http://127.0.0.1:" in lines[0] and said in lines[0], lines
    assert not _leaks(proc.stdout + proc.stderr)
    assert 1 <= len(server.requests) <= 2, len(server.requests)  # no retry, nothing sent after the stop


DRIVER = """
import os, sys, time
import ray
from ray_distill.config import load_config
from ray_distill.runtime import init_ray

init_ray(load_config(sys.argv[1], ["ray.num_cpus=1"]))  # the job's own start-up: log_to_driver on

@ray.remote(num_cpus=0)
def chatty():
    print("worker key", os.environ["TEACHER_API_KEY"], flush=True)
    print("worker uri https://user:" + os.environ["HF_TOKEN"] + "@h/x", file=sys.stderr, flush=True)
    return True

assert ray.get(chatty.remote())
time.sleep(2)  # forwarded lines arrive on their own thread
ray.shutdown()
print("driver done", flush=True)
"""


def test_worker_lines_forwarded_to_the_driver_console_are_redacted(tmp_path):
    """A worker of a cluster the job started prints a secret variable's value and a URI with a password: the
    driver's console shows both lines masked (tests/test_redact.py shows Ray's printer without the wrapping
    printing them as they came)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TEACHER_API_KEY=CANARIES["TEACHER_ACCESS"], HF_TOKEN=CANARIES["HF_TOKEN"], RAY_DEDUP_LOGS="0")
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "jobs" / "cluster_smoke.yaml")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "driver done" in console, console[-3000:]
    assert "worker key ***" in console and "worker uri https://***@h/x" in console, console[-3000:]
    assert not _leaks(console)
