import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, QuestionsConfig, SuiteConfig
from ray_distill.data.sources import decontaminate, load_source


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


def test_decontamination_removes_and_counts_per_suite():
    pool = [{C.QUESTION: "1+2"}, {C.QUESTION: " 3+4 "}, {C.QUESTION: "5+6"}]
    suites = {"a": [{C.QUESTION: "3+4"}], "b": [{C.QUESTION: "3+4"}, {C.QUESTION: "9+9"}]}
    kept, rejected, counts = decontaminate(pool, suites)
    assert [r[C.QUESTION] for r in kept] == ["1+2", "5+6"]
    assert counts == {"a": 1, "b": 1}
    assert rejected[0][C.REASON] == "contaminated:a,b"
