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
        ("<think>9+0=9 \\boxed{9}", "9", False, G.R_UNCLOSED),  # unfinished reasoning: no final answer
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


def test_only_a_finished_answer_counts():
    """An answer written inside a think block that never closed (the sample hit max_tokens mid-reasoning) is no
    answer, for math, multiple choice and code alike; a response with no think block at all is graded whole; a
    suite of a non-reasoning student can opt out (finished_only=False)."""
    cut, cut_choice = "<think>\nso 9+0=9, the answer is \\boxed{9}", "<think>\nso the answer is (B)"
    assert G.final_answer_region(cut) == ""
    assert G.grade(cut, "9").correct is False and G.grade(cut, "9").predicted == ""
    assert G.grade_choice(cut_choice, "B").correct is False
    assert G.extract_program("<think>\n```python\nprint(1)\n```") == ""
    assert G.grade(cut, "9", finished_only=False).correct is True
    assert G.grade_choice(cut_choice, "B", finished_only=False).correct is True
    assert G.grade("\\boxed{9}", "9").correct is True  # no think block: the whole text is the answer
    assert G.grade("<think>a</think>x <think>b</think>\\boxed{9}", "9").correct is True  # after the last close
    (v,) = G.grade_rows([cut], ["9"], [""])
    assert v.correct is False and v.reason == G.R_UNCLOSED


def test_length_cap_in_student_tokens():
    text = "<think>" + "1;" * 50 + "</think>\\boxed{1}"
    assert G.grade(text, "1", max_tokens=10, count_tokens=len).reason == G.R_TOO_LONG
    assert G.grade(text, "1", max_tokens=10_000, count_tokens=len).reason == ""


def test_format_check_can_be_relaxed():
    assert G.grade("\\boxed{3}", "3", require_think=False).reason == ""


# ----------------------------------------------------------------------------- code


import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

from ray_distill import columns as C  # noqa: E402
from ray_distill.curation import sandbox as S  # noqa: E402
from ray_distill.curation.adapters import GradeBatch  # noqa: E402
from ray_distill.data.questions import parse_tests, read_questions  # noqa: E402

CODE_FILE = Path(__file__).resolve().parents[2] / "jobs" / "data" / "code_questions.jsonl"
needs_sandbox = pytest.mark.skipif(not (shutil.which("bwrap") or shutil.which("unshare")), reason="no sandbox tool")
SUM_TESTS = json.dumps({"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "4 5", "output": "9"}]})


def _answer(program: str, think: str = "add them") -> str:
    return f"<think>{think}</think>Here it is:\n```python\n{program}```\n"


def test_extract_program_takes_the_last_python_block_after_think():
    text = "<think>```python\nprint(0)\n```</think>draft:\n```py\nprint(1)\n```\nfinal:\n```python\nprint(2)\n```"
    assert G.extract_program(text) == "print(2)"
    assert G.extract_program("<think>```python\nprint(0)\n```</think>no code") == ""
    assert G.extract_program("<think>x</think>```\nprint(3)\n```") == ""  # an unlabelled block is not Python


@needs_sandbox
def test_grade_code_verdicts():
    box = G.default_sandbox()
    tests = parse_tests(SUM_TESTS)
    ok = G.grade_code(_answer("a, b = map(int, input().split())\nprint(a + b)\n"), tests, box)
    assert (ok.correct, ok.format_ok, ok.reason, ok.predicted) == (True, True, "", "passed 2/2")
    wrong = G.grade_code(_answer("print(3)\n"), tests, box)
    assert (wrong.correct, wrong.format_ok, wrong.reason) == (False, True, G.R_CODE_WRONG)
    assert wrong.predicted.startswith("test 2/2: wrong_output")
    crash = G.grade_code(_answer("raise SystemExit(input() + 1)\n"), tests, box)
    assert crash.reason == G.R_CODE_ERROR and "TypeError" in crash.predicted
    assert G.grade_code("<think>x</think>no code here", tests, box).reason == G.R_NO_CODE
    no_think = G.grade_code("```python\na, b = map(int, input().split())\nprint(a + b)\n```", tests, box)
    assert (no_think.correct, no_think.format_ok, no_think.reason) == (True, False, G.R_NO_THINK)
    long = G.grade_code(_answer("print(3)\n", think="x" * 100), tests, box, max_tokens=50, count_tokens=len)
    assert (long.format_ok, long.reason) == (False, G.R_TOO_LONG)


@needs_sandbox
def test_grade_row_dispatches_on_tests():
    math = G.grade_row("<think>1+2=3</think>\\boxed{3}", "3", "")
    assert math.correct and math.predicted == "3"
    code = G.grade_row(_answer("a, b = map(int, input().split())\nprint(a + b)\n"), "", SUM_TESTS)
    assert code.correct and code.predicted == "passed 2/2"
    assert G.grade_row("<think>1+2=3</think>\\boxed{3}", "3", SUM_TESTS).reason == G.R_NO_CODE


@needs_sandbox
def test_reference_solutions_of_the_example_file_pass_and_mutants_fail():
    rows, rejects = read_questions(str(CODE_FILE))
    assert rejects == [] and len(rows) == 6
    styles = {parse_tests(r[C.TESTS])["type"] for r in rows}
    assert styles == {"stdio", "call"}
    solutions = {json.loads(line)["question_id"]: json.loads(line)["solution"] for line in CODE_FILE.open()}
    for row in rows:
        good = G.grade_row(_answer(solutions[row[C.QUESTION_ID]]), row[C.ANSWER], row[C.TESTS])
        assert good.correct and good.reason == "", (row[C.QUESTION_ID], good)
        mutant = solutions[row[C.QUESTION_ID]].replace("print(", "print(0, ").replace("return ", "return None if 1 else ")
        bad = G.grade_row(_answer(mutant), row[C.ANSWER], row[C.TESTS])
        assert (bad.correct, bad.reason) == (False, G.R_CODE_WRONG), row[C.QUESTION_ID]


@needs_sandbox
def test_grade_batch_mixes_math_and_code_rows():
    batch = pd.DataFrame({
        C.COMPLETION: ["<think>x</think>\\boxed{3}", _answer("print(sum(map(int, input().split())))\n"),
                       _answer("while True:\n    pass\n")],
        C.ANSWER: ["3", "", ""],
        C.TESTS: ["", SUM_TESTS, SUM_TESTS],
    })
    out = GradeBatch(max_tokens=None, code={"timeout_s": 5.0})(batch)  # room for a loaded machine (two test workers)
    assert out[C.CORRECT].tolist() == [True, True, False]
    assert out[C.REASON].tolist() == ["", "", G.R_CODE_TIMEOUT]
    assert len(out) == 3


def test_math_only_batches_build_no_sandbox():
    out = GradeBatch(max_tokens=None, code={"backend": "bwrap"})(
        pd.DataFrame({C.COMPLETION: ["<think>x</think>\\boxed{3}"], C.ANSWER: ["3"], C.TESTS: [""]}))
    assert out[C.CORRECT].tolist() == [True]


@pytest.mark.slow
@needs_sandbox
def test_grade_batch_runs_the_sandbox_inside_a_ray_actor(ray_local):
    df = pd.DataFrame({
        C.COMPLETION: [_answer("a, b = map(int, input().split())\nprint(a + b)\n"), _answer("print(0)\n")] * 3,
        C.ANSWER: [""] * 6,
        C.TESTS: [SUM_TESTS] * 6,
    })
    graded = ray_local.data.from_pandas(df).map_batches(
        GradeBatch, fn_constructor_kwargs={"max_tokens": None, "code": {"timeout_s": 5.0}},
        batch_format="pandas", batch_size=2, compute=ray_local.data.ActorPoolStrategy(size=1)).to_pandas()
    assert len(graded) == 6
    assert graded[C.CORRECT].tolist() == [True, False] * 3
    assert set(graded[C.REASON]) == {"", G.R_CODE_WRONG}


def test_sandbox_unavailable_is_an_error_not_a_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    box = G.sandbox_from_config({"backend": "bwrap"})
    with pytest.raises(S.SandboxUnavailable):
        S.detect_backend.__wrapped__(box.backend, box.python)


def test_math_verify_has_a_deadline_in_worker_threads(monkeypatch):
    """Ray Data runs actor UDFs in worker threads, where math-verify's signal-based timeouts cannot fire:
    a stuck call is abandoned after the deadline and the row is rejected as grader_timeout."""
    import threading
    import time

    from ray_distill.curation import graders as G

    monkeypatch.setattr(G, "MATH_TIMEOUT_S", 0.2)
    monkeypatch.setattr(G, "_answers_match", lambda reference, text, finished_only=True: time.sleep(3) or (True, "1"))
    out: dict = {}

    def worker():
        start = time.perf_counter()
        out["verdict"] = G.grade("<think>1</think>\\boxed{1}", "1")
        out["seconds"] = time.perf_counter() - start

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert out["verdict"].reason == G.R_GRADER_TIMEOUT and not out["verdict"].correct
    assert out["verdict"].format_ok and out["seconds"] < 2
    with pytest.raises(ZeroDivisionError):  # errors of the call still reach the caller
        result: dict = {}
        th = threading.Thread(target=lambda: result.setdefault("e", _catch(lambda: G.with_deadline(lambda: 1 / 0))))
        th.start()
        th.join()
        raise result["e"]


def _catch(fn):
    try:
        fn()
    except Exception as err:  # returned for the assertion in the main thread
        return err
    return None


def test_math_verify_does_not_warn_that_a_worker_threads_timeout_is_missing(caplog):
    """Off the main thread the deadline is with_deadline's: math-verify's warning that nothing bounds the call
    (printed once per process, twice per grader actor) would be untrue, and it is not printed."""
    import logging
    import threading

    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = False
    caplog.set_level(logging.WARNING)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("ok", G.answers_match("3", r"\boxed{3}")))
    th.start()
    th.join()
    assert result["ok"][0] is True
    assert "Timeout is disabled" not in caplog.text
