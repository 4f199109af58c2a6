"""The smoke-test stage with the smoke test off (no training, no Ray): the teachers' own probe accuracy
ranks them and the table says so; a teacher without a verified probe row ranks last with its reason,
whatever its accuracy; CIs and the paired top-two comparison come over the probe questions."""

from __future__ import annotations

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import config_from_dict
from ray_distill.curation.smoke_test import NO_VERIFIED_ROWS, TEACHER_ACCURACY, top_two_note, winner
from ray_distill.curation.smoke_stage import smoke_test
from ray_distill.tracking import NullTracker

QUESTIONS = [f"{i}+1" for i in range(8)]


def _graded(teacher: str, correct: list[bool], format_ok: bool = True) -> pd.DataFrame:
    return pd.DataFrame([{C.QUESTION_ID: f"q{i}", C.QUESTION: q, C.PROMPT: q, C.TEACHER: teacher, C.SAMPLE_INDEX: 0,
                          C.COMPLETION: f"<think>{q}</think>\\boxed{{{(i + 1) % 10}}}", C.ANSWER: str((i + 1) % 10),
                          C.CORRECT: c, C.FORMAT_OK: format_ok, C.NUM_TOKENS: 12}
                         for i, (q, c) in enumerate(zip(QUESTIONS, correct))])


def test_smoke_test_off_ranks_by_own_accuracy_and_a_teacher_without_verified_rows_last(tiny_student_path, tmp_path):
    cfg = config_from_dict({"storage": str(tmp_path), "questions": {"synthetic": {"num_questions": 10}},
                            "teachers": [{"name": n, "engine": {"kind": "scripted", "persona": "concise"}}
                                         for n in ("good", "fair", "unformatted")],
                            "smoke_test": {"enabled": False}})
    probe = {"good": _graded("good", [True] * 7 + [False]),
             "fair": _graded("fair", [True, False] * 4),
             "unformatted": _graded("unformatted", [True] * 8, format_ok=False)}  # right answers, no valid format

    ranking = smoke_test(cfg, probe, {"dev": []}, tiny_student_path, NullTracker())

    assert [r["teacher"] for r in ranking] == ["good", "fair", "unformatted"]
    assert {r["ranked_by"] for r in ranking} == {TEACHER_ACCURACY}
    last = ranking[-1]
    assert last["teacher_accuracy"] == 1.0 and last["reason"] == NO_VERIFIED_ROWS and last["verified_rows"] == 0
    good = ranking[0]
    assert good["teacher_accuracy"] == 0.875 and good["ci_low"] < 0.875 < good["ci_high"]
    assert all(r["train_rows"] == 0 for r in ranking)  # nothing was trained
    # good beats fair on 3 of 8 probe questions and never loses, but 8 shared questions are too few to separate
    assert good["margin"] == 0.375 and good["margin_questions"] == 8 and good["separable"] is False
    assert good["margin_ci_low"] < 0.375 < good["margin_ci_high"]
    note = top_two_note(ranking)
    assert note.startswith("top two cannot be separated at 95%: good - fair = +0.375 [")
    assert note.endswith("paired over the same 8 questions; only 8 shared questions (< 10))")
    assert winner(ranking) == "good"
