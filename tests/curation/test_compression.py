"""Pass rates and the compression band."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.curation.compression import compress, histogram, pass_rates


def _samples(spec: dict[str, list[bool]]) -> pd.DataFrame:
    return pd.DataFrame([{C.QUESTION_ID: q, C.CORRECT: c} for q, cs in spec.items() for c in cs])


def _questions(*ids: str) -> list[dict]:
    return [{C.QUESTION_ID: q, C.QUESTION: f"q{q}", C.ANSWER: "1"} for q in ids]


def test_pass_rates_count_failed_generations_as_wrong():
    df = _samples({"a": [True, False, False, False], "b": [True, True], "c": [None, None]})
    df[C.ERROR] = ["", "", "", "timeout", "", "", "prompt too long", "prompt too long"]
    rates = pass_rates(df).set_index(C.QUESTION_ID)
    assert rates.loc["a", C.NUM_SAMPLES] == 4 and rates.loc["a", C.NUM_CORRECT] == 1
    assert rates.loc["a", C.PASS_RATE] == pytest.approx(1 / 4)  # as evaluation scores it
    assert rates.loc["b", C.PASS_RATE] == 1.0
    assert rates.loc["c", C.NUM_SAMPLES] == 2 and rates.loc["c", C.PASS_RATE] == 0.0  # never solved: kept


def test_band_edges_are_inclusive():
    rates = pass_rates(_samples({"zero": [False] * 4, "quarter": [True] + [False] * 3, "half": [True, True, False, False],
                                 "three": [True] * 3 + [False], "all": [True] * 4}))
    kept, rejected = compress(_questions("zero", "quarter", "half", "three", "all"), rates, max_pass_rate=0.5)
    assert [q[C.QUESTION_ID] for q in kept] == ["zero", "quarter", "half"]
    assert {q[C.QUESTION_ID]: q[C.REASON] for q in rejected} == {"three": "too_easy", "all": "too_easy"}
    assert all(q[C.STAGE] == "compression" for q in rejected)
    kept, rejected = compress(_questions("zero", "quarter", "half"), rates, max_pass_rate=0.5, min_pass_rate=0.25)
    assert [q[C.QUESTION_ID] for q in kept] == ["quarter", "half"]
    assert [(q[C.QUESTION_ID], q[C.REASON], q[C.PASS_RATE]) for q in rejected] == [("zero", "too_hard", 0.0)]


def test_extreme_thresholds():
    rates = pass_rates(_samples({"zero": [False, False], "all": [True, True]}))
    kept, _ = compress(_questions("zero", "all"), rates, max_pass_rate=0.0)
    assert [q[C.QUESTION_ID] for q in kept] == ["zero"]
    kept, _ = compress(_questions("zero", "all"), rates, max_pass_rate=1.0)
    assert len(kept) == 2


def test_question_without_samples_is_an_error():
    rates = pass_rates(_samples({"a": [True]}))
    with pytest.raises(ValueError, match="no student samples.*'b'"):
        compress(_questions("a", "b"), rates, max_pass_rate=0.5)


def test_invalid_band_and_missing_verdicts():
    rates = pass_rates(_samples({"a": [True]}))
    with pytest.raises(ValueError, match="min_pass_rate"):
        compress(_questions("a"), rates, max_pass_rate=0.3, min_pass_rate=0.5)
    with pytest.raises(ValueError, match="verdict"):
        pass_rates(pd.DataFrame({C.QUESTION_ID: ["a"], C.CORRECT: [None]}))
    with pytest.raises(ValueError, match="missing columns"):
        pass_rates(pd.DataFrame({C.QUESTION_ID: ["a"]}))


def test_histogram():
    hist = histogram([0.0, 0.25, 0.5, 1.0, 1.0], bins=4)
    assert hist["count"].tolist() == [1, 1, 1, 2]
    assert hist["lo"].iloc[0] == 0.0 and hist["hi"].iloc[-1] == 1.0
    assert hist["bin"].tolist() == ["0-0.25", "0.25-0.5", "0.5-0.75", "0.75-1"]


def test_replay_keeps_a_stable_share_of_easy_questions():
    import pandas as pd

    from ray_distill import columns as C
    from ray_distill.curation.compression import compress

    qs = [{C.QUESTION_ID: f"q{i}"} for i in range(400)]
    rates = pd.DataFrame({C.QUESTION_ID: [q[C.QUESTION_ID] for q in qs], C.PASS_RATE: [1.0] * 400})
    kept, rejected = compress(qs, rates, max_pass_rate=0.5, replay_fraction=0.25, seed=3)
    assert 70 <= len(kept) <= 130 and len(kept) + len(rejected) == 400
    again, _ = compress(list(reversed(qs)), rates, max_pass_rate=0.5, replay_fraction=0.25, seed=3)
    assert {q[C.QUESTION_ID] for q in again} == {q[C.QUESTION_ID] for q in kept}  # order-independent
    assert compress(qs, rates, max_pass_rate=0.5)[0] == []  # the paper's setting: no replay
