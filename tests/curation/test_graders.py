import pytest

from ray_distill.curation import graders as G


@pytest.mark.parametrize(
    "text, ref, correct, reason",
    [
        ("<think>9+0=9</think>\\boxed{9}", "9", True, ""),
        ("<think>9+0=9</think>\\boxed{8}", "9", False, G.R_WRONG),
        ("<think>x</think>the answer is \\boxed{\\frac{1}{2}}", "0.5", True, ""),  # equivalence from math-verify
        ("<think>x</think>\\boxed{2/4}", "\\frac{1}{2}", True, ""),
        ("9", "9", True, G.R_NO_THINK),
        ("<think>9+0=9 \\boxed{9}", "9", True, G.R_UNCLOSED),
        ("<think>a</think><think>b</think>\\boxed{9}", "9", True, G.R_NESTED),
        ("<think>x</think>no number", "9", False, G.R_NO_ANSWER),
        ("   ", "9", False, G.R_EMPTY),
    ],
)
def test_grade(text, ref, correct, reason):
    v = G.grade(text, ref)
    assert v.correct is correct
    assert v.reason == reason
    assert v.format_ok is (reason in ("", G.R_WRONG, G.R_NO_ANSWER))


def test_answer_inside_think_does_not_count():
    # "9+0=9" inside the think block must not be read as the final answer.
    assert G.grade("<think>9+0=9</think>", "9").correct is False


def test_length_cap_in_student_tokens():
    text = "<think>" + "1;" * 50 + "</think>\\boxed{1}"
    assert G.grade(text, "1", max_tokens=10, count_tokens=len).reason == G.R_TOO_LONG
    assert G.grade(text, "1", max_tokens=10_000, count_tokens=len).reason == ""


def test_format_check_can_be_relaxed():
    assert G.grade("\\boxed{3}", "3", require_think=False).reason == ""
