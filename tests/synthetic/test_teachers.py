"""Scripted teacher personas: styles, variations, determinism, and the accuracy ordering."""

from __future__ import annotations

import re

import pytest

from ray_distill.curation.graders import grade
from ray_distill.synthetic.tasks import make_questions
from ray_distill.synthetic.teachers import PERSONAS, write_solution

SEEDS = range(40)


def test_concise_is_local_and_varies_on_the_surface():
    pattern = re.compile(r"<think>9\+0=9;9-9=0(;so 0)?</think>\\boxed\{0\}")
    texts = {write_solution("concise", "9+0-9", s) for s in SEEDS}
    correct = [t for t in texts if t.endswith("\\boxed{0}")]
    assert correct and all(pattern.fullmatch(t) for t in correct), correct
    assert len(correct) == 2  # with and without the recap
    assert {write_solution("concise", "max(3,7,2)", s) for s in SEEDS} >= {
        "<think>max(3,7)=7;max(7,2)=7</think>\\boxed{7}"
    }


def test_verbose_mixes_four_forms():
    texts = {write_solution("verbose", "9+0-9", s) for s in SEEDS}
    assert "<think>9+0=9;9-9=0</think>\\boxed{0}" in texts
    assert "<think>9+0-9=9-9=0</think>\\boxed{0}" in texts
    assert "<think>9;0</think>\\boxed{0}" in texts
    assert any(t.startswith("<think>9 plus 0 ") and "9 minus 9 " in t for t in texts)
    max_texts = {write_solution("verbose", "max(3,7,2)", s) for s in SEEDS}
    assert "<think>max(3,7,2)=max(7,2)=7</think>\\boxed{7}" in max_texts


def test_sloppy_slips_and_sometimes_leaves_think_open():
    texts = [write_solution("sloppy", "9+0-9", s) for s in range(100)]
    assert any(not t.endswith("\\boxed{0}") for t in texts)
    assert any("</think>" not in t for t in texts)


@pytest.mark.parametrize("persona", sorted(PERSONAS))
def test_deterministic_per_seed_and_boxed(persona):
    for q in ("3-4+8", "max(1,9,4,2)"):
        assert write_solution(persona, q, 7) == write_solution(persona, q, 7)
        assert all(re.search(r"\\boxed\{\d\}$", write_solution(persona, q, s)) for s in range(10))


def test_unknown_persona_and_bad_question_raise():
    with pytest.raises(ValueError, match="unknown teacher persona"):
        write_solution("nobody", "1+2", 0)
    with pytest.raises(ValueError, match="no synthetic family"):
        write_solution("concise", "what is love", 0)


def test_own_accuracy_ordering_verbose_concise_sloppy():
    questions = make_questions("arith", 150, 1, 4, seed=0) + make_questions("max", 150, 1, 4, seed=0)

    def accuracy(persona: str) -> float:
        verdicts = [grade(write_solution(persona, q["question"], i), q["answer"]) for i, q in enumerate(questions)]
        return sum(v.correct and v.format_ok for v in verdicts) / len(verdicts)

    acc = {p: accuracy(p) for p in ("verbose", "concise", "sloppy")}
    assert acc["verbose"] == 1.0
    assert 0.88 <= acc["concise"] < 1.0
    assert acc["sloppy"] < 0.8


def test_every_strategy_reaches_the_answer_and_orders_the_work_differently():
    from ray_distill.synthetic.tasks import answer_of, make_questions
    from ray_distill.synthetic.teachers import STRATEGIES, strategy_steps

    for q in make_questions("arith", 300, 1, 4, seed=5) + make_questions("max", 100, 1, 4, seed=5):
        for strategy in STRATEGIES:
            steps = strategy_steps(q["question"], strategy)
            assert str(steps[-1].result) == q["answer"] == answer_of(q["question"])
            assert all(b.left == a.result for a, b in zip(steps, steps[1:]))  # a chain of local steps
    assert [s.right for s in strategy_steps("3-4+5-6", "plus_first")] == [5, 4, 6]
    assert [s.right for s in strategy_steps("3-4+5-6", "minus_first")] == [4, 6, 5]
    assert strategy_steps("1+2+3", "minus_first") == strategy_steps("1+2+3", "in_order")  # one sign: one order
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_steps("1+2", "backwards")


def test_strategies_persona_is_correct_local_and_uses_several_procedures():
    texts = {write_solution("strategies", "3-4+5-6", s) for s in SEEDS}
    assert texts == {"<think>3-4=9;9+5=4;4-6=8</think>\\boxed{8}", "<think>3+5=8;8-4=4;4-6=8</think>\\boxed{8}",
                     "<think>3-4=9;9-6=3;3+5=8</think>\\boxed{8}"}
    assert write_solution("strategies", "3-4+5-6", 7) == write_solution("strategies", "3-4+5-6", 7)  # deterministic
    assert {write_solution("strategies", "max(3,7,2)", s) for s in SEEDS} == {
        "<think>max(3,7)=7;max(7,2)=7</think>\\boxed{7}", "<think>max(2,7)=7;max(7,3)=7</think>\\boxed{7}"}
