"""Long-lived vLLM engines (``ray_distill.generation.hosts``): which engines are hosted, a host's actor options, and
on a real local Ray cluster with real vLLM (CPU, two random micro students): one host serves model A, then B, then
A again inside ``keep_engines`` (swapped in place, the same actor), its samples are those of a fresh engine actor
pool, a killed host is restarted and rebuilds its engine, and idle hosts are shut down by ``release_engines`` and
after a failed stage."""

from __future__ import annotations

import logging

import pytest
import ray

from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig, TeacherConfig
from ray_distill.generation.actor import VLLM_CPU_ENV_DEFAULTS, engine_key, generate_dataset
from ray_distill.generation.hosts import (POOL, _own_cpus, actor_bundles, engine_hosts, fits, host_options, hosted,
                                         keep_engines, leaves_room, release_engines, within)


def _teacher(model: str = "m", **engine) -> TeacherConfig:
    return TeacherConfig(name="t", engine=EngineConfig(kind="vllm", model=model, dtype="float32", **engine),
                         sampling=SamplingConfig(n=2, max_tokens=12, temperature=1.0))


def test_which_engines_are_hosted_and_their_key():
    assert hosted(_teacher())
    assert not hosted(_teacher(long_lived=False))
    assert not hosted(_teacher(max_concurrent_batches=0))  # the synchronous waves build their engine in the actor
    assert not hosted(TeacherConfig(name="s", engine=EngineConfig(kind="scripted", persona="concise")))
    assert engine_key(_teacher().engine) == engine_key(_teacher().engine)
    assert engine_key(_teacher().engine) != engine_key(_teacher("other").engine)
    assert engine_key(_teacher().engine) != engine_key(_teacher(chat_template="{{ x }}").engine)
    assert StudentConfig().serving.long_lived  # the student is hosted by default


def test_host_options_are_the_actor_pools_resources_and_cpu_environment():
    cpu = host_options(_teacher())
    assert cpu["num_cpus"] == 1.0 and cpu["num_gpus"] == 0.0
    assert cpu["runtime_env"]["env_vars"].keys() == VLLM_CPU_ENV_DEFAULTS.keys()
    gpu = _teacher().model_copy(update={"resources": ResourcesConfig(num_cpus=4, num_gpus=2,
                                                                      custom_resources={"generation": 1})})
    opts = host_options(gpu)
    assert (opts["num_cpus"], opts["num_gpus"], opts["resources"]) == (4, 2, {"generation": 1})
    assert "runtime_env" not in opts  # vLLM's CPU settings only without a GPU


def test_a_block_without_ray_starts_no_cluster():
    """Outside a Ray job (a fresh process), a keep_engines block and release_engines start no Ray cluster."""
    import subprocess
    import sys

    code = ("import ray\nfrom ray_distill.generation.hosts import keep_engines, release_engines\n"
            "with keep_engines():\n    release_engines()\nprint('initialized', ray.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "initialized False", out.stdout + out.stderr[-2000:]


def test_idle_hosts_leave_a_cpu_for_graders_and_data_tasks():
    assert leaves_room(2, 1)  # the local quickstart: one CPU for the host, one for the rest
    assert not leaves_room(2, 2) and not leaves_room(2, 1.5)  # a plan whose tasks never get a CPU would hang
    assert leaves_room(16, 8)


def _alive(handle, wait_s: float = 30.0) -> bool:
    """Whether the actor still answers ``wait_s`` seconds on (``ray.kill`` takes effect asynchronously)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            ray.get(handle.__ray_ready__.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.5)


@pytest.mark.slow
def test_one_host_swaps_models_in_place_and_samples_as_a_fresh_pool(ray_local, tmp_path, caplog):
    from ray_distill.evaluation.evaluate import sample_student
    from ray_distill.synthetic.student import save_random_student

    a = save_random_student("micro", str(tmp_path / "a"), seed=1)
    b = save_random_student("micro", str(tmp_path / "b"), seed=2)
    questions = [{"question_id": f"q{i}", "question": f"{i}+{i + 1}", "answer": str(2 * i + 1), "domain": "arith",
                  "family": "arith", "difficulty": 1} for i in range(12)]

    def sample(model: str, long_lived: bool = True) -> list[str]:
        student = StudentConfig(serving={"long_lived": long_lived})
        return sample_student(questions, model, 2, 1.0, 12, seed=3, student=student)["completion"].tolist()

    caplog.set_level(logging.INFO, logger="ray_distill.generation.hosts")
    with keep_engines():
        first_a = sample(a)
        (host,) = [h.handle for h in POOL._idle]
        first_b = sample(b)
        again_a = sample(a)
        assert [h.handle for h in POOL._idle] == [host]  # one actor served all three
        release_engines()  # what a Ray Train launch and lm-evaluation-harness do first
        assert not POOL._idle and not _alive(host)
    loads = [r.getMessage() for r in caplog.records if "engine host for student" in r.getMessage()]
    assert len(loads) == 3 and "(new host)" in loads[0], loads
    assert f"loaded {b} " in loads[1] and f"(swapped out {a})" in loads[1], loads
    assert f"(swapped out {b})" in loads[2], loads

    assert again_a == first_a and first_b != first_a  # a swapped-back engine samples as before
    assert sample(a, long_lived=False) == first_a  # and as a fresh engine actor pool of the stage does
    assert not POOL._idle  # outside keep_engines a lease's hosts end with it


@pytest.mark.slow
def test_a_failed_stage_kills_its_hosts_and_only_the_outermost_block_releases(ray_local, tiny_student_path):
    teacher = _teacher(tiny_student_path, max_model_len=256)
    with keep_engines():
        with keep_engines():  # a stage's own block inside the job's
            with engine_hosts(teacher) as (host,):
                pass
        assert [h.handle for h in POOL._idle] == [host] and _alive(host, wait_s=0)
        # a host that dies is restarted by Ray and rebuilds the engine its next batch names: the stage loses nothing
        with engine_hosts(teacher) as hosts:
            ray.kill(host, no_restart=False)
            questions = ray.data.from_items([{"question_id": f"q{i}", "question": f"{i}+1", "answer": str(i + 1),
                                              "domain": "arith", "family": "arith", "difficulty": 1} for i in range(4)])
            rows = generate_dataset(questions, teacher, hosts).take_all()
        assert len(rows) == 8 and all(r["error"] == "" for r in rows)
        with pytest.raises(RuntimeError, match="stage failed"):
            with engine_hosts(teacher) as (reused,):
                assert reused == host  # same engine: the idle host is taken, nothing built
                raise RuntimeError("stage failed")
        assert not POOL._idle and not _alive(host)  # a failed stage's host is never handed to the next one


def test_own_cpus_are_those_the_leasing_process_holds(ray_local):
    assert _own_cpus() == 0.0  # a driver holds none
    assert ray.get(ray.remote(num_cpus=0.5)(_own_cpus).remote()) == 0.5  # a task (or a Tune trial) its own


@pytest.mark.slow
def test_a_process_holding_a_cpu_keeps_no_host_on_the_last_free_one(ray_local, tiny_student_path):
    """A Tune trial holds a CPU of its own: a host it kept on the cluster's last free CPU would leave none for the
    tokenization before its next Ray Train launch (such a trial waited forever)."""

    @ray.remote(num_cpus=1)
    def lease_in_a_trial(teacher) -> tuple[int, float]:
        from ray_distill.generation.hosts import POOL, _own_cpus, engine_hosts, keep_engines  # this process's pool

        with keep_engines():
            with engine_hosts(teacher):
                pass
            return POOL.idle(), _own_cpus()

    teacher = _teacher(tiny_student_path, max_model_len=256)  # its host: 1 CPU, the task's: the other
    assert ray.get(lease_in_a_trial.remote(teacher), timeout=600) == (0, 1.0)
    assert _cpus_back(2)  # the host was shut down with the block (asynchronously)


def test_within_sums_the_bundles_against_the_free_total():
    assert within([{"CPU": 1.0}, {"CPU": 1.0}], {"CPU": 2.0, "memory": 1e9})
    assert not within([{"CPU": 1.0}] * 3, {"CPU": 2.0})
    assert not within([{"CPU": 1.0, "GPU": 1.0}], {"CPU": 2.0})  # a kind the cluster has none of
    assert within([{"CPU": 0.5, "worker": 1.0}, {"CPU": 0.5}], {"CPU": 1.0, "worker": 1.0})


def test_a_placement_group_tried_at_once_says_what_fits(ray_local):
    assert fits([{"CPU": 1}, {"CPU": 1}])  # the 2-CPU test cluster, nothing else running
    assert not fits([{"CPU": 1}] * 3, timeout_s=0.5) and not fits([{"CPU": 1, "GPU": 1}], timeout_s=0.5)
    assert fits([]) and fits([{"CPU": 0, "GPU": 0}])  # nothing to reserve
    assert _cpus_back(2)  # the tried groups are removed (asynchronously: their CPUs return within moments)
    teacher = _teacher().model_copy(update={"resources": ResourcesConfig(num_actors=2, num_cpus=0.5)})
    assert actor_bundles(teacher) == [{"CPU": 0.5, "GPU": 0.0}] * 2 + [{"CPU": 1.0}]  # and a CPU for the stage's tasks


def _cpus_back(cpus: float, wait_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) != cpus:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_idle_hosts_stay_through_what_fits_beside_them(ray_local, tiny_student_path, caplog):
    """A Ray Train launch or a teacher's own actors that fit beside the idle host keep it (the next stage swaps its
    model in); what does not fit releases it first."""
    from ray.util import placement_group_table

    caplog.set_level(logging.INFO, logger="ray_distill.generation.hosts")
    with keep_engines():
        with engine_hosts(_teacher(tiny_student_path, max_model_len=256)) as (host,):
            pass
        assert POOL.held() == {"CPU": 1.0, "GPU": 0.0}
        tried = len(placement_group_table())
        release_engines(room_for=[{"CPU": 1}], what="a one-worker launch")  # the host holds 1 of the 2 CPUs
        assert [h.handle for h in POOL._idle] == [host] and _alive(host, wait_s=0)
        assert len(placement_group_table()) == tried + 1  # Ray placed a group of the launch's bundles beside it
        release_engines(room_for=[{"CPU": 1}] * 2, what="a two-worker launch")
        assert not POOL._idle and not _alive(host)
        # 2 CPUs never fit beside a host on 1 of the cluster's 2: released at once, no group tried
        assert len(placement_group_table()) == tried + 1
    messages = [r.getMessage() for r in caplog.records]
    assert "kept 1 idle engine host through a one-worker launch: the cluster has room for both" in messages
    assert "released 1 idle engine host for a two-worker launch" in messages
