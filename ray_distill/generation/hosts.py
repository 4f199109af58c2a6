"""Long-lived vLLM engines: an engine host is a Ray actor that holds a vLLM engine's resources (CPUs, GPUs, custom
resources) and its engine, and swaps the model in place when a later stage asks for another one; the Ray Data
actors of a stage only forward their batches to it.

    with keep_engines():                       # hosts outlive a stage inside this block (the job's flow opens it)
        with engine_hosts(teacher) as hosts:   # num_actors hosts with teacher.engine's model loaded
            ds = generate_dataset(questions, teacher, hosts=hosts)
            ...consume ds...
        with engine_hosts(student) as hosts:   # the same hosts, the student's model swapped in
            ...

Why: on vLLM's CPU build a fresh engine actor pays ~10 s importing vLLM and ~3 s building the engine; a job
starts one per stage and per model (the smoke test's candidates, compression's base student, the base and the
trained student at evaluation). A host imports vLLM once and builds each later engine in its own process
(benchmarks/engine_hosts.py measures both). Outside :func:`keep_engines` a lease's hosts are shut down when it
ends, so a stage holds an engine's resources only while it runs, as a plain actor pool did. Idle hosts are
released before anything else needs their resources: a new host of another shape, lm-evaluation-harness's own engine,
a Ray Train launch (``training.sft``) or an engine that is not hosted when the cluster has no room for its workers or
actors beside them (a placement group tried at once, :func:`fits`), and the end of the block; and a host is kept idle
only while the cluster has a CPU left, beside the hosts and the CPUs the leasing process holds (a Tune trial's), for
the graders and Ray Data tasks that run between two leases.

Only ``vllm`` engines with continuous batching (``engine.max_concurrent_batches > 0``) and ``engine.long_lived``
are hosted; every other engine is built in its stage's actors as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import ray

from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.actor import engine_key, engine_runtime_env, free_engine_memory, generate_dataset

logger = logging.getLogger(__name__)


def hosted(teacher: TeacherConfig) -> bool:
    """Whether ``teacher``'s engine runs in engine hosts (:mod:`ray_distill.generation.hosts`)."""
    e = teacher.engine
    return e.kind == "vllm" and e.long_lived and e.max_concurrent_batches > 0


class EngineHost:
    """The actor: at most one engine at a time, built by :meth:`load` (the previous one shut down first) and
    serving every batch of every forwarding actor through continuous batching (:mod:`.continuous`). A host that
    died (its process killed, an engine crash) is restarted by Ray and rebuilds the engine its next batch names,
    which Ray sends again: a stage loses no batch, as with a plain engine actor pool."""

    def __init__(self):
        self.engine = None
        self.key: str | None = None
        self.model: str | None = None
        self._lock = None  # an asyncio.Lock, made on the actor's event loop

    async def load(self, engine: dict) -> dict:
        """Serve ``engine`` (an ``EngineConfig`` dump): nothing to do when it is loaded already. Returns what
        happened: ``{"model", "swapped_out", "seconds", "built"}``."""
        import asyncio

        if self._lock is None:
            self._lock = asyncio.Lock()
        cfg = EngineConfig.model_validate(engine)
        async with self._lock:  # one build at a time; batches that arrive meanwhile wait for it
            key = engine_key(cfg)
            if key == self.key:
                return {"model": cfg.model, "swapped_out": None, "seconds": 0.0, "built": False}
            previous = self.model
            start = time.perf_counter()
            self._shutdown()
            await asyncio.to_thread(self._build, cfg)
            self.key, self.model = key, cfg.model
        return {"model": cfg.model, "swapped_out": previous, "seconds": time.perf_counter() - start, "built": True}

    def _build(self, cfg: EngineConfig) -> None:
        from ray_distill.generation.continuous import ContinuousVLLMEngine

        self.engine = ContinuousVLLMEngine(cfg)

    async def generate(self, key: str, engine: dict, messages: list[list[dict]], sampling: dict,
                       seeds: list[list[int]]) -> list:
        """One batch on the engine ``key`` names (``engine``: its config, built first when this host does not
        serve it: after a restart, or a lease's load that Ray retried)."""
        if key != self.key:
            info = await self.load(engine)
            if info["built"]:  # (a batch that waited for another's rebuild finds it done)
                logger.warning("engine host rebuilt %s for a batch (%.1f s)", info["model"], info["seconds"])
        return await self.engine.generate_async(messages, SamplingConfig.model_validate(sampling), seeds)

    def _shutdown(self) -> None:
        """Stop the engine's loop and free its memory (its engine-core process, where vLLM runs one)."""
        if self.engine is None:
            return
        engine, self.engine, self.key, self.model = self.engine, None, None, None
        engine.close()
        core = getattr(engine.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del engine
        free_engine_memory()


@dataclass
class _Host:
    shape: str  # the actor options it was created with, as JSON
    bundle: dict[str, float]  # the resources it holds (:func:`resource_bundle`)
    handle: object
    key: str | None = None


class HostPool:
    """The driver's hosts: leased per stage, kept idle between leases inside :func:`keep_engines`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[_Host] = []
        self._job: str | None = None
        self._keep = 0
        self.engine_loads: Counter = Counter()  # teacher name -> engines built for it (new hosts and swaps)

    def _current(self) -> None:
        """Forget hosts of an earlier Ray session (they died with it)."""
        job = _job_id()
        if job != self._job:
            self._idle, self._job, self._keep = [], job, 0

    @contextlib.contextmanager
    def lease(self, teacher: TeacherConfig) -> Iterator[list]:
        options = host_options(teacher)
        shape, key, n = json.dumps(options, sort_keys=True), engine_key(teacher.engine), teacher.resources.num_actors
        with self._lock:
            self._current()
            same = sorted((h for h in self._idle if h.shape == shape), key=lambda h: h.key != key)
            taken = same[:n]
            self._idle = [h for h in self._idle if h not in taken]
            if len(taken) < n:  # new hosts need resources: free those of every idle host this lease does not take
                _kill(self._idle)
                self._idle = []
        cls = ray.remote(EngineHost)
        bundle = resource_bundle(teacher)
        taken += [_Host(shape, bundle, cls.options(**options).remote()) for _ in range(n - len(taken))]
        ok = False
        try:
            loads = ray.get([h.handle.load.remote(teacher.engine.model_dump()) for h in taken])
            for h, info in zip(taken, loads):
                h.key = key
                if info["built"]:
                    self.engine_loads[teacher.name] += 1
                    how = f"swapped out {info['swapped_out']}" if info["swapped_out"] else "new host"
                    logger.info("engine host for %s: loaded %s in %.1f s (%s)", teacher.name, info["model"],
                                info["seconds"], how)
            yield [h.handle for h in taken]
            ok = True
        finally:
            with self._lock:
                keep = ok and self._keep and _job_id() == self._job
                if keep and not leaves_room(ray.cluster_resources().get("CPU", 0.0) - _own_cpus(),
                                            sum(h.bundle["CPU"] for h in [*self._idle, *taken])):
                    keep = False
                    logger.info("engine hosts for %s not kept: the cluster would have less than %g CPU for other "
                                "work", teacher.name, MIN_FREE_CPUS)
                if keep:
                    self._idle += taken
                else:  # no block keeps them, the stage failed (a broken engine is never reused), or no room
                    _kill(taken)

    def held(self) -> Counter:
        """The resources the idle hosts of this Ray session hold (Ray's names: CPU, GPU, custom ones)."""
        held: Counter = Counter()
        with self._lock:
            self._current()
            for h in self._idle:
                held.update(h.bundle)
        return held

    def idle(self) -> int:
        """Idle hosts of this Ray session."""
        with self._lock:
            self._current()
            return len(self._idle)

    def release(self) -> int:
        """Shut every idle host down; returns how many."""
        with self._lock:
            idle, self._idle = self._idle, []
        _kill(idle)
        return len(idle)

    @contextlib.contextmanager
    def keep(self) -> Iterator[None]:
        with self._lock:
            self._current()
            self._keep += 1
        try:
            yield
        finally:
            with self._lock:
                self._keep -= 1
                last = self._keep == 0
            if last:
                self.release()


HOST_RESTARTS = 3
# Idle hosts are kept only while this many of the cluster's CPUs stay free for what runs between two leases: graders,
# Ray Data tasks (a plan whose tasks can never get a CPU hangs), the tokenization before a Ray Train launch. Counted
# besides the CPUs the leasing process holds itself (a Tune trial's: a trial that kept a host on the last free CPU
# waited forever for its tokenization).
MIN_FREE_CPUS = 1.0


def leaves_room(cluster_cpus: float, held_cpus: float) -> bool:
    """Whether idle hosts holding ``held_cpus`` of ``cluster_cpus`` (the cluster's CPUs less those the leasing process
    holds itself) leave :data:`MIN_FREE_CPUS` free."""
    return cluster_cpus - held_cpus >= MIN_FREE_CPUS


def actor_bundles(teacher: TeacherConfig) -> list[dict[str, float]]:
    """What a stage running ``teacher``'s engine in its own actor pool needs (:func:`release_engines`' ``room_for``):
    one bundle per actor and :data:`MIN_FREE_CPUS` for the stage's Ray Data tasks and graders."""
    return [resource_bundle(teacher)] * teacher.resources.num_actors + [{"CPU": MIN_FREE_CPUS}]


def resource_bundle(teacher: TeacherConfig) -> dict[str, float]:
    """The resources one of ``teacher``'s engine actors (or its host) holds, in Ray's names."""
    res = teacher.resources
    return {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom_resources}


def host_options(teacher: TeacherConfig) -> dict:
    """Ray actor options of a host for ``teacher``'s engine: the resources and environment its actor pool had."""
    res = teacher.resources
    # restarted after a crash, each call sent again (EngineHost rebuilds its engine): a killed host loses no batch
    # "DEFAULT": scheduled on the cluster like a stage's Ray Data actors, never in the placement group of the
    # process that leases it (a Tune trial's, which has no bundle for it)
    options: dict = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_concurrency": 1000,
                     "max_restarts": HOST_RESTARTS, "max_task_retries": HOST_RESTARTS, "scheduling_strategy": "DEFAULT"}
    if res.custom_resources:
        options["resources"] = dict(sorted(res.custom_resources.items()))
    env = engine_runtime_env(teacher)
    if env:
        options["runtime_env"] = env
    return options


def _own_cpus() -> float:
    """The CPUs this process holds itself while it leases hosts: a Tune trial's (``tune.trial_resources``), a task's or
    an actor's; none for a driver. They stay taken while idle hosts are kept."""
    context = ray.get_runtime_context()
    return float(context.get_assigned_resources().get("CPU", 0.0)) if context.worker.mode == ray.WORKER_MODE else 0.0


def _job_id() -> str | None:
    """The Ray job this process drives (None without Ray: asking Ray's runtime context would start a cluster)."""
    return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None


def _kill(hosts: list[_Host]) -> None:
    for h in hosts:
        try:
            ray.kill(h.handle)
        except Exception:  # already gone (its node died, Ray shut down)
            logger.debug("engine host already gone", exc_info=True)


POOL = HostPool()


@contextlib.contextmanager
def engine_hosts(teacher: TeacherConfig) -> Iterator[list | None]:
    """Hosts serving ``teacher``'s engine for one stage (``None`` when the engine is not hosted: build it in
    the stage's actors, :func:`hosted`)."""
    if not hosted(teacher):
        yield None
        return
    with POOL.lease(teacher) as hosts:
        yield hosts


@contextlib.contextmanager
def generation(questions: ray.data.Dataset, teacher: TeacherConfig) -> Iterator[ray.data.Dataset]:
    """``generate_dataset(questions, teacher)`` on engine hosts when the engine is hosted, for use inside the block.
    ``questions`` must be built (no task of it still to run) before: a host may take the last free CPU."""
    with engine_hosts(teacher) as hosts:
        yield generate_dataset(questions, teacher, hosts)


def keep_engines() -> contextlib.AbstractContextManager:
    """A block whose stages reuse each other's idle hosts; they are shut down when the (outermost) block ends."""
    return POOL.keep()


def release_engines(room_for: list[dict[str, float]] | None = None, what: str = "") -> None:
    """Free the resources of every idle host now: before lm-evaluation-harness's own engine, and before a Ray Train
    launch or an engine that is not hosted (``what``) unless what it needs, ``room_for`` (Ray resource bundles: one per
    training worker or engine actor), fits on the cluster beside them: the hosts then serve the next stage that samples
    (a model swapped in: ~3-5 s on CPU instead of a new host's ~10-12 s)."""
    if not ray.is_initialized() or not (n := POOL.idle()):
        return
    # what the cluster could ever give beside the idle hosts and this process: a launch bigger than that is a no at
    # once, without a placement group (a group waits FIT_TIMEOUT_S, and an autoscaler could read it as demand); the
    # group then answers for what is free now (another stage's actors may still be ending: it waits for them)
    room = Counter(ray.cluster_resources())
    room.subtract(POOL.held())
    room["CPU"] -= _own_cpus()
    if room_for and within(room_for, room) and fits(room_for):
        logger.info("kept %d idle engine host%s through %s: the cluster has room for both", n, "" if n == 1 else "s",
                    what)
        return
    if n := POOL.release():
        logger.info("released %d idle engine host%s%s", n, "" if n == 1 else "s", f" for {what}" if what else "")


def within(bundles: list[dict[str, float]], free: dict[str, float]) -> bool:
    """Whether the resources ``bundles`` ask for, summed, are at most ``free`` (summed over the cluster's nodes): what
    any placement of them needs, though not all it needs (each bundle must fit on one node)."""
    need: Counter = Counter()
    for bundle in bundles:
        need.update(bundle)
    return all(amount <= free.get(name, 0.0) + 1e-9 for name, amount in need.items())


FIT_TIMEOUT_S = 2.0  # a placement group that fits is ready in milliseconds; one that does not waits this long


def fits(bundles: list[dict[str, float]], timeout_s: float = FIT_TIMEOUT_S) -> bool:
    """Whether ``bundles`` (``{"CPU": 1, "GPU": 1, ...}`` each) can be placed on the cluster now, as Ray Train places
    its workers ("PACK": on as few nodes as fit them): a placement group reserved and removed at once, so Ray's own
    scheduler decides, across nodes and resource kinds."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [b for b in ({k: float(v) for k, v in bundle.items() if v} for bundle in bundles) if b]
    if not bundles:
        return True
    group = placement_group(bundles, strategy="PACK")
    try:
        return group.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(group)
