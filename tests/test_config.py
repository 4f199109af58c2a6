"""Config loading: YAML + dotted overrides, one-line errors naming the file and the key."""

from pathlib import Path

import pytest

from ray_distill.config import ConfigError, JobConfig, load_config, parse_override, to_flat_dict

JOBS = sorted(Path(__file__).resolve().parents[1].joinpath("jobs").glob("*.yaml"))
MINIMAL = """
questions: {synthetic: {family: arith, num_questions: 10}}
teachers: [{name: t, engine: {kind: scripted, persona: concise}}]
"""


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_shipped_job_loads(job):
    cfg = load_config(job)
    assert isinstance(cfg, JobConfig)
    assert cfg.teachers


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), ["train.epochs=7", "train.lr=1e-4", "teachers.0.sampling.n=3",
                                                   "eval.suites=[]", "tracking.enabled=false"])
    assert cfg.train.epochs == 7 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.teachers[0].sampling.n == 3
    assert cfg.tracking.enabled is False


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, MINIMAL + "train: {epoch: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "train.epoch: unknown key" in msg and "\n" not in msg


def test_unknown_override_key(tmp_path):
    with pytest.raises(ConfigError, match=r"selection\.keep: unknown key"):
        load_config(_write(tmp_path, MINIMAL), ["selection.keep=2"])


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs: .*integer.*'abc'"):
        load_config(_write(tmp_path, MINIMAL), ["train.epochs=abc"])


def test_missing_file():
    with pytest.raises(ConfigError, match=r"nope\.yaml: job file not found"):
        load_config("nope.yaml")


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "questions: [unclosed\n"))


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match="questions: required key is missing"):
        load_config(_write(tmp_path, "teachers: []\n"))


def test_cross_field_validation(tmp_path):
    bad = MINIMAL.replace("persona: concise", "model: null")
    with pytest.raises(ConfigError, match="needs 'persona'"):
        load_config(_write(tmp_path, bad))


def test_override_syntax():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_flat_dict_for_mlflow(tmp_path):
    flat = to_flat_dict(load_config(_write(tmp_path, MINIMAL)))
    assert flat["train.epochs"] == 3
    assert flat["teachers.0.engine.persona"] == "concise"


def test_local_storage_becomes_absolute(tmp_path, monkeypatch):
    # Ray Train workers and Ray Data actors do not run in the driver's cwd: a relative storage path
    # would scatter outputs into their session directories.
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_write(tmp_path, MINIMAL), ["storage=outputs"])
    assert cfg.storage == str(tmp_path / "outputs")
    assert load_config(_write(tmp_path, MINIMAL), ["storage=s3://bucket/x/"]).storage == "s3://bucket/x"


# ----------------------------------------------------------------------------- the dev suite

EVAL = "eval: {suites: [{name: arith, synthetic: {family: arith, seed: 7}}, {name: aime, path: data/aime24.jsonl}]}\n"


def test_removed_smoke_test_suite_points_to_dev_suite(tmp_path):
    path = _write(tmp_path, MINIMAL + "smoke_test: {suite: {name: s, synthetic: {seed: 104}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}: smoke_test.suite: removed; use dev.suite" in msg and "\n" not in msg


@pytest.mark.parametrize("dev, key", [
    ("{suite: {name: arith, synthetic: {family: arith, seed: 8}}}", "dev.suite.name: same name 'arith'"),
    ("{suite: {name: held, path: ./data/../data/aime24.jsonl}}", "dev.suite.path: same file"),
    ("{suite: {name: held, synthetic: {family: arith, seed: 7, num_questions: 20}}}",
     "dev.suite.synthetic: same family and seed"),
])
def test_a_dev_suite_that_is_an_eval_suite_is_a_config_error(tmp_path, dev, key):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, MINIMAL + EVAL), [f"dev={dev}"])
    msg = str(err.value)
    assert key in msg and "selection must not score on a reported eval suite" in msg and "\n" not in msg


def test_dev_suite_defaults_to_a_carve_and_may_not_share_its_name(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL + EVAL))
    assert cfg.dev.suite is None and cfg.dev.name == "dev" and cfg.dev.num_questions == 200
    ok = load_config(_write(tmp_path, MINIMAL + EVAL), ["dev.suite={name: held, synthetic: {family: arith, seed: 8}}"])
    assert ok.dev.name == "held"
    with pytest.raises(ConfigError, match=r"dev \(carved\): same name 'dev' as eval.suites.0"):
        load_config(_write(tmp_path, MINIMAL + EVAL), ["eval.suites.0.name=dev"])


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_shipped_job_selects_on_a_dev_suite_that_is_no_eval_suite(job):
    cfg = load_config(job)
    assert cfg.dev.name not in {s.name for s in cfg.eval.suites}


def test_tensor_parallel_engines_need_that_many_gpus_per_actor():
    from ray_distill.config import ConfigError, EngineConfig, ResourcesConfig, StudentServingConfig, TeacherConfig
    from ray_distill.generation.engines import vllm_engine_kwargs

    engine = EngineConfig(kind="vllm", model="org/model", tensor_parallel_size=4)
    TeacherConfig(name="t", engine=engine, resources=ResourcesConfig(num_gpus=4))
    for gpus in (0, 1, 8):
        with pytest.raises((ValueError, ConfigError), match="tensor_parallel_size 4 needs resources.num_gpus: 4"):
            TeacherConfig(name="t", engine=engine, resources=ResourcesConfig(num_gpus=gpus))
    with pytest.raises((ValueError, ConfigError), match="num_gpus: 2"):
        StudentServingConfig(tensor_parallel_size=2)
    assert vllm_engine_kwargs(4)["distributed_executor_backend"] == "mp" and "distributed_executor_backend" not in vllm_engine_kwargs(1)


def test_adaptive_floor_lies_between_p_and_m():
    from ray_distill.config import config_from_dict

    base = {"questions": {"synthetic": {"num_questions": 5}},
            "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}]}
    for floor in (2, 9):
        with pytest.raises(ConfigError, match=f"adaptive.min_samples={floor} must exceed keep_per_question"):
            config_from_dict({**base, "selection": {"samples_per_question": 8, "keep_per_question": 2,
                                                    "adaptive": {"enabled": True, "min_samples": floor}}})
    cfg = config_from_dict({**base, "selection": {"samples_per_question": 8, "keep_per_question": 2,
                                                  "adaptive": {"min_samples": 3}}})
    assert cfg.selection.adaptive.min_samples == 3


def test_base_chains_enter_the_base_students_cache_key_only_when_used(tmp_path):
    from ray_distill.students import base_spec

    plain = base_spec(load_config(_write(tmp_path, MINIMAL)))
    assert "chains" not in plain  # bases built before the option keep their cache key
    chained = base_spec(load_config(_write(tmp_path, MINIMAL), ["student.base_chains=3000"]))
    assert chained == {**plain, "chains": 3000}
    quickstart = load_config(Path(__file__).parents[1] / "jobs" / "quickstart.yaml")
    assert quickstart.student.base_chains > 0


def test_curve_multiples_that_do_not_divide_the_epochs_are_a_config_error(tmp_path):
    job = _write(tmp_path, MINIMAL)
    cfg = load_config(job, ["ablation.curve.multiples=[1,2,4]", "train.epochs=8"])
    assert cfg.ablation.curve.multiples == [1, 2, 4]
    with pytest.raises(ConfigError, match=r"ablation.curve.multiples \[3\] do not divide train.epochs=8"):
        load_config(job, ["ablation.curve.multiples=[1,3]", "train.epochs=8"])


@pytest.mark.parametrize("overrides, where", [
    (["eval.temperature=0"], "suites.0 (arith) avg@k: k=4 samples at temperature 0"),
    (["eval.k=1", "eval.suites.0.k=3", "eval.suites.0.temperature=0"], "suites.0 (arith) avg@k: k=3"),
    (["compression.temperature=0"], "compression: k=4 samples at temperature 0"),
    (["dev={suite: {name: held, synthetic: {family: arith, seed: 9}, k: 2, temperature: 0}}"],
     "dev.suite (held) avg@k: k=2 samples at temperature 0"),
])
def test_k_greedy_copies_of_one_answer_are_refused(tmp_path, overrides, where):
    """avg@k / a pass rate over k > 1 samples at temperature 0 averages k identical greedy answers: refused in one
    line that says what to set; k = 1 at temperature 0 and the defaults (k = 4 at 0.6) are fine."""
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, MINIMAL + EVAL), overrides)
    msg = str(err.value)
    assert where in msg and "copies of one greedy answer; set k: 1 or a temperature > 0" in msg and "\n" not in msg
    cfg = load_config(_write(tmp_path, MINIMAL + EVAL), ["eval.k=1", "eval.temperature=0"])
    assert cfg.eval.sampling(cfg.eval.suites[0]) == {"k": 1, "temperature": 0.0, "max_tokens": cfg.eval.max_tokens}
    assert load_config(_write(tmp_path, MINIMAL + EVAL)).eval.temperature == 0.6


def test_max_seq_len_must_hold_every_model_teachers_longest_completion(tmp_path):
    """A model teacher's completions of up to min(sampling.max_tokens, format.max_tokens) tokens must fit
    train.max_seq_len (else final answers are cut); scripted teachers write short fixed-length rows."""
    two = MINIMAL.replace("teachers: [{name: t, engine: {kind: scripted, persona: concise}}]",
                          "teachers: [{name: t, engine: {kind: scripted, persona: concise}},\n"
                          "           {name: big, engine: {kind: vllm, model: org/name}, sampling: {max_tokens: 300}}]")
    path = _write(tmp_path, two)
    with pytest.raises(ConfigError, match=r"train.max_seq_len 256 < teacher 'big' sampling.max_tokens 300 "
                                          r"\(format.max_tokens 512\)") as err:
        load_config(path)
    assert "\n" not in str(err.value)
    assert load_config(path, ["train.max_seq_len=300"]).train.max_seq_len == 300
    assert load_config(path, ["format.max_tokens=200"]).format.max_tokens == 200  # the format cap binds
    assert load_config(_write(tmp_path, MINIMAL), ["train.max_seq_len=8"]).train.max_seq_len == 8  # scripted only
