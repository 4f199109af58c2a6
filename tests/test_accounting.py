import time

import pytest

from ray_distill.accounting import BudgetExceeded, ResourceMeter, estimate, token_cost
from ray_distill.config import CostConfig, ResourcesConfig, TeacherConfig
from ray_distill.config import EngineConfig, SamplingConfig


def teacher(**cost) -> TeacherConfig:
    return TeacherConfig(name="t", engine=EngineConfig(kind="scripted", persona="concise"),
                         sampling=SamplingConfig(max_tokens=100), resources=ResourcesConfig(num_gpus=2),
                         cost=CostConfig(**cost))


def test_token_cost_per_token_and_gpu_hours():
    assert token_cost(2_000_000, CostConfig(per_million_tokens=3.0), ResourcesConfig()) == pytest.approx(6.0)
    # 3.6M tokens at 1000 tok/s per actor = 1 hour of an actor holding 2 GPUs, at 4/GPU-hour
    cost = CostConfig(per_gpu_hour=4.0, tokens_per_s_per_actor=1000)
    assert token_cost(3_600_000, cost, ResourcesConfig(num_gpus=2)) == pytest.approx(8.0)
    assert token_cost(1e9, CostConfig(), ResourcesConfig()) == 0.0


def test_estimate_uses_stored_length_and_skips_cached():
    e = estimate("M-samples", teacher(per_million_tokens=10.0), questions=50, samples_per_question=4, cached=40,
                 mean_length=25.0)
    assert (e.requests, e.to_generate, e.expected_tokens, e.max_tokens_total) == (200, 160, 4000.0, 16000)
    assert e.length_source == "store" and e.expected_cost == pytest.approx(0.04)
    fallback = estimate("probe", teacher(), questions=10, samples_per_question=1, cached=0, mean_length=None)
    assert fallback.tokens_per_sample == 100 and fallback.length_source == "max_tokens"


def test_check_budget_refuses_before_spending(tmp_path):
    from ray_distill.config import config_from_dict
    from ray_distill.accounting import check_budget

    cfg = config_from_dict({"storage": str(tmp_path), "questions": {"synthetic": {"num_questions": 10}},
                            "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}],
                            "budget": {"max_teacher_tokens": 5000}})
    e = estimate("M-samples", teacher(), questions=50, samples_per_question=1, cached=0, mean_length=100.0)
    check_budget(cfg, [e], spent=0)  # 5,000 expected: exactly the cap
    with pytest.raises(BudgetExceeded, match=r"budget.max_teacher_tokens=5,000: M-samples would spend ~5,000"):
        check_budget(cfg, [e], spent=1)


def test_resource_meter_integrates_held_cpus(ray_local):
    import ray

    @ray.remote(num_cpus=1)
    def hold(seconds: float) -> None:
        time.sleep(seconds)

    ray.get(hold.remote(0.0))  # a worker process exists: its start-up (seconds on a loaded machine) is not held below
    meter = ResourceMeter(interval_s=0.1).start()
    try:
        before = meter.snapshot()
        ray.get(hold.remote(2.0))
        time.sleep(0.3)
        used = meter.since(before)
    finally:
        meter.stop()
    assert 1.0 <= used.cpu_s <= 4.0  # ~2 CPU-seconds held (worker start-up adds a little)
    assert used.gpu_s == 0.0
