"""Screenshots of what MLflow's UI shows for a job (docs/mlflow.md): the job's run (description, datasets),
the stage tree, the smoke test's teacher ranking chart, the training loss curve and the logged student.

    python scripts/mlflow_screenshots.py sqlite:///outputs/mlflow.db quickstart docs/mlflow

Starts ``mlflow server`` on the store (loopback, a free port) and Chromium headless (Debian's ``chromium``
package) on each page; needs nothing else. The job's newest run of that name is the one shown."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from mlflow import MlflowClient

from ray_distill.environment import MODEL_TRAINING_VIEW

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pages(client: MlflowClient, run_name: str, experiment: str) -> dict[str, str]:
    """``{file name: page (the part after the UI's address)}`` of the job's newest run named ``run_name``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in this store")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'", order_by=["start_time DESC"])
    if not runs:
        raise SystemExit(f"no run named {run_name!r} in experiment {experiment!r}")
    job = runs[0]
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{job.info.run_id}'")}
    base = f"#/experiments/{exp.experiment_id}"
    shots = {"run.png": f"{base}/runs/{job.info.run_id}", "stages.png": base}
    if "smoke_test" in children:
        smoke = children["smoke_test"].info.run_id
        shots["teacher_ranking.png"] = f"{base}/runs/{smoke}/artifacts/teacher_ranking.png"
    if "train" in children:
        shots["train_loss.png"] = f"{base}/runs/{children['train'].info.run_id}/model-metrics"
    models = [m for m in client.search_logged_models([exp.experiment_id]) if m.source_run_id == job.info.run_id]
    if models:
        shots["student_model.png"] = f"{base}/models/{models[0].model_id}"
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="MLflow tracking URI of the job (e.g. sqlite:///outputs/mlflow.db)")
    ap.add_argument("run_name", help="the job's name (its MLflow run)")
    ap.add_argument("out", help="folder for the PNG files")
    ap.add_argument("--experiment", default="ray-distill")
    ap.add_argument("--size", default="1440,1800", help="window size W,H")
    ap.add_argument("--wait-ms", type=int, default=20000, help="virtual time Chromium gives each page to load")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Chromium (Debian: apt-get install chromium)")
    shots = pages(MlflowClient(args.store), args.run_name, args.experiment)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ui = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(ui + "health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("mlflow server did not start")
        os.makedirs(args.out, exist_ok=True)
        for name, page in shots.items():
            path = os.path.abspath(os.path.join(args.out, name))
            page += ("&" if "?" in page else "?") + MODEL_TRAINING_VIEW
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}",
                                f"--virtual-time-budget={args.wait_ms}", f"--screenshot={path}", ui + page],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
            print(f"{path}  <-  {ui}{page}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
