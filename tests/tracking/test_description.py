"""The parent run's MLflow description: the job's story in markdown."""

import re

import pytest

from ray_distill.config import ConfigError, config_from_dict
from ray_distill.pipeline import JobResult
from ray_distill.tracking.description import describe


def _ranking():
    return [{"rank": 1, "teacher": "concise", "student_score": 0.42, "ci_low": 0.3, "ci_high": 0.5, "train_rows": 120,
             "reason": "", "ranked_by": "student_score"},
            {"rank": 2, "teacher": "sloppy", "student_score": float("nan"), "ci_low": 0, "ci_high": 0, "train_rows": 0,
             "reason": "no verified rows", "ranked_by": "student_score"}]


def test_a_whole_job_tells_teacher_rows_scores_and_where():
    result = JobResult(run_dir="out/q", winner="concise", ranking=_ranking(), rows={"questions": 1200, "diverse": 640},
                       scores_before={"arith": {"avg_at_k": 0.1}},
                       scores_after={"arith": {"avg_at_k": 0.55, "ci_low": 0.5, "ci_high": 0.6}},
                       corpus_dir="out/q/corpus", model_path="out/q/student")
    text = describe(result, 330.0, "models:/m-1")
    assert text.startswith("**ray-distill run** in 5.5 min\n")
    assert "Teacher: **concise** (ranked by `student_score`)" in text
    assert re.search(r"^1     concise  0\.420          \[0\.300, 0\.500\]  120$", text, re.M), text
    assert re.search(r"^2     sloppy   –              –               –           no verified rows$", text, re.M)
    assert re.search(r"^questions  1,200$", text, re.M) and re.search(r"^diverse    640$", text, re.M)
    assert re.search(r"^arith  0\.100   0\.550  \[0\.500, 0\.600\]$", text, re.M), text
    assert text.count("```") == 6  # three tables, each a code block: columns line up in MLflow's run page
    assert "- corpus: `out/q/corpus`" in text and "- MLflow model: `models:/m-1`" in text


def test_a_stage_command_names_itself_and_leaves_out_what_it_did_not_run():
    text = describe(JobResult(run_dir="out/q", rows={"corpus": 10}, model_path="out/q/student", until="train"))
    assert text.startswith("**ray-distill train**\n") and "Teacher" not in text and "avg@k" not in text
    assert re.search(r"^corpus  10$", text, re.M) and "MLflow model" not in text


def test_registering_needs_a_logged_model():
    base = {"questions": {"synthetic": {}}, "teachers": [{"name": "t", "engine": {"persona": "concise"}}]}
    assert config_from_dict({**base, "tracking": {"register_model": True}}).tracking.register_model is True
    assert config_from_dict({**base, "tracking": {"register_model": "my-student"}}).tracking.register_model == "my-student"
    with pytest.raises(ConfigError, match="tracking: .*register_model needs log_model: true"):
        config_from_dict({**base, "tracking": {"register_model": True, "log_model": False}})


def test_text_tables_line_their_columns_up():
    from ray_distill.tracking.description import text_table

    assert text_table(["a", "long header"], [["wide cell", "1"], ["x", "22"]]) == [
        "```", "a          long header", "---------  -----------", "wide cell  1", "x          22", "```"]
