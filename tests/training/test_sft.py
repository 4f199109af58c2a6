"""End to end on a real local Ray cluster: 2 Ray Train workers fine-tune the 'micro' student."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ray_distill.config import TrainConfig
from ray_distill.synthetic.tasks import base_corpus
from ray_distill.training import train_sft

pytestmark = pytest.mark.slow  # real Ray Train / vLLM: not a unit test (make test-fast skips it)


VLLM_GENERATE = """
import json, sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
prompt = llm.get_tokenizer().apply_chat_template([{"role": "user", "content": "3+4"}], tokenize=False)
out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=24))[0].outputs[0]
print(json.dumps({"prompt": prompt, "text": out.text, "tokens": len(out.token_ids)}))
"""


def epoch_dirs(root) -> list[str]:
    (run,) = [d for d in os.listdir(root / "ray") if d.startswith("sft-test-")]  # name + input fingerprint
    return sorted(d for d in os.listdir(root / "ray" / run) if d.startswith("epoch_"))


@pytest.fixture(scope="module")
def trained(ray_local, tiny_student_path, tmp_path_factory):
    from ray_distill.tracking import MLflowTracker

    root = tmp_path_factory.mktemp("sft")
    tracker = MLflowTracker.create(f"sqlite:///{root}/mlflow.db", "test-sft", "sft", artifact_location=str(root / "mlartifacts"))
    cfg = TrainConfig(num_workers=2, epochs=2, batch_size=16, lr=3e-3, max_seq_len=64)
    result = train_sft(
        base_corpus(200, seed=1), tiny_student_path, str(root / "student"), cfg,
        storage_path=str(root / "ray"), run_name="sft-test", tracker_handle=tracker.handle(),
    )
    return result, root, cfg, tracker


def test_loss_falls_and_metrics_are_complete(trained):
    result, _, _, _ = trained
    m = result.metrics
    assert m["epochs"] == 2 and m["steps"] == 26  # ceil(200 / 16) = 13 steps per epoch
    assert m["initial_loss"] == pytest.approx(4.6593, abs=2e-3)  # pinned: random 'micro' student, seed 0
    assert m["train_loss"] < 0.7 * m["initial_loss"]
    assert m["non_pad_fraction"] > 0.95 and m["tokens_per_s"] > 0
    assert 0 < m["startup_s"] < m["wall_s"]
    assert m["preflight_supervised_fraction"] > 0.5 and m["truncated_rows"] == 0
    # each worker read from the tokenized dataset only its share of an epoch's batches: about half the corpus
    held = m["held_rows_by_rank"]
    assert len(held) == 2 and sum(held) >= 200 and m["held_rows_max"] == max(held) <= 200 // 2 + 13


def test_export_loads_with_transformers(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ray_distill.synthetic.student import CHAT_TEMPLATE

    result, root, _, _ = trained
    assert result.model_path == str(root / "student")
    model = AutoModelForCausalLM.from_pretrained(result.model_path)
    tok = AutoTokenizer.from_pretrained(result.model_path)
    assert tok.chat_template == CHAT_TEMPLATE
    assert model.config.vocab_size == len(tok)


def test_checkpoint_under_storage_and_tracked_metrics(trained):
    result, root, _, tracker = trained
    assert result.checkpoint_path.startswith(str(root / "ray" / "sft-test-"))
    # sharded (torch.distributed.checkpoint): one file per rank, rank 0's metadata and loop state
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json"} <= set(os.listdir(result.checkpoint_path))
    assert epoch_dirs(root) == ["epoch_0001", "epoch_0002"]
    assert result.checkpoint_path.endswith("epoch_0002")
    losses = tracker.client.get_metric_history(tracker.run_id, "train/loss")
    assert [x.step for x in losses][:2] == [1, 10] and losses[0].value > losses[-1].value
    assert tracker.client.get_run(tracker.run_id).data.metrics["train/preflight_supervised_fraction"] > 0.5
    assert [x.step for x in tracker.client.get_metric_history(tracker.run_id, "train/non_pad_fraction")] == [13, 26]
    logged = {os.path.basename(a.path) for a in tracker.client.list_artifacts(tracker.run_id, "student")}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= logged


def test_export_generates_with_vllm_on_cpu(trained):
    """The exported directory is all vLLM needs: weights, config, tokenizer and chat template."""
    result, _, _, _ = trained
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    proc = subprocess.run([sys.executable, "-c", VLLM_GENERATE, result.model_path], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["prompt"] == "3+4=" and out["tokens"] > 0 and out["text"]


def test_rerun_resumes_from_the_last_checkpoint(trained, tiny_student_path):
    result, root, cfg, _ = trained
    more = cfg.model_copy(update={"epochs": 3})
    again = train_sft(base_corpus(200, seed=1), tiny_student_path, str(root / "student3"), more,
                      storage_path=str(root / "ray"), run_name="sft-test")
    assert again.metrics["epochs"] == 3 and again.metrics["steps"] == 39  # one more epoch, not three
    assert again.metrics["initial_loss"] == pytest.approx(result.metrics["initial_loss"])
    assert again.metrics["train_loss"] < result.metrics["train_loss"]
    assert again.checkpoint_path.endswith("epoch_0003")
    assert 0 < again.metrics["startup_s"] < again.metrics["wall_s"]
    assert epoch_dirs(root) == ["epoch_0002", "epoch_0003"]  # num_to_keep=2


def test_worker_env_sets_the_mmap_threshold_for_fsdp_only(monkeypatch):
    from ray_distill.training.sft import worker_env

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert worker_env(TrainConfig(strategy="ddp")) == {}  # a per-allocation mmap slows small DDP steps ~1.5x
    assert worker_env(TrainConfig(strategy="fsdp")) == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")
    assert worker_env(TrainConfig(strategy="fsdp")) == {"MALLOC_MMAP_THRESHOLD_": "4194304"}


def test_one_launch_trains_each_job_as_a_launch_of_its_own(ray_local, tiny_student_path, tmp_path):
    """train_sft_many: two corpora in one Ray Train launch (one worker-group start) give the same students
    and figures as two train_sft launches; a rerun resumes at the last job instead of training again."""
    from safetensors.torch import load_file

    from ray_distill.training.sft import SFTJob, train_sft_many

    cfg = TrainConfig(num_workers=2, epochs=1, batch_size=16, lr=3e-3, max_seq_len=64)
    corpora = [base_corpus(64, seed=1), base_corpus(48, seed=2)]
    alone = [train_sft(rows, tiny_student_path, str(tmp_path / f"alone{i}"), cfg, storage_path=str(tmp_path / "ray"),
                       run_name=f"alone{i}", log_model=False) for i, rows in enumerate(corpora)]
    jobs = [SFTJob(rows, str(tmp_path / f"together{i}")) for i, rows in enumerate(corpora)]
    together = train_sft_many(jobs, tiny_student_path, cfg, storage_path=str(tmp_path / "ray"), run_name="both",
                              log_model=False)
    for a, b in zip(alone, together):
        assert b.metrics["steps"] == a.metrics["steps"] and b.metrics["rows"] == a.metrics["rows"]
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
        wa, wb = load_file(f"{a.model_path}/model.safetensors"), load_file(f"{b.model_path}/model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert 0 < b.metrics["startup_s"] < b.metrics["wall_s"]
    assert together[0].checkpoint_path is None and together[1].checkpoint_path.endswith("job01-epoch_0001")
    (run,) = [d for d in os.listdir(tmp_path / "ray") if d.startswith("both-")]
    assert sorted(os.listdir(tmp_path / "ray" / run / "jobs")) == ["job00.json", "job01.json"]

    again = train_sft_many(jobs, tiny_student_path, cfg, storage_path=str(tmp_path / "ray"), run_name="both",
                           log_model=False)
    assert again[1].metrics["restarts"] == 1 and again[1].metrics["steps"] == together[1].metrics["steps"]
    assert again[0].metrics == {**together[0].metrics, "wall_s": again[0].metrics["wall_s"],
                                "startup_s": again[0].metrics["startup_s"]}  # job 0 was done: not trained again
