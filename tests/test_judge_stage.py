"""The LLM judge inside the pipeline's verify step on the real components (local Ray, the grader and judge actor
pools, the generation store, MLflow): a scripted judge in fallback mode decides the rows math-verify cannot
(text references), its verdicts reach the rejected rows and MLflow, its calls the stage record and the dry run,
and a rerun makes no judge call."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill import pipeline as P
from ray_distill.curation.driver import verify
from ray_distill.config import config_from_dict
from ray_distill.curation import judge as J
from ray_distill.generation.store import GenerationStore
from ray_distill.progress import StageRunner
from ray_distill.tracking import start_tracker

pytestmark = pytest.mark.slow

# Text-answer questions (math-verify reads "Paris" as the product P*a*r*i*s, so the judge decides them) and math
# ones (math-verify decides; fallback mode never sends them to the judge).
QUESTIONS = [
    {C.QUESTION_ID: "fr", C.QUESTION: "Capital of France?", C.ANSWER: "Paris"},
    {C.QUESTION_ID: "it", C.QUESTION: "Capital of Italy?", C.ANSWER: "Rome"},
    {C.QUESTION_ID: "m1", C.QUESTION: "2+2?", C.ANSWER: "4"},
    {C.QUESTION_ID: "m2", C.QUESTION: "3+4?", C.ANSWER: "7"},
]
ANSWERS = {"fr": ["Paris.", "Paris", "Lyon"], "it": ["Milan", "Rome", "Rome"], "m1": ["4", "5", "4"], "m2": ["7", "7", "1"]}


def samples() -> pd.DataFrame:
    """Teacher samples as the generation store returns them (three per question)."""
    rows = []
    for q in QUESTIONS:
        for i, a in enumerate(ANSWERS[q[C.QUESTION_ID]]):
            rows.append({**q, C.FAMILY: "trivia", C.DIFFICULTY: -1, C.TESTS: "", C.PROMPT: q[C.QUESTION],
                         C.TEACHER: "t", C.SAMPLE_INDEX: i, C.SEED: i, C.COMPLETION: f"<think>hm</think>\\boxed{{{a}}}",
                         C.NUM_TOKENS: 10, C.FINISH_REASON: "stop", C.ERROR: "", C.PROMPT_TOKENS: 3})
    return pd.DataFrame(rows)[C.GENERATION_COLUMNS]


def test_judge_in_verify_rejects_mlflow_and_a_free_rerun(ray_local, tmp_path):
    cfg = config_from_dict({
        "storage": str(tmp_path), "questions": {"synthetic": {"num_questions": 4}}, "dev": {"num_questions": 1},
        "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}],
        "verify": {"judge": {"mode": "fallback", "engine": {"kind": "scripted", "persona": "judge"},
                             "resources": {"batch_size": 4}}},
    })
    tracker = start_tracker(True, None, "judge-test", cfg.storage, run_name="verify")
    runner = StageRunner(tracker)
    with runner.stage("verify") as (t, rec):
        graded = verify(cfg, samples(), None, t, rec)

    by_row = graded.set_index([C.QUESTION_ID, C.SAMPLE_INDEX]).sort_index()
    text = by_row.loc[["fr", "it"]]
    assert (text[C.JUDGE_VERDICT] != "").all() and not text[C.MATH_VERIFY_DECIDED].any()
    # the scripted judge: case, spaces and a trailing period do not matter (math-verify rejects "Paris.": rescued)
    assert text[C.CORRECT].tolist() == [True, True, False, False, True, True]
    assert by_row.loc[("fr", 2), C.REASON] == J.R_JUDGE_INCORRECT
    math_rows = by_row.loc[["m1", "m2"]]
    assert (math_rows[C.JUDGE_VERDICT] == "").all() and math_rows[C.MATH_VERIFY_DECIDED].all()
    assert math_rows[C.CORRECT].tolist() == [True, False, True, True, True, False]
    assert rec.judge_calls == 5 and rec.judge_tokens > 0  # 6 text rows, the two "Rome" rows share one prompt
    assert rec.judge_calls == graded.loc[graded[C.JUDGE_VERDICT] != "", C.COMPLETION].nunique()

    # verdicts and reasons are columns of the rejected rows (the rejects file takes them as they are) and reach MLflow
    judged = graded[graded[C.REASON] == J.R_JUDGE_INCORRECT]
    assert set(zip(judged[C.QUESTION_ID], judged[C.SAMPLE_INDEX])) == {("fr", 2), ("it", 0)}
    assert judged[C.JUDGE_OUTPUT].str.endswith("VERDICT: INCORRECT").all()
    child = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")[0]
    metrics = child.data.metrics
    assert metrics["judge_calls"] == 5 and metrics["judge/calls"] == 5 and metrics["judge/verdict_incorrect"] == 2
    assert metrics["judge/rescued"] >= 1

    # the dry run counts the judge's calls apart from the teachers' (its samples are not in the store here)
    estimates = P.dry_run(cfg)
    assert [e.role for e in estimates] == ["teacher", "teacher", "judge", "judge"]

    # a rerun answers every verdict from the generation store: 0 judge calls, the same verdicts
    with runner.stage("verify") as (t, again):
        rerun = verify(cfg, samples(), None, t, again)
    assert again.judge_calls == 0 and again.judge_tokens == 0
    cols = [C.QUESTION_ID, C.SAMPLE_INDEX, C.CORRECT, C.REASON, C.JUDGE_VERDICT]
    pd.testing.assert_frame_equal(rerun[cols].sort_values(cols[:2], ignore_index=True),
                                  graded[cols].sort_values(cols[:2], ignore_index=True))
    assert len(GenerationStore(f"{cfg.storage}/generations").load("judge")) == 5
    tracker.end()
