"""Crash resume and multi-node, on real Ray clusters.

- A Ray Train worker process is SIGKILLed mid-run: Ray Train restarts the worker group
  (``max_failures=1``), every rank reads the last step checkpoint (sharded: both ranks wrote part of it),
  skips the steps already done, and gives the same loss curve (every epoch's loss) as an uninterrupted
  run (tolerance 1e-4, relative: the resume is exact up to float summation order). FSDP's resume from
  its shards is in ``test_strategies``.
- Multi-node training (two 2-CPU workers, one per node of a two-node cluster) is in ``tests/test_submit.py``,
  beside the other tests of that cluster (one module fixture, so one pytest-xdist worker starts it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ray_distill.config import TrainConfig
from ray_distill.synthetic.tasks import base_corpus
from ray_distill.training import train_sft

ROOT = Path(__file__).resolve().parents[2]


def alive_train_worker_pids() -> list[int]:
    """Pids of the live Ray Train worker actors of this Ray session (from the GCS actor table)."""
    from ray._private.state import state

    return [a["Pid"] for a in state.actor_table(None).values()
            if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]


def registered_step_checkpoint(storage: Path) -> bool:
    """True once Ray Train's controller has registered a step checkpoint (it polls the workers every
    few seconds, so a checkpoint directory can exist before a restart would use it)."""
    return any("step_" in p.read_text() for p in storage.glob("kill-*/checkpoint_manager_snapshot.json"))


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(ray_local, tiny_student_path, tmp_path):
    rows = base_corpus(240, seed=2)
    cfg = TrainConfig(num_workers=2, epochs=3, batch_size=8, lr=3e-3, max_seq_len=64, checkpoint_every_steps=8,
                      max_failures=1)
    storage = tmp_path / "ray"
    out: dict = {}

    def fit() -> None:
        try:
            out["result"] = train_sft(rows, tiny_student_path, str(tmp_path / "student"), cfg,
                                      storage_path=str(storage), run_name="kill")
        except BaseException as err:  # re-raised in the test thread
            out["error"] = err

    thread = threading.Thread(target=fit)
    thread.start()
    deadline = time.time() + 300  # Ray Train starts slowly on a loaded machine
    while not registered_step_checkpoint(storage) and time.time() < deadline and thread.is_alive():
        time.sleep(0.1)
    pids = alive_train_worker_pids()
    assert registered_step_checkpoint(storage) and len(pids) == 2, (out, pids)
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    m = out["result"].metrics
    assert m["restarts"] == 1 and 8 <= m["resumed_from_step"] < 90  # from a checkpoint, not from scratch
    assert m["epochs"] == 3 and m["steps"] == 90  # 30 steps per epoch: done steps were skipped, not repeated

    reference = train_sft(rows, tiny_student_path, str(tmp_path / "reference"), cfg,
                          storage_path=str(tmp_path / "ray-reference"), run_name="kill").metrics
    assert reference["restarts"] == 0 and reference["steps"] == 90
    assert m["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert len(m["epoch_losses"]) == 3 and m["epoch_losses"] == pytest.approx(reference["epoch_losses"], rel=1e-4)
    # the checkpoints are sharded: one file per rank (DDP's replicated state split between them), rank 0's metadata
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(out["result"].checkpoint_path))
    assert m["initial_loss"] == pytest.approx(reference["initial_loss"], rel=1e-4)
    assert m["supervised_tokens"] == reference["supervised_tokens"]


KILLED_DRIVER = """
import json, sys
import ray
from ray_distill.config import TrainConfig
from ray_distill.synthetic.tasks import base_corpus
from ray_distill.training import train_sft

args = json.loads(sys.argv[1])
ray.init(address=args["address"], log_to_driver=False, configure_logging=False)
train_sft(base_corpus(240, seed=2), args["student"], args["out"], TrainConfig.model_validate(args["cfg"]),
          storage_path=args["storage"], run_name="kill")
print("finished")
"""


@pytest.mark.slow
def test_killed_driver_rerun_resumes_from_the_last_checkpoint(ray_local, tiny_student_path, tmp_path):
    """The driver (the job's process: `ray-distill run`) is SIGKILLed mid-training; its Ray Train run dies
    with it. The rerun of the same training (same storage, run name and inputs) resumes from the last
    registered checkpoint instead of step 0, and finishes every step exactly once."""
    cfg = TrainConfig(num_workers=1, epochs=2, batch_size=8, lr=3e-3, max_seq_len=64, checkpoint_every_steps=6)
    storage = tmp_path / "ray"
    args = {"address": ray_local.get_runtime_context().gcs_address, "student": tiny_student_path,
            "out": str(tmp_path / "student"), "storage": str(storage), "cfg": cfg.model_dump()}
    driver = subprocess.Popen([sys.executable, "-c", KILLED_DRIVER, json.dumps(args)], start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not registered_step_checkpoint(storage) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.1)
        assert registered_step_checkpoint(storage), driver.poll()
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert b"finished" not in driver.stdout.read().splitlines()  # its own last line (Ray Data logs "finished" too)
    deadline = time.time() + 60  # the dead driver's workers go with its job
    while alive_train_worker_pids() and time.time() < deadline:
        time.sleep(0.2)

    m = train_sft(base_corpus(240, seed=2), tiny_student_path, str(tmp_path / "student"), cfg,
                  storage_path=str(storage), run_name="kill").metrics
    assert m["restarts"] == 1 and 6 <= m["resumed_from_step"] < m["steps"], m  # from a checkpoint, not step 0
    assert m["epochs"] == 2 and m["steps"] == 60  # 30 steps per epoch, each done once
