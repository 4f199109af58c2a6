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
2. a generation actor of the teacher (:class:`Generator`: a forwarder to the engine hosts of a vLLM teacher,
   :mod:`ray_distill.generation.hosts`, whose engines load once whatever the rounds; else an engine of its own:
   scripted, ``openai``, ``hf``) generates the missing ones and streams them back question by question, each as
   soon as its own requests have finished (an engine that answers a batch at once gives the chunk as one group).
   A stream cut short by the actor's death (Ray restarts the actor) is sent again for the questions it had not
   returned;
3. :class:`RoundGrader` actors (one CPU each, as many as the CPUs the engines leave) take the finished question
   groups in batches, persist the new samples in the generation store, grade them, write them into the question
   buckets under ``<work_url>/graded`` (the layout :func:`ray_distill.curation.plane.grade` writes) and return one
   small tuple per row; with the LLM judge (``verify.judge``) the graded rows go to the judge's actors first
   (:class:`ray_distill.curation.judge_stage.JudgeBatch`: verdicts from the store where it has them) and a task
   writes them.

The job's token budget is asked before each chunk generates (``may_spend(new samples, mean tokens)``, the
samples other chunks are generating counted as spent). :func:`ray_distill.curation.adaptive.replay` runs the same
rounds over stored samples (the data-budget search): what each question would have drawn here.
"""

from __future__ import annotations

import asyncio
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
from ray_distill.curation.plane import (KEY, Grading, _clear, _index, _persist,
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

    def finish(self, items: list, index: list) -> dict:
        """Store, grade and write work items (:meth:`graded`); their summary (:func:`written`)."""
        graded, made = self.graded(items, index)
        return written(graded, made, self.graded_url, self.buckets)

    @ray.method(num_returns=2)
    def graded(self, items: list, index: list) -> tuple[pd.DataFrame, dict]:
        """Store and grade work items (for the judge): their graded rows and what was generated. An item is
        ``(requests, todo, generated)`` refs of a chunk: with ``generated`` (one question group of its generation),
        the requests of those samples; without, the chunk's requests the store held (those not in ``todo``)."""
        made: Counter = Counter()
        frames = []
        for requests_ref, todo_ref, generated_ref in items:
            requests = ray.get(requests_ref)
            if generated_ref is not None:
                generated = ray.get(generated_ref)
                made.update(_persist(generated, self.root, self.teacher).iloc[0].to_dict())
                frames.append(merge_samples(requests[requests[KEY].isin(set(generated[KEY]))], generated))
            else:
                todo = set(ray.get(todo_ref)[KEY]) if todo_ref is not None else set()
                rows = requests[~requests[KEY].isin(todo)]
                found = stored_samples(set(rows[KEY]), _resolve(index[0]), self.store, self.teacher)
                frames.append(merge_samples(rows, found))
        made_counts = {k: int(made.get(k, 0)) for k in ("generated", "failed", "completion_tokens", "prompt_tokens")}
        return self.grade(pd.concat(frames, ignore_index=True)), made_counts


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

    async def stream(self, batch: pd.DataFrame):
        """The generation rows of ``batch`` by question, each group as soon as its own requests have finished: its
        question ids, then its rows (two objects). An engine that answers a batch at once (scripted, or vLLM with
        ``max_concurrent_batches: 0``) gives one group."""
        if not inspect.iscoroutinefunction(type(self.inner).__call__):
            out = await self.generate(batch)
            yield sorted(set(out[C.QUESTION_ID].astype(str)))
            yield out
            return
        calls = [asyncio.ensure_future(self.inner(g)) for _, g in batch.groupby(batch[C.QUESTION_ID].astype(str))]
        try:
            for call in asyncio.as_completed(calls):
                out = await call
                yield sorted(set(out[C.QUESTION_ID].astype(str)))
                yield out
        finally:
            for call in calls:
                call.cancel()


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
    how many those are and how many requests the store answers. ``index``: ``[ref]`` of the store's index (nested:
    deserialised once per worker process, ``plane._resolve``, not once per chunk)."""
    requests = _request_rows(pd.concat(blocks, ignore_index=True), teacher, spec)
    stored = _resolve(index[0])
    missing = [not (k in stored and not stored[k][1]) for k in requests[KEY]]
    todo = requests[missing].drop_duplicates(KEY)
    return requests, todo.reset_index(drop=True), (len(todo), len(requests) - sum(missing))


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
    received: set = field(default_factory=set)  # questions whose generated rows came back
    attempts: int = 0


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
    """The driver's loop: chunks of ready rounds go to ``_prepare``, then (what the store lacks) to a generation
    actor that streams each question's rows back as its requests finish, then, in batches, to a grader (and the
    judge); a question whose round is graded is decided and its next round queued. Object refs and counters only."""

    def __init__(self, teacher: TeacherConfig, plan: A.SamplingPlan, blocks: list, state: dict[str, QuestionState],
                 may_spend, after_generate, graded_url: str, buckets: int):
        self.teacher, self.teacher_ref, self.plan, self.blocks = teacher, ray.put(teacher), plan, blocks
        self.state, self.may_spend, self.after_generate = state, may_spend, after_generate
        self.graded_url, self.buckets = graded_url, buckets
        self.final: dict[str, str] = {}
        self.judged: list[dict] = []  # the judge's counters of each grader call
        self.made: Counter = Counter()
        self.ready: deque = deque((q, s.next_round(plan.first_round())) for q, s in state.items())
        self.waiting: dict = {}  # object ref or generator -> (step, what it is for, actor)
        self.to_grade: deque = deque()  # work items of RoundGrader.graded
        self.load: Counter = Counter()  # calls in flight per actor
        self.in_flight_new = self.ok_tokens = self.ok_count = self.generating = 0
        self.stopping = False

    def run(self, gens: list, slots: int, graders: list, judges: list, index: list) -> None:
        last_log = time.monotonic()
        turn = itertools.count()
        batch_items = max(1, self.teacher.resources.batch_size // max(1, self.plan.step))  # question groups per call
        backlog = 2 * batch_items * len(graders)  # graded rows waiting in the object store stay bounded
        while self.ready or self.waiting or self.to_grade:
            while (self.ready and not self.stopping and self.generating < len(gens) * slots
                   and len(self.to_grade) < backlog):
                self._dispatch(index)
            if self.waiting:
                (ref,), _ = ray.wait(list(self.waiting), num_returns=1, fetch_local=False)
                step, what, actor = self.waiting.pop(ref)
                self.load[actor] -= 1
                if step == "prepared":
                    self._prepared(what, ray.get(ref), gens, turn)
                elif step == "streaming":
                    self._streamed(what, ref, actor, gens, turn)
                elif step == "judging":  # graded: the judge's verdicts folded in, then written
                    judge = min(judges, key=lambda j: self.load[j])
                    self._call(_write.remote(judge.generate.remote(ref), what, self.graded_url, self.buckets),
                               "graded", None, judge)
                else:
                    self._graded(ray.get(ref))
            while self.to_grade and min(self.load[g] for g in graders) < 2:
                grader = min(graders, key=lambda g: self.load[g])
                items = [self.to_grade.popleft() for _ in range(min(batch_items, len(self.to_grade)))]
                if judges:
                    graded, made = grader.graded.remote(items, index)
                    self._call(graded, "judging", made, grader)
                else:
                    self._call(grader.finish.remote(items, index), "graded", None, grader)
            if time.monotonic() - last_log > PROGRESS_EVERY_S:
                last_log = time.monotonic()
                logger.info("adaptive sampling of %s: %d of %d questions done, %d samples graded", self.teacher.name,
                            len(self.final), len(self.state), sum(s.sampled for s in self.state.values()))

    def _call(self, ref, step: str, what, actor) -> None:
        self.waiting[ref] = (step, what, actor)
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
        chunk.requests, chunk.todo, counts = _prepare.remote(spec, self.teacher_ref, index,
                                                             *[self.blocks[b] for b in block_ids])
        self.generating += 1
        self._call(counts, "prepared", chunk, None)

    def _prepared(self, chunk: _Chunk, counts: tuple[int, int], gens: list, turn) -> None:
        missing, stored = counts
        if missing:
            mean = self.ok_tokens / self.ok_count if self.ok_count else None
            if not self.stopping and self.may_spend is not None and not self.may_spend(missing + self.in_flight_new,
                                                                                       mean):
                self.stopping = True
                self.ready.clear()  # (their questions stop as job_budget)
                logger.warning("teacher token budget reached: no question of %s starts another round",
                               self.teacher.name)
            if self.stopping:  # the chunk is dropped: its questions stop as job_budget
                for q, n in chunk.questions.items():
                    self.state[q].pending -= n
                self.generating -= 1
                return
            self.in_flight_new += missing
            self._stream(chunk, gens, turn)
        else:
            self.generating -= 1
        if stored:  # graded at no cost
            self.to_grade.append((chunk.requests, chunk.todo if missing else None, None))

    def _stream(self, chunk: _Chunk, gens: list, turn) -> None:
        gen = min(gens, key=lambda g: (self.load[g], next(turn) % len(gens)))
        # (no retry by Ray: a stream sent again could yield its groups in another order; _streamed retries)
        self._call(gen.stream.options(num_returns="streaming", max_task_retries=0).remote(chunk.todo), "streaming",
                   chunk, gen)

    def _streamed(self, chunk: _Chunk, stream, gen, gens: list, turn) -> None:
        """The next question group of a chunk's generation is ready (or the stream has ended)."""
        try:
            qids = ray.get(next(stream))
        except StopIteration:
            self.generating -= 1
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
            chunk.attempts += 1
            if chunk.attempts > HOST_RESTARTS:
                raise
            left = sorted(set(chunk.questions) - chunk.received)
            logger.warning("generation actor of %s lost %d questions' requests (%s); sending them again",
                           self.teacher.name, len(left), type(err).__name__)
            chunk.todo = _only.remote(chunk.todo, left)
            self._stream(chunk, gens, turn)
            return
        chunk.received.update(qids)
        self.to_grade.append((chunk.requests, None, next(stream)))  # its rows: yielded right after the ids
        self._call(stream, "streaming", chunk, gen)

    def _graded(self, out: dict) -> None:
        made = out["made"]
        self.in_flight_new -= made["generated"] + made["failed"]
        self.made.update(made)
        if out["judge"]:
            self.judged.append(out["judge"])
        if self.after_generate is not None and made["generated"] + made["failed"]:
            self.after_generate(made)
        finished = set()
        for q, i, failed, tokens, digest in out["rows"]:
            self.state[q].add(i, failed, tokens, digest)
            if not failed and tokens >= 0:
                self.ok_tokens, self.ok_count = self.ok_tokens + tokens, self.ok_count + 1
            if self.state[q].pending == 0:
                finished.add(q)
        for q in finished:
            _next(q, self.state[q], self.plan, self.stopping, self.final, self.ready)


@ray.remote(num_cpus=0)
def _only(todo: pd.DataFrame, question_ids: list[str]) -> pd.DataFrame:
    """The requests of ``question_ids`` among ``todo``."""
    return todo[todo[C.QUESTION_ID].astype(str).isin(set(question_ids))].reset_index(drop=True)


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
