"""The LLM judge's pure part (prompt, strict verdict parsing, which rows it sees, how it combines with
math-verify) and its batch callable with the scripted judge and a real generation store (no Ray)."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, JudgeConfig, check_judge_prompt, config_from_dict
from ray_distill.curation import judge as J
from ray_distill.curation.adapters import GradeBatch
from ray_distill.curation.judge_stage import JudgeBatch, count_stored_verdicts
from ray_distill.generation.store import GenerationStore
from ray_distill.synthetic.judge import judge_reply, last_boxed


# ----------------------------------------------------------------------------- prompt


def test_prompt_fills_each_placeholder_once_and_leaves_other_braces():
    template = "Q: {question}\nR: {reference}\nA: {answer}\n\\boxed{x} {other}"
    out = J.render_judge_prompt(template, question="say {answer}", reference="\\frac{1}{2}", answer="\\boxed{0.5}")
    assert out == "Q: say {answer}\nR: \\frac{1}{2}\nA: \\boxed{0.5}\n\\boxed{x} {other}"


def test_default_prompt_is_valid_and_asks_for_the_verdict_line():
    assert check_judge_prompt(J.DEFAULT_JUDGE_PROMPT) == J.DEFAULT_JUDGE_PROMPT
    assert "VERDICT: CORRECT" in J.DEFAULT_JUDGE_PROMPT and "VERDICT: INCORRECT" in J.DEFAULT_JUDGE_PROMPT


@pytest.mark.parametrize("template, message", [
    ("{question} {answer}", "'{reference}' exactly once (found 0)"),
    ("{reference} {answer} {answer}", "'{answer}' exactly once (found 2)"),
    ("{question}{question} {reference} {answer}", "'{question}' at most once (found 2)"),
])
def test_bad_judge_prompt_is_a_one_line_config_error(template, message):
    tree = {"questions": {"synthetic": {}}, "teachers": [{"name": "t", "engine": {"persona": "concise"}}],
            "verify": {"judge": {"mode": "always", "engine": {"persona": "judge"}, "prompt": template}}}
    with pytest.raises(ConfigError, match=re.escape("verify.judge.prompt: judge prompt must contain " + message)):
        config_from_dict(tree, source="job.yaml")
    assert check_judge_prompt("{reference} vs {answer}")  # {question} is optional


def test_judge_config_needs_an_engine_and_a_name_apart_from_the_teachers():
    base = {"questions": {"synthetic": {}}, "teachers": [{"name": "concise", "engine": {"persona": "concise"}}]}
    with pytest.raises(ConfigError, match="verify.judge: .*judge mode 'fallback' needs 'engine'"):
        config_from_dict({**base, "verify": {"judge": {"mode": "fallback"}}})
    with pytest.raises(ConfigError, match="verify.judge.name: 'concise' is a teacher's name"):
        config_from_dict({**base, "verify": {"judge": {"mode": "always", "name": "concise",
                                                       "engine": {"persona": "judge"}}}})
    cfg = config_from_dict(base)
    assert cfg.verify.judge.mode == "off"  # off by default


# ----------------------------------------------------------------------------- strict verdict parsing


@pytest.mark.parametrize("text, label", [
    ("Same value.\nVERDICT: CORRECT", J.CORRECT),
    ("Different.\nVERDICT: INCORRECT\n\n  ", J.INCORRECT),
    ("<think>hmm\nVERDICT: INCORRECT</think>\nVERDICT: CORRECT", J.CORRECT),  # the last line decides
    ("VERDICT: CORRECT\nactually no", J.UNPARSED),
    ("Verdict: correct", J.UNPARSED),
    ("**VERDICT: CORRECT**", J.UNPARSED),
    ("VERDICT: CORRECT.", J.UNPARSED),
    ("VERDICT: PARTIALLY CORRECT", J.UNPARSED),
    ("VERDICT: CORRECT or VERDICT: INCORRECT", J.UNPARSED),
    ("", J.UNPARSED),
])
def test_verdict_is_parsed_strictly(text, label):
    verdict = J.parse_verdict(text)
    assert verdict.label == label
    assert (verdict.detail == "") == (label in (J.CORRECT, J.INCORRECT))


def test_unparsed_and_failed_verdicts_say_why():
    cut = J.parse_verdict("The answer is", finish_reason="length")
    assert cut.label == J.UNPARSED and "'The answer is'" in cut.detail and "cut at max_tokens" in cut.detail
    err = J.parse_verdict("", error="TimeoutError: read timed out\nmore")
    assert err.label == J.ERROR and err.detail == "TimeoutError: read timed out" and not err.correct


# ----------------------------------------------------------------------------- which rows, and the combination


@pytest.mark.parametrize("reference, math_", [
    ("0", True), ("\\frac{1}{2}", True), ("x^2+1", True), ("\\sqrt{2}\\pi", True), ("B", True), ("\\sin(x)", True),
    ("Paris", False), ("the mitochondria", False), ("3 apples", False), ("", False), ("  ", False),
])
def test_math_reference(reference, math_):
    assert J.is_math_reference(reference) is math_


def test_which_rows_go_to_the_judge():
    undecided = not J.math_verify_decided("", "4")  # no final answer extracted
    assert undecided and not J.math_verify_decided("Paris", "Paris") and J.math_verify_decided("4", "4")
    assert J.needs_judge("fallback", True, "", decided=False)
    assert not J.needs_judge("fallback", True, "", decided=True)
    assert J.needs_judge("always", True, "", decided=True)
    assert not J.needs_judge("always", False, "", decided=False)  # malformed: rejected for its format anyway
    assert not J.needs_judge("always", True, '{"cases": []}', decided=False)  # code: the sandbox decides
    assert not J.needs_judge("off", True, "", decided=False)


def test_combine_with_math_verify():
    yes, no = J.JudgeVerdict(J.CORRECT, ""), J.JudgeVerdict(J.INCORRECT, "")
    garbled = J.JudgeVerdict(J.UNPARSED, "last line 'x' ...")
    assert J.combine(False, "wrong_answer", True, None) == (False, "wrong_answer")  # not judged
    assert J.combine(False, "no_final_answer", False, yes) == (True, "")  # the judge alone decides
    assert J.combine(False, "no_final_answer", False, garbled) == (False, J.R_JUDGE_UNPARSED)
    assert J.combine(True, "", False, J.JudgeVerdict(J.ERROR, "boom")) == (False, J.R_JUDGE_ERROR)
    assert J.combine(False, "wrong_answer", True, yes, "either") == (True, "")  # rescued
    assert J.combine(True, "", True, no, "either") == (True, "")
    assert J.combine(True, "", True, no, "both") == (False, J.R_JUDGE_INCORRECT)  # vetoed
    assert J.combine(False, "wrong_answer", True, yes, "both") == (False, "wrong_answer")
    # the default never lets the judge override a math-verify "wrong" (config and function agree)
    assert J.combine(False, "wrong_answer", True, yes) == (False, "wrong_answer")
    assert JudgeConfig().agree == "both"


def test_scripted_judge_reads_the_default_prompt():
    prompt = J.render_judge_prompt(J.DEFAULT_JUDGE_PROMPT, "Capital of France?", "Paris", "It is \\boxed{ paris }.")
    assert J.parse_verdict(judge_reply(prompt)).label == J.CORRECT
    prompt = J.render_judge_prompt(J.DEFAULT_JUDGE_PROMPT, "1+1?", "2", "\\boxed{3}")
    assert J.parse_verdict(judge_reply(prompt)).label == J.INCORRECT
    assert J.parse_verdict(judge_reply("Is {answer} right?")).label == J.UNPARSED
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}" and last_boxed("none") is None


# ----------------------------------------------------------------------------- the batch callable, cached


def _graded_rows() -> pd.DataFrame:
    rows = [  # (question, reference, completion): graded by the real grader below
        ("Capital of France?", "Paris", "<think>it is Paris</think>\\boxed{Paris.}"),  # math-verify: no; judge: yes
        ("Capital of Italy?", "Rome", "<think>hmm</think>\\boxed{Milan}"),  # text reference: judge says no
        ("2+2?", "4", "<think>2+2=4</think>\\boxed{4}"),  # math-verify decides
        ("3+3?", "6", "<think>3+3</think>six"),  # no final answer extracted: judge (scripted: 'six' != '6')
        ("4+4?", "8", "no think block \\boxed{8}"),  # malformed: never judged
        ("Capital of Spain?", "Madrid", "<think>x</think>\\boxed{Madrid}"),  # duplicate prompt of the next row
        ("Capital of Spain?", "Madrid", "<think>y</think>\\boxed{Madrid}"),
    ]
    df = pd.DataFrame(rows, columns=[C.QUESTION, C.ANSWER, C.COMPLETION])
    return GradeBatch(max_tokens=None)(df)


def test_judge_batch_fallback_caches_every_verdict(tmp_path):
    judge = JudgeConfig(mode="fallback", engine={"kind": "scripted", "persona": "judge"})
    graded = _graded_rows()
    out = JudgeBatch(judge.model_dump(), str(tmp_path))(graded)

    assert len(out) == len(graded) and list(out.columns) == [*graded.columns, *C.JUDGE_COLUMNS]
    assert out[C.JUDGE_VERDICT].tolist() == ["correct", "incorrect", "", "incorrect", "", "correct", "correct"]
    assert out[C.CORRECT].tolist() == [True, False, True, False, True, True, True]  # row 4: right, malformed
    assert out[C.REASON].tolist()[:4] == ["", J.R_JUDGE_INCORRECT, "", J.R_JUDGE_INCORRECT]
    assert out[C.MATH_VERIFY_DECIDED].tolist() == [False, False, True, False, True, False, False]
    assert out[C.JUDGE_CALLED].tolist() == [True, True, False, True, False, True, False]  # the Madrid rows: one call
    assert (out.loc[out[C.JUDGE_VERDICT] != "", C.JUDGE_TOKENS] > 0).all()
    summary = J.judge_summary(out)
    assert summary["judge/calls"] == 4 and summary["judge/rows"] == 5 and summary["judge/rescued"] == 1
    assert summary["judge/agreement_rows"] == 0 and math.isnan(summary["judge/agreement"])

    # a rerun (a fresh actor) answers every verdict from the store: no call, same verdicts
    again = JudgeBatch(judge.model_dump(), str(tmp_path))
    rerun = again(graded)
    assert again._generate is None  # no engine was even built
    assert rerun[C.JUDGE_CALLED].sum() == 0 and J.judge_summary(rerun)["judge/cached"] == 5
    pd.testing.assert_frame_equal(rerun.drop(columns=[C.JUDGE_CALLED]), out.drop(columns=[C.JUDGE_CALLED]))
    # the store keeps one verdict per distinct prompt (the two Madrid rows share theirs)
    assert len(GenerationStore(str(tmp_path)).load("judge")) == 4
    assert count_stored_verdicts(GenerationStore(str(tmp_path)), judge, graded) == 5


def test_judge_batch_always_agreement_and_unparseable_template(tmp_path):
    judge = JudgeConfig(mode="always", agree="both", engine={"kind": "scripted", "persona": "judge"})
    out = JudgeBatch(judge.model_dump(), None)(_graded_rows())
    assert out[C.JUDGE_VERDICT].tolist()[2] == "correct"  # judged although math-verify decided
    assert J.judge_summary(out)["judge/agreement"] == 1.0

    custom = judge.model_copy(update={"prompt": "Reference {reference}; answer {answer}. Verdict?"})
    out = JudgeBatch(custom.model_dump(), None)(_graded_rows())
    judged = out[out[C.JUDGE_VERDICT] != ""]
    assert (judged[C.JUDGE_VERDICT] == J.UNPARSED).all() and judged[C.JUDGE_DETAIL].str.contains("is not 'VERDICT").all()
    assert not judged[C.CORRECT].any() and (judged[C.REASON] == J.R_JUDGE_UNPARSED).all()
