"""Adaptive sampling without waves: every question runs its own rounds (:mod:`ray_distill.curation.adaptive`), and
the next round of a question starts as soon as its own samples of the round are graded, not when the slowest
sample of every question's round is.

    out = curate_adaptive_stream(store, questions_url, teacher, plan, work_url, grading)
    out.final["q17"]    # why it stopped: "enough", "hopeless", ...; out.stats: three counters per question

Rows never pass through the driver: they go from task to actor to actor as Ray objects, and the driver holds only
object refs, each question's counters (samples, tokens, the digests of its distinct correct completions, its
failed sample indices) and its place in its round. Per chunk of requests (up to the teacher's ``batch_size``, a
question's round never split):

1. ``_prepare`` (a task, no CPU): the chunk's request rows from the question blocks in the object store, and
   which of them the generation store lacks (its index is taken once, at the start: what an earlier run stored
   is read, not generated again);
2. the teacher's generation actors generate the missing ones: forwarders to the engine hosts of a vLLM teacher
   (:mod:`ray_distill.generation.hosts`: the engines load once, whatever the rounds), else engine actors of its
   own (scripted, ``openai``, ``hf``); both restart and retry a call when their process dies;
3. a :class:`RoundGrader` actor (one CPU each, as many as the cluster has CPUs left) persists the new samples in
   the generation store, grades the chunk's rows, writes them into the question buckets under
   ``<work_url>/graded`` (the layout :func:`ray_distill.curation.plane.grade` writes) and returns one small tuple
   per row; with the LLM judge (``verify.judge``) the graded rows go to the judge's actors first
   (:class:`ray_distill.curation.judge_stage.JudgeBatch`: verdicts from the store where it has them) and a task
   writes them.

The job's token budget is asked before each chunk generates (``may_spend(new samples, mean tokens)``, the
samples other chunks are generating counted as spent). :func:`ray_distill.curation.adaptive.replay` runs the same
rounds over stored samples (the data-budget search): what each question would have drawn here.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import pandas as pd
import ray

from ray_distill import columns as C
from ray_distill.config import TeacherConfig
from ray_distill.curation import adaptive as A
from ray_distill.curation.adapters import GradeBatch
from ray_distill.curation.judge import judge_summary
from ray_distill.curation.judge_stage import JudgeBatch
from ray_distill.curation.plane import (_SAMPLE_COLUMNS, KEY, Grading, _clear, _index, _persist,
                                        _request_rows, _resolve, _write_buckets, bucket_report, cluster_cpus,
                                        combine_judge, grader_pool_size, merge_samples, num_buckets, stored_samples)
from ray_distill.data.fs import fresh, join
from ray_distill.generation.actor import HostedGenerateBatch, batch_class, engine_pool, resolve_api_key
from ray_distill.generation.hosts import HOST_RESTARTS, engine_hosts
from ray_distill.generation.store import GenerationStore

logger = logging.getLogger(__name__)

QUESTIONS_PER_BLOCK = 256  # question rows per object of the question pool
PROGRESS_EVERY_S = 30.0


@dataclass
class AdaptiveResult:
    """What :func:`curate_adaptive_stream` leaves: the graded samples on storage (every round's, in the layout
    :func:`ray_distill.curation.plane.grade` writes; a failed request retried in a later round is there twice, see
    :func:`ray_distill.curation.adaptive.latest_samples`) and what the driver kept of them."""

    graded_url: str
    final: dict[str, str]  # question id -> why it stopped (adaptive.ENOUGH, HOPELESS, ..., JOB_BUDGET)
    stats: pd.DataFrame  # adaptive.question_stats of each question's samples (latest per sample)
    rounds: int
    counters: dict = field(default_factory=dict)  # generated/failed/tokens of this call; rows, correct, verdicts
    judge: dict = field(default_factory=dict)


@dataclass
class QuestionState:
    """What the driver holds of one question (no sample): where its current round stands and its counters."""

    block: int
    want: int  # samples it has once its current round is graded
    below: int = 0  # sample indices below this were asked for in earlier rounds
    round: int = 0
    pending: int = 0  # requests of the current round not graded yet
    sampled: int = 0  # sample indices graded (a failed one retried counts once)
    tokens: int = 0
    digests: set = field(default_factory=set)  # of its distinct verified-correct completions
    failed: dict = field(default_factory=dict)  # sample index -> completion tokens of its failed request
    before: int = 0  # distinct correct after its previous round
    sampled_before: int = 0

    def add(self, index: int, failed: bool, tokens: int, digest: int | None) -> None:
        """One graded sample of the current round."""
        if index in self.failed:  # the retry of a failed request replaces it
            self.tokens -= self.failed.pop(index)
        else:
            self.sampled += 1
        self.tokens += tokens
        if failed:
            self.failed[index] = tokens
        if digest is not None:
            self.digests.add(digest)
        self.pending -= 1

    def decide(self, plan: A.SamplingPlan) -> str:
        """The decision after the current round (:func:`ray_distill.curation.adaptive.question_status`)."""
        have = len(self.digests)
        status = A.question_status(have, self.sampled, self.tokens, self.before, self.sampled - self.sampled_before,
                                   self.round, plan)
        self.before, self.sampled_before = have, self.sampled
        return status

    def next_round(self, want: int) -> dict:
        """Start the next round, up to ``want`` samples; returns its request spec (:func:`plane._request_rows`)."""
        self.round += 1
        if self.round > 1:
            self.below = self.want
        self.want = want
        retry = sorted(self.failed)
        self.pending = max(0, want - self.below) + len([i for i in retry if i < self.below])
        return {"n": want, "from": self.below, "retry": retry}


def completion_digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def row_summary(graded: pd.DataFrame) -> list[tuple]:
    """``(question id, sample index, failed, completion tokens, digest of a verified-correct completion or None)``
    per graded row: all the driver learns of a sample."""
    failed = graded[C.ERROR].fillna("").astype(str) != ""
    ok = A.ok_mask(graded).to_numpy()
    return [(str(q), int(i), bool(f), int(t), completion_digest(str(c)) if o else None)
            for q, i, f, t, c, o in zip(graded[C.QUESTION_ID], graded[C.SAMPLE_INDEX], failed, graded[C.NUM_TOKENS],
                                        graded[C.COMPLETION], ok)]


class RoundGrader:
    """The actor that finishes a chunk: new samples persisted, every row graded and written to its bucket."""

    def __init__(self, grading: Grading, root: str, teacher: str, graded_url: str, buckets: int):
        self.grade = GradeBatch(grading.max_tokens, grading.require_think, grading.tokenizer, grading.code)
        self.store, self.root, self.teacher = GenerationStore(root), root, teacher
        self.graded_url, self.buckets = graded_url, buckets

    def finish(self, requests: pd.DataFrame, generated: pd.DataFrame | None, index: list) -> dict:
        """Store, grade and write a chunk; its summary (:func:`written`)."""
        graded, made = self.graded(requests, generated, index)
        return written(graded, made, self.graded_url, self.buckets)

    @ray.method(num_returns=2)
    def graded(self, requests: pd.DataFrame, generated: pd.DataFrame | None, index: list) -> tuple[pd.DataFrame, dict]:
        """Store and grade a chunk (for the judge): its graded rows and what it generated."""
        made = {"generated": 0, "failed": 0, "completion_tokens": 0, "prompt_tokens": 0}
        if generated is not None and len(generated):
            made = _persist(generated, self.root, self.teacher).iloc[0].to_dict()
            new = generated[_SAMPLE_COLUMNS]
        else:
            new = pd.DataFrame(columns=_SAMPLE_COLUMNS)
        rest = set(requests[KEY]) - set(new[KEY])
        found = pd.concat([new, stored_samples(rest, _resolve(index[0]), self.store, self.teacher)], ignore_index=True)
        return self.grade(merge_samples(requests, found)), {k: int(v) for k, v in made.items()}


def written(graded: pd.DataFrame, made: dict, graded_url: str, buckets: int) -> dict:
    """Write a chunk's graded rows into their buckets; all the driver learns of it: what it generated, a tuple per
    row (:func:`row_summary`) and the judge's counters (``judge.judge_summary``; empty without the judge)."""
    _write_buckets(graded, graded_url, buckets)
    return {"made": made, "rows": row_summary(graded), "judge": judge_summary(graded)}


@ray.remote(num_cpus=0)
def _write(graded: pd.DataFrame, made: dict, graded_url: str, buckets: int) -> dict:
    return written(graded, made, graded_url, buckets)


class Generator:
    """A generation actor: a stage class of :mod:`ray_distill.generation.actor` (an engine of its own, or a
    forwarder to engine hosts) called on one chunk of request rows at a time, or several for an async one."""

    def __init__(self, cls, kwargs: dict):
        self.inner = cls(**kwargs)

    async def generate(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = self.inner(batch)
        return (await out) if inspect.isawaitable(out) else out


@ray.remote(num_cpus=0)
def _question_blocks(url: str, size: int):
    """The question pool as objects of ``size`` rows, in file order, each question id once (a generator task: the
    caller owns the objects)."""
    fs, path = fresh(url)
    df = pd.read_parquet(path, filesystem=fs)
    df = df[~df[C.QUESTION_ID].astype(str).duplicated()]
    for start in range(0, len(df), size):
        yield df.iloc[start:start + size].reset_index(drop=True)


@ray.remote(num_cpus=0, num_returns=3)
def _prepare(spec: dict, teacher: TeacherConfig, index: list, *blocks: pd.DataFrame):
    """The chunk's request rows, those the store lacks (stored failures are generated again; one per key), and
    how many those are. ``index``: ``[ref]`` of the store's index (nested: deserialised once per worker process,
    ``plane._resolve``, not once per chunk)."""
    requests = _request_rows(pd.concat(blocks, ignore_index=True), teacher, spec)
    stored = _resolve(index[0])
    todo = requests[[not (k in stored and not stored[k][1]) for k in requests[KEY]]].drop_duplicates(KEY)
    return requests, todo.reset_index(drop=True), len(todo)


_RESTARTS = {"max_restarts": HOST_RESTARTS, "max_task_retries": HOST_RESTARTS, "scheduling_strategy": "DEFAULT"}


def _generators(teacher: TeacherConfig, hosts: list | None) -> tuple[list, int, float]:
    """The teacher's generation actors, the chunks each takes at once, and the CPUs they (or the hosts) hold."""
    kwargs = {"teacher_name": teacher.name, "engine": teacher.engine.model_dump(),
              "sampling": teacher.sampling.model_dump()}
    if hosts:
        slots = max(1, teacher.engine.max_concurrent_batches)
        gens = [ray.remote(Generator).options(num_cpus=0, max_concurrency=slots, **_RESTARTS)
                .remote(HostedGenerateBatch, {**kwargs, "hosts": hosts}) for _ in hosts]
        return gens, slots, len(hosts) * teacher.resources.num_cpus
    cls = batch_class(teacher.engine)
    slots = max(1, teacher.engine.max_concurrent_batches) if inspect.iscoroutinefunction(cls.__call__) else 1
    return _engine_actors(teacher, cls, kwargs, slots), slots, teacher.resources.num_actors * teacher.resources.num_cpus


def _engine_actors(teacher: TeacherConfig, cls, kwargs: dict, slots: int) -> list:
    """``teacher.resources.num_actors`` :class:`Generator` actors of ``cls`` with an engine of their own (its
    resources and environment as :func:`ray_distill.generation.actor.engine_pool` gives them, the API key read
    here)."""
    api_key = resolve_api_key(teacher.engine) if teacher.engine.kind == "openai" else None
    pool = engine_pool(teacher)
    options = {"num_cpus": pool["num_cpus"], "num_gpus": pool["num_gpus"], "max_concurrency": slots, **_RESTARTS}
    if pool["resources"]:
        options["resources"] = pool["resources"]
    if pool["runtime_env"]:
        options["runtime_env"] = pool["runtime_env"]
    return [ray.remote(Generator).options(**options).remote(cls, {**kwargs, "api_key": api_key})
            for _ in range(teacher.resources.num_actors)]


@dataclass
class _Chunk:
    questions: dict  # question id -> requests of it in this chunk
    requests: object = None  # object refs
    todo: object = None
    made: object = None  # (with the judge) the ref of what its generation made
    missing: int = 0


def curate_adaptive_stream(store: GenerationStore, questions_url: str, teacher: TeacherConfig,
                           plan: A.SamplingPlan, work_url: str, grading: Grading, may_spend=None,
                           after_generate=None) -> AdaptiveResult:
    """Adaptive sampling of the questions at ``questions_url`` with no wave (see the module's text): every graded
    sample under ``<work_url>/graded``, the counters read back from there (checked against the driver's),
    ``rounds`` the most any question ran.
    ``may_spend(new_samples, mean_tokens)``: asked before a chunk generates; once it says no, no question starts
    another round and every question not yet stopped stops as ``job_budget``. ``after_generate(counters)``: what
    each chunk generated."""
    fs, path = fresh(questions_url)
    ids = dict.fromkeys(pd.read_parquet(path, columns=[C.QUESTION_ID], filesystem=fs)[C.QUESTION_ID].astype(str))
    blocks = list(_question_blocks.remote(questions_url, QUESTIONS_PER_BLOCK))  # before any engine holds a CPU
    graded_url = join(work_url, "graded")
    _clear(graded_url)
    store.clean_temp_parts(teacher.name)
    buckets = num_buckets(len(ids) * plan.max_samples)
    run = _Rounds(teacher, plan, blocks, {q: QuestionState(block=pos // QUESTIONS_PER_BLOCK, want=0)
                                          for pos, q in enumerate(ids)}, may_spend, after_generate, graded_url, buckets)
    with engine_hosts(teacher) as hosts:
        gens, slots, gen_cpus = _generators(teacher, hosts)
        judges, judge_cpus = [], 0.0
        if grading.judge is not None:  # the judge's actors: its engine, answers from the store first (JudgeBatch)
            judge = grading.judge.as_teacher()
            judges = _engine_actors(judge, JudgeBatch, {"judge": grading.judge.model_dump(), "store_root": store.root},
                                    slots=1)
            judge_cpus = judge.resources.num_actors * judge.resources.num_cpus
        free = cluster_cpus() - gen_cpus - judge_cpus  # what the engines leave
        n_graders = grading.num_graders or max(1, min(grader_pool_size(grading), math.floor(free)))
        grader_cpus = 1.0 if free >= 1 else max(0.0, free)  # a grader that never fits would hang the job
        if grader_cpus < 1:
            logger.warning("the teacher's and the judge's engines leave %.2g of the cluster's CPUs: one grader on "
                           "them", max(0.0, free))
        graders = [ray.remote(RoundGrader).options(num_cpus=grader_cpus, **_RESTARTS)
                   .remote(grading, store.root, teacher.name, graded_url, buckets) for _ in range(n_graders)]
        try:
            run.run(gens, slots, graders, judges, [_index.remote(store.root, teacher.name)])  # (never in the driver)
        finally:
            for actor in [*gens, *graders, *judges]:
                ray.kill(actor)
    final = {**run.final, **{q: A.JOB_BUDGET for q in run.state if q not in run.final}}  # (the budget stopped it)
    report = bucket_report(graded_url)
    stats = report["stats"]
    held = pd.Series({q: s.sampled for q, s in run.state.items()}, dtype="int64").sort_index()
    if (held.to_numpy() != stats[A.SAMPLED].reindex(held.index, fill_value=0).to_numpy()).any():
        raise RuntimeError("adaptive sampling lost rows: the graded buckets do not hold every sample it graded")
    counters = {**{k: int(v) for k, v in run.made.items()}, "rows": int(stats[A.SAMPLED].sum()),
                "correct": report["correct"], "verdicts": report["verdicts"]}
    return AdaptiveResult(graded_url=graded_url, final=final, stats=stats,
                          rounds=max((s.round for s in run.state.values()), default=0), counters=counters,
                          judge=combine_judge(run.judged))


class _Rounds:
    """The driver's loop: chunks of ready rounds go to ``_prepare``, then a generation actor (when the store
    lacks some of their samples), then a grader; a graded chunk's questions whose round is complete are decided
    and their next rounds queued. Object refs and counters only."""

    def __init__(self, teacher: TeacherConfig, plan: A.SamplingPlan, blocks: list, state: dict[str, QuestionState],
                 may_spend, after_generate, graded_url: str, buckets: int):
        self.teacher, self.teacher_ref, self.plan, self.blocks = teacher, ray.put(teacher), plan, blocks
        self.state, self.may_spend, self.after_generate = state, may_spend, after_generate
        self.graded_url, self.buckets = graded_url, buckets
        self.final: dict[str, str] = {}
        self.judged: list[dict] = []  # the judge's counters of each chunk
        self.made: Counter = Counter()
        self.ready: deque = deque((q, s.next_round(plan.first_round())) for q, s in state.items())
        self.waiting: dict = {}  # object ref -> (step, chunk, actor)
        self.to_grade: deque = deque()
        self.load: Counter = Counter()  # calls in flight per actor
        self.in_flight_new = self.ok_tokens = self.ok_count = 0
        self.stopping = False

    def run(self, gens: list, slots: int, graders: list, judges: list, index: list) -> None:
        last_log = time.monotonic()
        turn = itertools.count()
        chunks = len(gens) * slots + len(graders)  # a chunk per generation slot, one more per grader (none waits)
        while self.ready or self.waiting or self.to_grade:
            while self.ready and not self.stopping and len(self.waiting) + len(self.to_grade) < chunks:
                self._dispatch(index)
            if self.waiting:
                (ref,), _ = ray.wait(list(self.waiting), num_returns=1, fetch_local=False)
                step, chunk, actor = self.waiting.pop(ref)
                self.load[actor] -= 1
                if step == "prepared":
                    self._prepared(chunk, ray.get(ref), gens, turn)
                elif step == "generated":
                    self.to_grade.append((chunk, ref))
                elif step == "judging":  # graded: the judge's verdicts folded in, then written
                    judge = min(judges, key=lambda j: self.load[j])
                    self._call(_write.remote(judge.generate.remote(ref), chunk.made, self.graded_url, self.buckets),
                               "graded", chunk, judge)
                else:
                    self._graded(chunk, ray.get(ref))
            while self.to_grade and min(self.load[g] for g in graders) < 2:
                grader = min(graders, key=lambda g: self.load[g])
                chunk, generated = self.to_grade.popleft()
                if judges:
                    graded, chunk.made = grader.graded.remote(chunk.requests, generated, index)
                    self._call(graded, "judging", chunk, grader)
                else:
                    self._call(grader.finish.remote(chunk.requests, generated, index), "graded", chunk, grader)
            if time.monotonic() - last_log > PROGRESS_EVERY_S:
                last_log = time.monotonic()
                logger.info("adaptive sampling of %s: %d of %d questions done, %d samples graded", self.teacher.name,
                            len(self.final), len(self.state), sum(s.sampled for s in self.state.values()))

    def _call(self, ref, step: str, chunk: _Chunk, actor) -> None:
        self.waiting[ref] = (step, chunk, actor)
        self.load[actor] += 1

    def _dispatch(self, index) -> None:
        """The next chunk: ready rounds up to the teacher's batch size (a round is never split)."""
        chunk, spec, size = _Chunk({}), {"n": {}, "from": {}, "retry": {}}, 0
        batch_size = self.teacher.resources.batch_size
        while self.ready and (size == 0 or size + self.state[self.ready[0][0]].pending <= batch_size):
            q, round_spec = self.ready.popleft()
            for k in spec:
                spec[k][q] = round_spec[k]
            chunk.questions[q] = self.state[q].pending
            size += self.state[q].pending
        block_ids = sorted({self.state[q].block for q in chunk.questions})
        chunk.requests, chunk.todo, missing = _prepare.remote(ray.put(spec), self.teacher_ref, index,
                                                              *[self.blocks[b] for b in block_ids])
        self._call(missing, "prepared", chunk, None)

    def _prepared(self, chunk: _Chunk, missing: int, gens: list, turn) -> None:
        chunk.missing = missing
        if not missing:
            self.to_grade.append((chunk, None))  # all stored: graded at no cost, even once the budget has stopped
            return
        mean = self.ok_tokens / self.ok_count if self.ok_count else None
        if not self.stopping and self.may_spend is not None and not self.may_spend(missing + self.in_flight_new, mean):
            self.stopping = True
            self.ready.clear()  # (their questions stop as job_budget)
            logger.warning("teacher token budget reached: no question of %s starts another round", self.teacher.name)
        if self.stopping:
            for q, n in chunk.questions.items():
                self.state[q].pending -= n
            return
        gen = min(gens, key=lambda g: (self.load[g], next(turn) % len(gens)))
        self.in_flight_new += missing
        self._call(gen.generate.remote(chunk.todo), "generated", chunk, gen)

    def _graded(self, chunk: _Chunk, out: dict) -> None:
        self.in_flight_new -= chunk.missing
        self.made.update(out["made"])
        self.judged.append(out["judge"])
        if self.after_generate is not None and chunk.missing:
            self.after_generate(out["made"])
        finished = set()
        for q, i, failed, tokens, digest in out["rows"]:
            self.state[q].add(i, failed, tokens, digest)
            if not failed and tokens >= 0:
                self.ok_tokens, self.ok_count = self.ok_tokens + tokens, self.ok_count + 1
            if self.state[q].pending == 0:
                finished.add(q)
        for q in finished:
            _next(q, self.state[q], self.plan, self.stopping, self.final, self.ready)


def _next(q: str, s: QuestionState, plan: A.SamplingPlan, stopping: bool, final: dict, ready: deque) -> None:
    """A question whose round is graded: stopped with its reason, or its next round queued."""
    status = s.decide(plan)
    if status != A.CONTINUE:
        final[q] = status
    elif stopping:
        final[q] = A.JOB_BUDGET
    else:
        spec = s.next_round(plan.next_total(len(s.digests), s.sampled))
        if s.pending == 0:  # nothing to ask (cannot happen with a valid plan): decide again
            _next(q, s, plan, stopping, final, ready)
        else:
            ready.append((q, spec))
