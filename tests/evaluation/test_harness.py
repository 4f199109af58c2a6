"""lm-evaluation-harness on the exported student (``eval.harness``): the pure pieces, and one real run of the
shipped custom task (jobs/harness/max_ood.yaml over a local JSON-lines file) on a tiny student with lm_eval's
vLLM backend (CPU), its scores logged to MLflow and shown in the summary table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ray_distill.config import ConfigError, HarnessConfig, StudentConfig, config_from_dict
from ray_distill.evaluation.harness import harness_model_args, harness_scores, metric_name

HARNESS_DIR = Path(__file__).resolve().parents[2] / "jobs" / "harness"


def test_metric_names_and_scores_from_the_results_table():
    assert metric_name("t", "exact_match,boxed") == "exact_match/boxed"
    assert metric_name("t", "acc,none") == "acc" and metric_name("t", "acc_norm") == "acc_norm"
    scores = harness_scores({"t": {"alias": "t", "name": "t", "sample_len": 8, "exact_match,boxed": 0.25,
                                   "exact_match_stderr,boxed": 0.1, "acc_stderr,none": "N/A", "flag": True}})
    assert scores == {"t": {"exact_match/boxed": 0.25, "exact_match_stderr/boxed": 0.1}}


def test_model_args_follow_the_students_serving_settings():
    student = StudentConfig(serving={"max_model_len": 256})
    cfg = HarnessConfig(tasks=["x"], model_args={"seed": 3})
    args = harness_model_args("/m", cfg, student)
    assert args == {"pretrained": "/m", "dtype": "float32", "tensor_parallel_size": 1, "enforce_eager": True,
                    "max_model_len": 256, "enable_chunked_prefill": False, "seed": 3}
    on_gpu = StudentConfig(serving={"resources": {"num_gpus": 1}})
    hf = harness_model_args("org/name@v1", cfg.model_copy(update={"backend": "hf", "batch_size": 4}), on_gpu)
    assert hf == {"pretrained": "org/name", "revision": "v1", "dtype": "auto", "device": "cuda", "batch_size": 4,
                  "seed": 3}


def test_harness_config_errors_are_one_line():
    base = {"questions": {"synthetic": {}}, "teachers": [{"name": "t", "engine": {"persona": "concise"}}]}
    with pytest.raises(ConfigError, match="eval.harness.tasks: List should have at least 1 item"):
        config_from_dict({**base, "eval": {"harness": {"tasks": []}}})
    with pytest.raises(ConfigError, match="eval.harness.backend: Input should be 'vllm' or 'hf'"):
        config_from_dict({**base, "eval": {"harness": {"tasks": ["a"], "backend": "sglang"}}})


def test_shipped_task_reads_a_local_file():
    task = yaml.safe_load((HARNESS_DIR / "max_ood.yaml").read_text())
    assert task["dataset_path"] == "json"
    data = HARNESS_DIR / task["dataset_kwargs"]["data_files"]["test"]
    assert data.exists() and len(data.read_text().splitlines()) == 8


@pytest.mark.slow
def test_harness_task_on_the_tiny_student_with_vllm(ray_local, tiny_student_path, tmp_path):
    from ray_distill import pipeline as P
    from ray_distill.cli import harness_tables
    from ray_distill.tracking import start_tracker

    cfg = config_from_dict({
        "storage": str(tmp_path), "questions": {"synthetic": {}},
        "teachers": [{"name": "t", "engine": {"persona": "concise"}}],
        "student": {"serving": {"max_model_len": 256}},
        "eval": {"harness": {"tasks": ["ray_distill_max_ood"], "include_path": str(HARNESS_DIR)}},
    })
    tracker = start_tracker(True, None, "harness-test", cfg.storage, run_name="evaluate")
    scores = P.evaluate_harness(cfg, tiny_student_path, tracker, prefix="after")

    assert list(scores) == ["ray_distill_max_ood"]
    em = scores["ray_distill_max_ood"]["exact_match/boxed"]
    assert 0.0 <= em <= 1.0  # a random student: the plumbing is the point, not the score
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert metrics["after/harness/ray_distill_max_ood/exact_match/boxed"] == em
    (table,) = harness_tables(scores)
    assert table.row_count == 1
    tracker.end()


def test_readme_shows_the_tested_files_verbatim():
    """The README's judge/harness YAML blocks are excerpts of jobs/judge_harness.yaml and the harness task, which
    the dry-run and harness tests run."""
    readme = (HARNESS_DIR.parents[1] / "README.md").read_text()
    section = readme.split("### Verifying with an LLM judge", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    job = (HARNESS_DIR.parent / "judge_harness.yaml").read_text()
    task = (HARNESS_DIR / "max_ood.yaml").read_text()
    assert len(blocks) == 2 and blocks[0] in job and blocks[1] in task and len(blocks[1]) > 300
