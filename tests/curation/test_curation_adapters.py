"""Ray Data adapters on the shared local cluster: grading keeps every row, selection keeps <= P per question."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.curation.adapters import GradeBatch, select_dataset


def _generations() -> pd.DataFrame:
    rows = []
    for q, answer in (("q1", "3"), ("q2", "7"), ("q3", "5")):
        for i in range(5):
            right = answer if i != 4 else "0"
            body = ("step;" * (i + 1)) + q
            text = f"<think>{body}</think>\\boxed{{{right}}}" if i != 3 else f"\\boxed{{{right}}}"
            rows.append({C.QUESTION_ID: q, C.ANSWER: answer, C.TEACHER: "t", C.SAMPLE_INDEX: i, C.COMPLETION: text})
    return pd.DataFrame(rows)


def test_grade_batch_pure():
    out = GradeBatch(max_tokens=512, require_think=True)(_generations())
    assert len(out) == 15
    q1 = out[out[C.QUESTION_ID] == "q1"].set_index(C.SAMPLE_INDEX)
    assert q1.loc[0, C.CORRECT] and q1.loc[0, C.FORMAT_OK] and q1.loc[0, C.REASON] == ""
    assert q1.loc[3, C.CORRECT] and not q1.loc[3, C.FORMAT_OK]  # right answer, no think block
    assert q1.loc[4, C.REASON] == "wrong_answer"
    with pytest.raises(ValueError, match="missing columns"):
        GradeBatch(max_tokens=512)(pd.DataFrame({C.COMPLETION: ["x"]}))


def test_grade_and_select_on_ray(ray_local, tiny_student_path):
    ds = ray_local.data.from_pandas(_generations()).repartition(3)
    graded = ds.map_batches(
        GradeBatch, fn_constructor_args=(512, True, tiny_student_path), batch_format="pandas", batch_size=4,
        compute=ray_local.data.ActorPoolStrategy(size=1))
    graded_df = graded.to_pandas()
    assert len(graded_df) == 15
    assert sorted(zip(graded_df[C.QUESTION_ID], graded_df[C.SAMPLE_INDEX])) == sorted(
        (q, i) for q in ("q1", "q2", "q3") for i in range(5)
    )
    # characters as tokens here (tokenizer_path=None): the student tokenizer is char-level anyway
    selected = select_dataset(graded_df, p=2, seed=0, tokenizer_path=None, questions_per_block=2)
    sel = selected.to_pandas()
    counts = sel.groupby(C.QUESTION_ID).size()
    assert counts.to_dict() == {"q1": 2, "q2": 2, "q3": 2}
    assert sel[C.CORRECT].all() and sel[C.FORMAT_OK].all() and (sel[C.SELECTION_DISTANCE] > 0).all()
    assert not set(sel[C.SAMPLE_INDEX]) & {3, 4}
