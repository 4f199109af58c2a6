import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.curation import adaptive as A


def rows(qid: str, texts_ok: list[tuple[str, bool]], tokens: int = 10) -> list[dict]:
    return [{C.QUESTION_ID: qid, C.COMPLETION: text, C.FORMAT_OK: True, C.CORRECT: ok, C.NUM_TOKENS: tokens}
            for text, ok in texts_ok]


def frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for g in groups for r in g])


PLAN = A.SamplingPlan(target=2, max_samples=6, round_size=2, hopeless_after_rounds=2, min_samples=2)


def test_plan_rounds():
    assert PLAN.first_round() == 2 and PLAN.next_total(have_distinct=1, sampled=2) == 4
    assert PLAN.next_total(have_distinct=0, sampled=6) == 6  # never past M
    default = A.SamplingPlan(target=4, max_samples=12)  # floor 2P, later rounds add P
    assert default.floor == 8 and default.step == 4 and default.first_round() == 8
    assert [default.next_total(h, 8) for h in (0, 1, 3)] == [12, 12, 12]
    assert default.next_total(6, 5) == 8  # P + 2 distinct but below the floor: only the floor is missing
    assert default.next_total(4, 8) == 12  # exactly P distinct is not enough: sample on (farthest-P needs a choice)
    assert default.enough == 6 and A.SamplingPlan(target=4, max_samples=12, margin=1).enough == 5
    assert A.SamplingPlan(target=4, max_samples=6).floor == 6  # the floor never passes M
    with pytest.raises(ValueError):
        A.SamplingPlan(target=0, max_samples=8, round_size=3)


def test_enough_distinct_correct_stops_a_question():
    graded = frame(rows("a", [("x", True), ("y", True), ("z", True), ("w", True)]),
                   rows("b", [("x", True), ("x", True), ("y", True), ("y", True)]))
    status = A.round_status(graded, ["a", "b"], 1, PLAN)
    assert status == {"a": A.ENOUGH, "b": A.CONTINUE}  # duplicates count once


def test_exactly_p_distinct_correct_is_not_enough():
    """A question with exactly P distinct correct trajectories goes on sampling: farthest-P would have nothing to
    choose from, and stopping there would cut exactly the easy questions that offer the most choice. It stops as
    enough at P + margin, or at M with what it has."""
    exactly_p = frame(rows("a", [("x", True), ("y", True), ("q", False), ("r", False)]))
    assert A.round_status(exactly_p, ["a"], 1, PLAN) == {"a": A.CONTINUE}
    assert A.round_status(exactly_p, ["a"], 1, A.SamplingPlan(target=2, max_samples=6, margin=1,
                                                              min_samples=2)) == {"a": A.CONTINUE}
    three = frame(rows("a", [("x", True), ("y", True), ("z", True), ("r", False)]))
    assert A.round_status(three, ["a"], 1, A.SamplingPlan(target=2, max_samples=6, margin=1,
                                                          min_samples=2)) == {"a": A.ENOUGH}
    capped = frame(rows("a", [("x", True), ("y", True)] + [("x", True)] * 4))  # M = 6 reached with P distinct
    assert A.round_status(capped, ["a"], 3, A.SamplingPlan(target=2, max_samples=6, stop_when_saturated=False)) == {
        "a": A.EXHAUSTED}


def test_enough_waits_for_the_floor():
    # P + 2 = 4 distinct correct answers are not enough before the floor of samples (3 < min_samples=5)
    plan = A.SamplingPlan(target=2, max_samples=8, min_samples=5)
    few = frame(rows("a", [("x", True), ("y", True), ("z", True)]))
    assert A.round_status(few, ["a"], 1, plan) == {"a": A.CONTINUE}
    five = frame(rows("a", [("x", True), ("y", True), ("z", False), ("w", True), ("v", True)]))
    assert A.round_status(five, ["a"], 1, plan) == {"a": A.ENOUGH}


def test_format_failures_do_not_count_as_correct():
    graded = frame(rows("a", [("x", True), ("y", True)]))
    graded.loc[1, C.FORMAT_OK] = False
    assert A.distinct_correct(graded).to_dict() == {"a": 1}


def test_hopeless_after_rounds_without_a_correct_sample():
    graded = frame(rows("a", [("x", False), ("y", False)]))
    assert A.round_status(graded, ["a"], 1, PLAN) == {"a": A.CONTINUE}
    graded = frame(rows("a", [("x", False), ("y", False), ("z", False), ("w", False)]))
    assert A.round_status(graded, ["a"], 2, PLAN) == {"a": A.HOPELESS}
    never = A.SamplingPlan(target=2, max_samples=6, round_size=2, hopeless_after_rounds=None)
    assert A.round_status(graded, ["a"], 2, never) == {"a": A.CONTINUE}


def test_exhausted_at_m_samples():
    graded = frame(rows("a", [("x", True)] + [("x", False)] * 5))
    plan = A.SamplingPlan(target=2, max_samples=6, round_size=2, stop_when_saturated=False, min_samples=4)
    assert A.round_status(graded, ["a"], 3, plan) == {"a": A.EXHAUSTED}


def test_saturated_when_a_round_adds_no_new_distinct_correct():
    first = frame(rows("a", [("x", True), ("q", False)]))
    previous = A.distinct_correct(first)
    second = frame(rows("a", [("x", True), ("q", False), ("x", True), ("r", False)]))
    sampled = first.groupby(C.QUESTION_ID).size()
    assert A.round_status(second, ["a"], 2, PLAN, previous, sampled) == {"a": A.SATURATED}
    off = A.SamplingPlan(target=2, max_samples=6, round_size=2, stop_when_saturated=False)
    assert A.round_status(second, ["a"], 2, off, previous, sampled) == {"a": A.CONTINUE}
    # one new sample without a new answer is too little evidence: keep going
    third = frame(rows("a", [("x", True), ("q", False), ("x", True)]))
    assert A.round_status(third, ["a"], 2, PLAN, previous, sampled) == {"a": A.CONTINUE}


def test_saturation_fires_with_the_default_round_size():
    # default plan (no round_size): round 1 draws the floor 2P=4, round 2 adds P=2 and finds nothing new.
    # (Rounds used to ask only for the P minus distinct-correct samples missing, fewer than the P new
    # samples the rule needs as evidence, so it never fired.)
    plan = A.SamplingPlan(target=2, max_samples=10)
    first = frame(rows("a", [("x", True), ("q", False), ("r", False), ("x", True)]))
    assert A.round_status(first, ["a"], 1, plan) == {"a": A.CONTINUE}
    assert plan.next_total(1, 4) == 6
    second = frame(rows("a", [("x", True), ("q", False), ("r", False), ("x", True), ("x", True), ("s", False)]))
    status = A.round_status(second, ["a"], 2, plan, A.distinct_correct(first), first.groupby(C.QUESTION_ID).size())
    assert status == {"a": A.SATURATED}


def test_per_question_token_cap():
    plan = A.SamplingPlan(target=3, max_samples=8, round_size=2, max_tokens_per_question=30)
    graded = frame(rows("a", [("x", True), ("y", False)], tokens=20))
    assert A.round_status(graded, ["a"], 1, plan) == {"a": A.TOKEN_CAP}


def test_latest_samples_keeps_the_retry_of_a_failed_request():
    def rows(spec):  # (question, sample index, error, completion): rounds' rows in the order they were written
        return pd.DataFrame([{C.QUESTION_ID: q, C.TEACHER: "t", C.SAMPLE_INDEX: i, C.ERROR: e, C.COMPLETION: c}
                             for q, i, e, c in spec])

    graded = rows([("a", 0, "", "x"), ("a", 1, "timeout", ""), ("b", 0, "refused", ""),  # round 1
                   ("a", 1, "", "y"), ("a", 2, "", "z"), ("b", 0, "refused", "")])  # round 2: retries, one new
    latest = A.latest_samples(graded)
    assert list(zip(latest[C.QUESTION_ID], latest[C.SAMPLE_INDEX], latest[C.COMPLETION])) == [
        ("a", 0, "x"), ("b", 0, ""), ("a", 1, "y"), ("a", 2, "z")]  # a/1's retry wins; b/0 failed twice: once


def test_the_decision_from_three_counters_per_question_is_the_decision_from_the_samples():
    """The streaming plane's driver decides from question_stats (three counters per question) what
    round_status decides from every graded sample, rule by rule."""
    plan = A.SamplingPlan(target=2, max_samples=6, max_tokens_per_question=40)
    first = pd.DataFrame(rows("a", [("x", True), ("y", False)]) + rows("b", [("u", False), ("v", False)])
                         + rows("c", [("m", True), ("n", True)]))
    second = pd.concat([first, pd.DataFrame(rows("a", [("x", True), ("x", True)]) + rows("b", [("w", False)] * 2)
                                            + rows("c", [("o", True), ("p", True)]))], ignore_index=True)
    for graded, round_index, before in ((first, 1, None), (second, 2, first)):
        prev = (None, None) if before is None else (A.distinct_correct(before), before.groupby(C.QUESTION_ID).size())
        stats = A.question_stats(graded)
        assert list(stats.columns) == [A.SAMPLED, A.TOKENS, A.DISTINCT]
        assert stats.loc["c", A.DISTINCT] == 2 * round_index
        assert A.status_from_stats(stats, ["a", "b", "c"], round_index, plan, *prev) == \
            A.round_status(graded, ["a", "b", "c"], round_index, plan, *prev)
    assert set(A.round_status(second, ["a", "b", "c"], 2, plan, *prev).values()) >= {A.HOPELESS, A.ENOUGH}


def stored(qid: str, texts_ok: list[tuple[str, bool]]) -> list[dict]:
    return [{**r, C.SAMPLE_INDEX: i} for i, r in enumerate(rows(qid, texts_ok))]


def test_replay_runs_the_rounds_over_stored_samples():
    plan = A.SamplingPlan(target=2, max_samples=8, hopeless_after_rounds=2)  # floor 4, step 2
    graded = frame(
        stored("easy", [("a", True), ("b", True), ("c", True), ("d", True), ("e", True), ("f", True)]),
        stored("dull", [("x", True)] * 8),  # one distinct answer: saturated after round 2
        stored("hard", [("w", False)] * 8),  # never right: hopeless after round 2
        stored("late", [("u", False)] * 4 + [("v", True), ("y", True), ("z", True), ("t", True)]),
        stored("thin", [("p", True), ("k", False), ("m", False), ("n", False), ("o", False)]),  # store runs out
    )
    drawn, status = A.replay(graded, ["easy", "dull", "hard", "late", "thin"], plan)
    assert status == {"easy": A.ENOUGH, "dull": A.SATURATED, "hard": A.HOPELESS, "late": A.ENOUGH,
                      "thin": A.EXHAUSTED}
    counts = drawn.groupby(C.QUESTION_ID).size().to_dict()
    # late: 2 distinct correct after round 2 (6 samples) is only P: round 3 draws to M and finds P + 2
    assert counts == {"easy": 4, "dull": 6, "hard": 6, "late": 8, "thin": 5}
    assert (drawn.groupby(C.QUESTION_ID)[C.SAMPLE_INDEX].max() + 1).to_dict() == counts  # always a prefix
    off = A.SamplingPlan(target=2, max_samples=8, hopeless_after_rounds=None, stop_when_saturated=False)
    assert A.replay(graded, ["dull", "hard"], off)[1] == {"dull": A.EXHAUSTED, "hard": A.EXHAUSTED}
