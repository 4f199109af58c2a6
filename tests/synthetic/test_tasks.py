import random

import pytest

from ray_distill import columns as C
from ray_distill.synthetic.tasks import answer_of, base_corpus, make_questions, solve_steps, step_text


def test_arith_is_mod_10_chain():
    steps = solve_steps("9+0-9+3")
    assert [step_text(s) for s in steps] == ["9+0=9", "9-9=0", "0+3=3"]
    assert answer_of("2-5") == "7"


def test_max_family():
    assert [step_text(s) for s in solve_steps("max(3,7,2)")] == ["max(3,7)=7", "max(7,2)=7"]
    assert answer_of("max(3,7,2)") == "7"


def test_make_questions_schema_difficulty_and_exclusion():
    rows = make_questions("arith", 60, 1, 3, seed=0)
    assert set(rows[0]) == set(C.QUESTION_COLUMNS) - {C.PROMPT}  # the prompt comes from the source's template
    assert {r[C.DIFFICULTY] for r in rows} == {1, 2, 3}
    assert all(r[C.QUESTION].count("+") + r[C.QUESTION].count("-") == r[C.DIFFICULTY] for r in rows)
    assert len({r[C.QUESTION_ID] for r in rows}) == 60
    other = make_questions("arith", 30, 1, 3, seed=1, exclude={r[C.QUESTION] for r in rows})
    assert not {r[C.QUESTION] for r in other} & {r[C.QUESTION] for r in rows}


def test_unknown_family_and_impossible_request():
    with pytest.raises(ValueError, match="unknown task family"):
        make_questions("nope", 1, 1, 1, 0)
    with pytest.raises(ValueError, match="cannot draw"):
        make_questions("arith", 500, 1, 1, 0)  # only 200 single-step arith questions exist


def test_base_corpus_is_single_step_chat():
    rows = base_corpus(50, seed=random.randrange(3))
    user, assistant = rows[0][C.MESSAGES]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert assistant["content"].startswith("<think>") and assistant["content"].endswith(f"\\boxed{{{answer_of(user['content'])}}}")


def test_base_chain_corpus_is_local_min_chains_of_no_question_family():
    import re

    from ray_distill.synthetic.tasks import base_chain_corpus, family_of

    rows = base_chain_corpus(200, seed=3)
    assert rows == base_chain_corpus(200, seed=3) and rows != base_chain_corpus(200, seed=4)
    lengths = set()
    for row in rows:
        user, assistant = row[C.MESSAGES]
        items = [int(x) for x in re.fullmatch(r"min\((\d(?:,\d)+)\)", user["content"]).group(1).split(",")]
        steps = re.fullmatch(r"<think>(.*)</think>\\boxed\{(\d)\}", assistant["content"])
        chain = steps.group(1).split(";")
        assert int(steps.group(2)) == min(items) and len(chain) == len(items) - 1
        acc = items[0]
        for step, right in zip(chain, items[1:]):  # each step restates both operands before its result
            assert step == f"min({acc},{right})={min(acc, right)}"
            acc = min(acc, right)
        lengths.add(len(chain))
        with pytest.raises(ValueError, match="no synthetic family"):
            family_of(user["content"])  # never a question, suite or teacher input
    assert lengths == {2, 3, 4}
