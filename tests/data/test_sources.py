import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, QuestionsConfig, SuiteConfig
from ray_distill.data.sources import MATCHED_NGRAMS, decontaminate, load_source, word_grams


def test_synthetic_source_and_exclusion():
    suite = SuiteConfig(name="s", synthetic={"family": "arith", "num_questions": 50, "min_difficulty": 2,
                                             "max_difficulty": 2, "seed": 9})
    suite_rows, _ = load_source(suite)
    pool, rejects = load_source(QuestionsConfig(synthetic={"family": "arith", "num_questions": 300}),
                                exclude={r[C.QUESTION] for r in suite_rows})
    assert len(pool) == 300 and rejects == []
    assert not {r[C.QUESTION] for r in pool} & {r[C.QUESTION] for r in suite_rows}


def test_impossible_synthetic_request_is_a_config_error():
    src = QuestionsConfig(synthetic={"family": "arith", "num_questions": 500, "min_difficulty": 1, "max_difficulty": 1})
    with pytest.raises(ConfigError, match=r"questions\.synthetic: cannot draw 500"):
        load_source(src)
    dev = SuiteConfig(name="d", synthetic={"family": "arith", "num_questions": 500, "max_difficulty": 1})
    with pytest.raises(ConfigError, match=r"^dev\.suite\.synthetic: cannot draw 500"):
        load_source(dev, where="dev.suite")


def test_decontamination_removes_and_counts_per_suite():
    pool = [{C.QUESTION: "1+2"}, {C.QUESTION: " 3+4 "}, {C.QUESTION: "5+6"}]
    suites = {"a": [{C.QUESTION: "3+4"}], "b": [{C.QUESTION: "3+4"}, {C.QUESTION: "9+9"}]}
    kept, rejected, counts = decontaminate(pool, suites)
    assert [r[C.QUESTION] for r in kept] == ["1+2", "5+6"]
    assert counts == {"a": 1, "b": 1}
    assert rejected[0][C.REASON] == "contaminated:a,b"


def test_synthetic_rows_carry_every_question_column():
    rows, _ = load_source(QuestionsConfig(synthetic={"family": "arith", "num_questions": 3}))
    assert all(set(C.QUESTION_COLUMNS) <= set(r) and r[C.TESTS] == "" for r in rows)
    assert all(r[C.PROMPT] == r[C.QUESTION] for r in rows)  # no template: the question itself


LONG = "Let ABC be a triangle with AB = 13, BC = 14 and CA = 15. Find the area of the triangle ABC."


def test_ngram_overlap_is_removed_with_its_suite_and_ngram():
    pool = [
        {C.QUESTION: "Warm-up. " + LONG.replace("Find", "Compute") + " Give an integer."},  # shares a 13-gram
        {C.QUESTION: "Let ABC be a triangle with AB = 5, BC = 12 and CA = 13. Find its perimeter."},
        {C.QUESTION: "An unrelated question about prime numbers below one hundred and their sum."},
    ]
    kept, rejected, counts = decontaminate(pool, {"geo": [{C.QUESTION: LONG}], "other": [{C.QUESTION: "x y z"}]})
    assert [r[C.QUESTION][:10] for r in kept] == [pool[1][C.QUESTION][:10], pool[2][C.QUESTION][:10]]
    assert counts == {"geo": 1, "other": 0}
    assert rejected[0][C.REASON] == "contaminated:geo"
    gram = rejected[0][MATCHED_NGRAMS]["geo"]
    assert len(gram.split()) == 13 and gram in " ".join(w for w in LONG.lower().replace(".", " .").replace(",", " ,").split())
    # exact-only mode keeps the paraphrase
    assert len(decontaminate(pool, {"geo": [{C.QUESTION: LONG}]}, ngram=None)[0]) == 3


def test_short_questions_match_whole_not_inside_longer_ones():
    suite = {"s": [{C.QUESTION: "4-2"}, {C.QUESTION: "max(1,2)"}]}
    pool = [{C.QUESTION: "4 - 2"}, {C.QUESTION: "6-9+4-2"}, {C.QUESTION: "MAX(1, 2)"}, {C.QUESTION: "max(1,2,3)"}]
    kept, rejected, counts = decontaminate(pool, suite)
    assert [r[C.QUESTION] for r in kept] == ["6-9+4-2", "max(1,2,3)"]
    assert [r[MATCHED_NGRAMS] for r in rejected] == [{"s": "4 - 2"}, {"s": "max ( 1 , 2 )"}]
    assert counts == {"s": 2}


def test_word_grams():
    assert word_grams("9+0-9", 13) == [("9", "+", "0", "-", "9")]
    assert word_grams("a b c d", 2) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert word_grams("  ", 13) == []


INSTRUCTION = " Put the final answer in \\boxed{}."


def _addition_file(path, pairs):
    import json

    path.write_text("".join(json.dumps({"question": f"What is {a}+{b}?", "answer": str(a + b)}) + "\n"
                            for a, b in pairs))
    return str(path)


def test_prompt_template_renders_per_source_and_family(tmp_path):
    path = _addition_file(tmp_path / "q.jsonl", [(1, 2)])
    rows, _ = load_source(QuestionsConfig(path=path, prompt="{question}" + INSTRUCTION))
    assert rows[0][C.QUESTION] == "What is 1+2?"  # the question stays bare: decontamination compares it
    assert rows[0][C.PROMPT] == "What is 1+2?" + INSTRUCTION
    per_family, _ = load_source(QuestionsConfig(path=path, prompt={"q": "Q: {question}", "default": "{question}!"}))
    assert per_family[0][C.PROMPT] == "Q: What is 1+2?"  # the family of a file row defaults to its file stem
    with pytest.raises(ValueError, match="must contain '{question}' exactly once"):
        QuestionsConfig(path=path, prompt="no placeholder")


def test_instruction_in_the_template_keeps_questions_that_are_not_duplicates(tmp_path):
    """The case from the real-model trial: 60 training and 20 eval additions that share only the
    instruction sentence. With the instruction in each question text, 13-grams spanning it match questions
    with the same last operand; with the instruction in the prompt template, only real duplicates go."""
    train_pairs = [(a, 10 + a % 20) for a in range(60)]
    eval_pairs = [(100 + b, 10 + b) for b in range(20)] + [train_pairs[5]]  # one real duplicate
    def embedded(pairs):
        return [{C.QUESTION: f"What is {a}+{b}?{INSTRUCTION}"} for a, b in pairs]
    _, removed, _ = decontaminate(embedded(train_pairs), {"eval": embedded(eval_pairs)})
    assert len(removed) >= 40  # the bug: the shared instruction makes 13-grams match

    train, _ = load_source(QuestionsConfig(path=_addition_file(tmp_path / "train.jsonl", train_pairs),
                                           prompt="{question}" + INSTRUCTION))
    suite, _ = load_source(SuiteConfig(name="eval", path=_addition_file(tmp_path / "eval.jsonl", eval_pairs),
                                       prompt="{question}" + INSTRUCTION))
    kept, removed, counts = decontaminate(train, {"eval": suite})
    assert [r[C.QUESTION] for r in removed] == ["What is 5+15?"] and counts == {"eval": 1}
    assert len(kept) == 59 and all(r[C.PROMPT].endswith(INSTRUCTION) for r in kept)
