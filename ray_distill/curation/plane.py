"""The streaming curation plane: questions on storage → graded samples and selected rows on storage,
as Ray Data plans whose rows never pass through the driver.

    out = curate(store, questions_url, teacher, n=8, work_url="s3://b/run/data/generate",
                 grading=Grading(max_tokens=512, require_think=True, tokenizer=student),
                 selection=Selection(p=4, seed=0, tokenizer=student))
    out.counters        # {'requested': 9600, 'cached': 0, 'generated': 9600, 'failed': 0, 'correct': 5123, ...}
    out.selected_url    # Parquet of the kept rows; out.graded_url: every graded sample, by bucket

Three steps, each distributed; the driver only sees object refs, per-batch counter rows and per-bucket
statistics:

1. **Generate what is missing.** A Ray task indexes the store (content key → part file). The plan
   ``read questions → request rows (content keys) → not in the index → engine actor pool → persist``
   writes each finished engine batch as a store part from the worker (atomic, as
   :meth:`GenerationStore.write_part`), failures under ``rejects/``, and emits one counter row per batch.
   Nothing is generated, and no engine starts, when every requested sample is stored.
2. **Grade.** ``read questions → request rows → stored samples attached (each worker reads only the
   parts its keys are in) → grader actor pool (sized to the cluster) → Parquet partitioned by a hash of
   the question id``. Every sample of a question lands in one bucket, without a shuffle.
3. **Select.** One Ray task per bucket keeps the farthest-P correct samples of each of its questions
   (``selection.select_questions``), writes them and the bucket's rejects (``rejects/generations/``),
   and returns its statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import ray
import ray.data

from ray_distill import columns as C
from ray_distill.config import TeacherConfig
from ray_distill.curation.adapters import GradeBatch, load_tokenize
from ray_distill.curation import adaptive as A
from ray_distill.curation.adaptive import ok_mask
from ray_distill.curation.judge import judge_summary
from ray_distill.curation.judge_stage import judge_dataset
from ray_distill.curation.selection import POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE, select_questions
from ray_distill.data.corpus import write_rejects
from ray_distill.data.fs import TMP_PREFIX, atomic_write, fresh, join
from ray_distill.generation.hosts import generation
from ray_distill.generation.store import KEY, STORED_COLUMNS, GenerationStore, request_frame
from ray_distill.models import TokenIds

logger = logging.getLogger(__name__)

BUCKET = "bucket"
ROWS_PER_BUCKET = 20_000  # graded samples a selection task holds at once (about; buckets are by question)
MAX_BUCKETS = 256
_SAMPLE_COLUMNS = [KEY, C.TEACHER, C.SEED, C.COMPLETION, C.NUM_TOKENS, C.FINISH_REASON, C.ERROR, C.PROMPT_TOKENS]


@dataclass(frozen=True)
class Grading:
    """How samples are graded (``format`` config): see :class:`GradeBatch`. ``num_graders``: the
    grader pool's largest size (None: one per CPU of the cluster)."""

    max_tokens: int | None
    require_think: bool
    tokenizer: str | TokenIds | None  # a path or hub id, or what adapters.token_counter made of one
    code: dict | None = None
    num_graders: int | None = None
    judge: Any = None  # a JudgeConfig (``verify.judge``) when the LLM judge runs after the grader


@dataclass(frozen=True)
class Selection:
    p: int
    seed: int
    tokenizer: str | TokenIds | None
    keep_questions: frozenset[str] | None = None  # only these questions are selected from (paper order)


@dataclass
class PlaneResult:
    graded_url: str
    selected_url: str | None
    counters: dict = field(default_factory=dict)  # generation + grading counts (see curate)
    judge: dict = field(default_factory=dict)  # the judge's counters (judge.judge_summary), when it ran
    selection: dict = field(default_factory=dict)  # rows, questions, mean distances (selection.distance_report)

    def read_graded(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every graded sample (for bounded phases such as the probe, whose rows the driver needs)."""
        return read_buckets(self.graded_url, columns)

    def read_selected(self) -> pd.DataFrame:
        return read_parquet_dir(self.selected_url) if self.selected_url else pd.DataFrame()


def curate(store: GenerationStore, questions_url: str, teacher: TeacherConfig, n: int, work_url: str,
           grading: Grading, selection: Selection | None = None, rejects_url: str | None = None) -> PlaneResult:
    """Samples ``0..n-1`` of every question in the Parquet file(s) at ``questions_url``: generate the
    missing ones into ``store``, grade all, write them under ``<work_url>/graded`` and, with
    ``selection``, the kept rows under ``<work_url>/selected`` (and the rejects as JSON lines under
    ``rejects_url``). The three steps are also callable one by one (the job runs each as its own stage)."""
    generated = generate_missing(store, questions_url, teacher, n, work_url)
    result = grade(store, questions_url, teacher, n, work_url, grading, generated)
    if selection is not None:
        result.selected_url = join(work_url, "selected")
        result.selection = select_buckets(result.graded_url, result.selected_url, selection, rejects_url)
    return result


def generate_missing(store: GenerationStore, questions_url, teacher: TeacherConfig, n,
                     work_url: str) -> dict[str, int]:
    """Generate the samples ``0..n-1`` of the questions at ``questions_url`` (or a dataset of them; ``n``: see
    :func:`_requests`) that ``store`` lacks (stored failures are retried), persisted by the workers as they
    finish. The missing requests are written to ``<work_url>/todo`` first, so that no engine starts when
    nothing is missing. Returns the counters of what this call generated (``generated``, ``failed``, ``prompt_tokens``, ``completion_tokens``)."""
    counters = {"generated": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    todo_url = join(work_url, "todo")
    _clear(todo_url)
    store.clean_temp_parts(teacher.name)
    index = _index.remote(store.root, teacher.name)
    _requests(questions_url, teacher, n).map_batches(
        _missing, fn_kwargs={"index": index}, batch_format="pandas").write_parquet(todo_url)
    missing = parquet_rows(todo_url)
    if not missing:
        return counters
    logger.info("generating %d missing samples for teacher %s", missing, teacher.name)
    blocks = max(1, math.ceil(missing / teacher.resources.batch_size))  # work for every engine actor
    todo = read_parquet(todo_url).repartition(blocks).materialize()  # read before the hosts start
    with generation(todo, teacher) as gen:
        gen = gen.map_batches(
            _persist, fn_kwargs={"root": store.root, "teacher": teacher.name}, batch_format="pandas", batch_size=None)
        for row in gen.take_all():  # one small counter row per engine batch
            for k in counters:
                counters[k] += int(row[k])
    return counters


def grade(store: GenerationStore, questions_url: str, teacher: TeacherConfig, n: int, work_url: str,
          grading: Grading, generated: dict[str, int] | None = None) -> PlaneResult:
    """Grade the stored samples ``0..n-1`` of the questions at ``questions_url`` into
    ``<work_url>/graded`` (Parquet, one directory per question bucket), in one plan whose last step
    writes the files and emits a counter row per batch. Counters: ``requested = cached + generated +
    failed`` (``generated``: :func:`generate_missing`'s counters, if it ran), the tokens, the
    verified-correct rows and every verdict reason (``verdicts``)."""
    counters = {"requested": 0, "cached": 0, "generated": 0, "failed": 0, "prompt_tokens": 0,
                "completion_tokens": 0, "cached_completion_tokens": 0, "correct": 0, **(generated or {})}
    num_rows = parquet_rows(questions_url) * n
    graded_url = join(work_url, "graded")
    _clear(graded_url)
    written = _grade_into(_requests(questions_url, teacher, n), store, teacher, graded_url,
                          num_buckets(num_rows), grading, work_url)
    verdicts: Counter = Counter()
    tokens = 0
    judged = []
    for row in written:
        counters["requested"] += int(row["rows"])
        counters["correct"] += int(row["correct"])
        tokens += int(row["tokens"])
        verdicts.update(json.loads(row["verdicts"]))
        judged.append(json.loads(row["judge"]))
    if counters["requested"] != num_rows:
        raise RuntimeError(f"curation lost rows: {num_rows} requested, {counters['requested']} graded")
    # a request is cached when this call did not generate (or fail) it: duplicated keys are generated once
    counters["cached"] = counters["requested"] - counters["generated"] - counters["failed"]
    counters["cached_completion_tokens"] = max(0, tokens - counters["completion_tokens"])
    counters["verdicts"] = dict(verdicts)
    return PlaneResult(graded_url=graded_url, selected_url=None, counters=counters, judge=combine_judge(judged))


def num_buckets(num_rows: int) -> int:
    """Question buckets for about ``num_rows`` graded samples (:data:`ROWS_PER_BUCKET` each, at most
    :data:`MAX_BUCKETS`)."""
    return max(1, min(MAX_BUCKETS, math.ceil(num_rows / ROWS_PER_BUCKET)))


def _grade_into(requests: ray.data.Dataset, store: GenerationStore, teacher: TeacherConfig, graded_url: str,
                buckets: int, grading: Grading, work_url: str) -> list[dict]:
    """Grade the stored samples of ``requests`` (rows of :func:`_requests`) and add them to the buckets under
    ``graded_url`` (new part files: what is there stays); one counter row per written batch."""
    index = _index.remote(store.root, teacher.name)
    # The plan's light steps (request rows, attach the stored samples, write the buckets) take no CPU: the
    # graders take every CPU the cluster can give them, and an idle engine host kept between stages holds one
    # more; a step that waited for a CPU would wait forever on a small cluster.
    attached = requests.map_batches(
        _attach, fn_kwargs={"index": index, "root": store.root, "teacher": teacher.name}, batch_format="pandas",
        num_cpus=0)
    graded = attached.map_batches(
        GradeBatch, fn_constructor_kwargs={"max_tokens": grading.max_tokens, "require_think": grading.require_think,
                                           "tokenizer_path": grading.tokenizer, "code": grading.code},
        batch_format="pandas", batch_size=256, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=grader_pool_size(grading)))
    out_url = graded_url
    if grading.judge is not None:
        out_url = join(work_url, "graded_unjudged")
        _clear(out_url)
    written = graded.map_batches(_write_buckets, fn_kwargs={"url": out_url, "buckets": buckets},
                                 batch_format="pandas", batch_size=None, num_cpus=0)
    if grading.judge is not None:
        # The judge reads the graded rows back in a plan of its own: its actors and the grader's in one plan
        # can hold every CPU of a small cluster while the plan's read/write tasks wait for one (a hang).
        written.materialize()
        written = judge_dataset(read_parquet(out_url), grading.judge, store.root).map_batches(
            _write_buckets, fn_kwargs={"url": graded_url, "buckets": buckets}, batch_format="pandas", batch_size=None,
            num_cpus=0)
    return written.take_all()


def bucket_report(graded_url: str) -> dict:
    """Per question, :func:`ray_distill.curation.adaptive.question_stats` of the latest row of each sample under
    ``graded_url`` and the indices of its failed requests; over all of them the verified-correct rows, the
    verdict counts and the mean completion tokens of the successful samples. One Ray task per bucket."""
    parts = ray.get([_bucket_report.remote(b) for b in bucket_dirs(graded_url)])
    out = _empty_report()
    if not parts:
        return out
    out["stats"] = pd.concat([p["stats"] for p in parts])
    verdicts: Counter = Counter()
    tokens = count = 0
    for p in parts:
        out["failed"].update(p["failed"])
        out["correct"] += p["correct"]
        verdicts.update(p["verdicts"])
        tokens, count = tokens + p["ok_tokens"], count + p["ok_count"]
    out["verdicts"] = dict(verdicts)
    out["mean_tokens"] = tokens / count if count else None
    return out


def _empty_report() -> dict:
    return {"stats": pd.DataFrame(columns=[A.SAMPLED, A.TOKENS, A.DISTINCT], dtype="int64"), "failed": {},
            "correct": 0, "verdicts": {}, "mean_tokens": None}


@ray.remote(num_cpus=1)
def _bucket_report(bucket_url: str) -> dict:
    graded = A.latest_samples(read_parquet_dir(bucket_url, _REPORT_COLUMNS))
    is_failed = graded[C.ERROR].fillna("").astype(str) != ""
    failed = graded[is_failed]
    tokens = pd.to_numeric(graded.loc[~is_failed, C.NUM_TOKENS], errors="coerce")
    tokens = tokens[tokens >= 0]
    return {"stats": A.question_stats(graded),
            "failed": {str(q): sorted(int(i) for i in g[C.SAMPLE_INDEX])
                       for q, g in failed.groupby(failed[C.QUESTION_ID].astype(str))},
            "correct": int(ok_mask(graded).sum()), "verdicts": verdict_counts(graded),
            "ok_tokens": int(tokens.sum()), "ok_count": len(tokens)}


_REPORT_COLUMNS = [C.QUESTION_ID, C.TEACHER, C.SAMPLE_INDEX, C.COMPLETION, C.NUM_TOKENS, C.ERROR, C.FORMAT_OK,
                   C.CORRECT, C.REASON]


def combine_judge(parts: list[dict]) -> dict:
    """Per-batch :func:`judge_summary` counters added up; the agreement rate weighted by its rows."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    out = {k: sum(p[k] for p in parts) for k in parts[0] if k != "judge/agreement"}
    rows = out.get("judge/agreement_rows", 0)
    out["judge/agreement"] = (sum(p["judge/agreement"] * p["judge/agreement_rows"] for p in parts
                                  if p["judge/agreement_rows"]) / rows) if rows else float("nan")
    return out


def select_buckets(graded_url: str, selected_url: str, selection: Selection, rejects_url: str | None) -> dict:
    """Farthest-P selection, one Ray task per bucket of ``graded_url``; returns the totals."""
    _clear(selected_url)
    if rejects_url:
        _clear(rejects_url)
    keep = ray.put(selection.keep_questions) if selection.keep_questions is not None else None
    refs = [_select_bucket.remote(b, join(selected_url, f"part-{i:05d}.parquet"),
                                  join(rejects_url, f"part-{i:05d}.jsonl") if rejects_url else None,
                                  selection.p, selection.seed, selection.tokenizer, keep)
            for i, b in enumerate(bucket_dirs(graded_url))]
    parts = ray.get(refs)
    rows = sum(p["rows"] for p in parts)
    if not rows:
        raise RuntimeError("no verified-correct teacher samples to select from; check the teacher and the grader")
    with_choice = sum(p["questions_with_choice"] for p in parts)
    return {"rows": rows, "correct": sum(p["correct"] for p in parts), "questions": sum(p["questions"] for p in parts),
            "mean_distance_selected": sum(p["sum_selected"] for p in parts) / with_choice if with_choice else float("nan"),
            "mean_distance_all_correct": sum(p["sum_pool"] for p in parts) / with_choice if with_choice else float("nan"),
            "questions_with_choice": with_choice}


def write_questions(questions: list[dict], url: str) -> str:
    """The phase's question rows as one Parquet file on storage (what the plan reads)."""
    with atomic_write(url, "wb") as f:
        pd.DataFrame(questions).astype({C.QUESTION_ID: str}).to_parquet(f, index=False)
    return url


def parquet_rows(url: str) -> int:
    """Rows of the Parquet file or directory at ``url``, from the footers (0 when there is none)."""
    fs, path = fresh(url)
    if not fs.exists(path):
        return 0
    files = [f for f in fs.find(path) if f.endswith(".parquet") and not _is_temp(f)] if fs.isdir(path) else [path]
    return sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)


def bucket_of(question_ids: pd.Series, buckets: int) -> list[int]:
    """Stable bucket of each question id (the same in every process and every run)."""
    return [int.from_bytes(hashlib.sha256(str(q).encode()).digest()[:4], "big") % buckets for q in question_ids]


def bucket_dirs(graded_url: str) -> list[str]:
    fs, path = fresh(graded_url)
    if not fs.isdir(path):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [join(graded_url, n) for n in names if n.startswith(f"{BUCKET}=")]


def read_parquet(url: str) -> ray.data.Dataset:
    """``ray.data.read_parquet(url)`` through Ray Data's first parquet datasource (``DataContext.use_datasource_v2``
    off for this read). The one Ray reads parquet with by default since 2.5x (V2) starts a pool of footer-reading
    actors for every read, a worker process each (up to 32, ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``), to index
    row groups of large data sets; the plane reads its own small files (questions, a stage's samples) several
    times a job: 4 reads of a 3-file directory took 16.5 s and 33 CPU-s on a 3-CPU local cluster, 0.8 s and
    1.4 CPU-s this way (``python benchmarks/parquet_reads.py``). Its read tasks take no CPU, as the plan's other light
    steps (see :func:`_grade_into`): a read that waited for a CPU held by the graders and an idle engine host would
    wait forever on a small cluster."""
    ctx = ray.data.DataContext.get_current()
    before, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        # the dataset keeps a copy of the context it was made with
        return ray.data.read_parquet(url, ray_remote_args={"num_cpus": 0})
    finally:
        ctx.use_datasource_v2 = before


def read_parquet_dir(url: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Every complete part file under ``url``, listed fresh (temp names of unfinished writes are skipped)."""
    fs, path = fresh(url)
    files = sorted(f for f in fs.find(path) if f.endswith(".parquet") and not _is_temp(f)) if fs.isdir(path) else []
    frames = [pq.read_table(f, filesystem=fs, columns=columns).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def read_buckets(graded_url: str, columns: list[str] | None = None) -> pd.DataFrame:
    frames = [read_parquet_dir(b, columns) for b in bucket_dirs(graded_url)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def grader_pool_size(grading: Grading) -> int:
    """The grader pool's largest size: ``num_graders``, else every CPU of the cluster but one (the plan's
    read and write tasks need one) and those of the judge's actors."""
    if grading.num_graders:
        return grading.num_graders
    judge = grading.judge.resources.num_actors * grading.judge.resources.num_cpus if grading.judge is not None else 0
    return max(1, int(cluster_cpus() - 1 - judge))


# ----------------------------------------------------------------------------- plan steps (run in workers)


def _requests(questions, teacher: TeacherConfig, n) -> ray.data.Dataset:
    """Request rows of the questions (at a URL, or a materialized dataset: its plans then need no listing
    task, which asks for a CPU): samples ``0..n-1`` of each, or, with ``n`` a chunk of the rounds of adaptive
    sampling (:mod:`.adaptive_stream`) -- ``{"n": {question id: count}}`` and optionally ``"from"`` / ``"retry"``
    -- the samples of the round's questions below their counts, and of those only the ones from ``from[q]`` on
    plus the indices in ``retry[q]``."""
    ds = questions if isinstance(questions, ray.data.Dataset) else read_parquet(questions)
    return ds.map_batches(_request_rows, fn_kwargs={"teacher": teacher, "n": n}, batch_format="pandas", num_cpus=0)


def _request_rows(batch: pd.DataFrame, teacher: TeacherConfig, n) -> pd.DataFrame:
    if not isinstance(n, dict):
        return request_frame(batch.to_dict("records"), teacher, n)
    counts = n["n"]
    active = batch[batch[C.QUESTION_ID].astype(str).isin(counts)]
    if active.empty:  # none of the round's questions: no row, with the request columns
        return request_frame(batch.head(1).to_dict("records"), teacher, 1).iloc[:0]
    req = request_frame(active.to_dict("records"), teacher, counts)
    if "from" in n:
        start, retry = n["from"], n.get("retry", {})
        qid = req[C.QUESTION_ID].astype(str)
        keep = [i >= start.get(q, 0) or i in retry.get(q, ()) for q, i in zip(qid, req[C.SAMPLE_INDEX])]
        req = req[keep].reset_index(drop=True)
    return req


@ray.remote(num_cpus=0)
def _index(root: str, teacher_name: str) -> dict[str, tuple[str, bool]]:
    """content key → (part file, is a failed request), listed fresh (:meth:`GenerationStore.index`). No CPU: the
    plan steps that read it may run while the graders and an idle engine host hold every CPU (see _grade_into)."""
    return GenerationStore(root).index(teacher_name)


_RESOLVED: dict[str, dict] = {}
_KEEP_RESOLVED = 4  # a plan's step may hold the store index and a round's counts at once


def _resolve(ref) -> dict:
    """The value behind an object ref (the store's index), deserialised once per worker
    process (Ray Data hands nested refs over unresolved; workers are reused across tasks); the last few kept."""
    if not isinstance(ref, ray.ObjectRef):
        return ref
    key = ref.hex()
    if key not in _RESOLVED:
        while len(_RESOLVED) >= _KEEP_RESOLVED:
            _RESOLVED.pop(next(iter(_RESOLVED)))
        _RESOLVED[key] = ray.get(ref)
    return _RESOLVED[key]


def _missing(batch: pd.DataFrame, index) -> pd.DataFrame:
    """Requests with no stored success (stored failures are retried); one request per key."""
    index = _resolve(index)
    return batch[[not (k in index and not index[k][1]) for k in batch[KEY]]].drop_duplicates(KEY)


def _persist(batch: pd.DataFrame, root: str, teacher: str) -> pd.DataFrame:
    """Store one finished engine batch (successes, and failures under rejects/); one counter row."""
    store = GenerationStore(root)
    failed = batch[C.ERROR] != ""
    if (~failed).any():
        store.write_part(teacher, batch[~failed])
    if failed.any():
        store.write_part(teacher, batch[failed], rejects=True)
    tokens = pd.to_numeric(batch[C.NUM_TOKENS], errors="coerce")
    prompt_tokens = pd.to_numeric(batch[C.PROMPT_TOKENS], errors="coerce")
    return pd.DataFrame([{"generated": int((~failed).sum()), "failed": int(failed.sum()),
                          "completion_tokens": int(tokens[tokens >= 0].sum()),
                          "prompt_tokens": int(prompt_tokens[prompt_tokens >= 0].sum())}])


def _attach(batch: pd.DataFrame, index, root: str, teacher: str) -> pd.DataFrame:
    """Request rows joined with their stored samples, read from the part files their keys are in."""
    return merge_samples(batch, stored_samples(set(batch[KEY]), _resolve(index), GenerationStore(root), teacher))


def stored_samples(keys: set[str], index: dict, store: GenerationStore, teacher: str) -> pd.DataFrame:
    """The stored samples of ``keys`` (one row per key), read from the part files ``index`` puts them in."""
    by_part: dict[str, list[str]] = {}
    for k in keys:
        if k not in index:
            raise RuntimeError(f"sample {k} of teacher {teacher} is neither stored nor failed")
        by_part.setdefault(index[k][0], []).append(k)
    found = [pq.read_table(p, filesystem=store.fs, columns=_SAMPLE_COLUMNS, filters=[(KEY, "in", sorted(ks))]).to_pandas()
             for p, ks in sorted(by_part.items())]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=_SAMPLE_COLUMNS)


def merge_samples(batch: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Request rows with their samples (``_SAMPLE_COLUMNS`` by key) as stored rows. Question columns come from the
    request (a stored sample may have been made for the same prompt under another question id)."""
    out = batch.drop(columns=[c for c in _SAMPLE_COLUMNS if c != KEY and c in batch.columns]).merge(
        samples[_SAMPLE_COLUMNS].drop_duplicates(KEY), on=KEY, how="left", validate="many_to_one")
    return out[STORED_COLUMNS].astype({C.SEED: "int64", C.NUM_TOKENS: "int64", C.PROMPT_TOKENS: "int64"})


def _write_buckets(batch: pd.DataFrame, url: str, buckets: int) -> pd.DataFrame:
    """Write a batch of graded rows as one part file per question bucket (temp name, then moved);
    returns its counter row."""
    fs, path = fsspec.core.url_to_fs(url)
    for b, part in batch.assign(**{BUCKET: bucket_of(batch[C.QUESTION_ID], buckets)}).groupby(BUCKET):
        with atomic_write(f"{path}/{BUCKET}={b}/part-{uuid.uuid4().hex}.parquet", "wb", fs=fs) as f:
            part.drop(columns=[BUCKET]).to_parquet(f, index=False)
    return _count(batch)


def verdict_counts(graded: pd.DataFrame) -> dict[str, int]:
    """Graded rows per grader reason (``kept`` for the rows it passed)."""
    reasons = graded[C.REASON].fillna("").replace("", "kept").value_counts()
    return {str(k): int(v) for k, v in reasons.items()}


def _count(batch: pd.DataFrame) -> pd.DataFrame:
    """One counter row per block of graded samples (with the judge's counters when it ran)."""
    tokens = pd.to_numeric(batch[C.NUM_TOKENS], errors="coerce")
    return pd.DataFrame([{"rows": len(batch), "correct": int(ok_mask(batch).sum()), "tokens": int(tokens[tokens >= 0].sum()),
                          "verdicts": json.dumps(verdict_counts(batch)),
                          "judge": json.dumps(judge_summary(batch))}])


@ray.remote(num_cpus=1)
def _select_bucket(bucket_url: str, out_url: str, rejects_url: str | None, p: int, seed: int,
                   tokenizer: str | TokenIds | None, keep) -> dict:
    graded = read_parquet_dir(bucket_url)
    if keep is not None:
        graded = graded[graded[C.QUESTION_ID].astype(str).isin(keep)]
    graded = A.latest_samples(graded)  # adaptive rounds may hold a failed request and its retry
    good = graded[ok_mask(graded)]
    selected = select_questions(good, p, seed, load_tokenize(tokenizer))
    with atomic_write(out_url, "wb") as f:
        selected.to_parquet(f, index=False)
    if rejects_url:
        write_rejects(generation_rejects(graded, selected).to_dict("records"), rejects_url)
    per_q = selected.drop_duplicates(C.QUESTION_ID)[[POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE]].astype(float).dropna() \
        if len(selected) else pd.DataFrame(columns=[POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE])
    return {"rows": len(selected), "correct": len(good),
            "questions": int(selected[C.QUESTION_ID].nunique()) if len(selected) else 0,
            "questions_with_choice": len(per_q), "sum_selected": float(per_q[SELECTED_MEAN_DISTANCE].sum()),
            "sum_pool": float(per_q[POOL_MEAN_DISTANCE].sum())}


def generation_rejects(graded: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """Every graded sample that is not in the corpus, with why: the grader's reason (stage ``verify``)
    or ``not_among_farthest_P`` (stage ``select``)."""
    keys = [C.QUESTION_ID, C.TEACHER, C.SAMPLE_INDEX]
    ok = ok_mask(graded)
    rejected = graded[~ok].assign(**{C.STAGE: "verify"})
    kept = selected[keys].astype({C.QUESTION_ID: str}).assign(_kept=True)
    good = graded[ok].astype({C.QUESTION_ID: str}).merge(kept, on=keys, how="left")
    not_selected = good[good["_kept"].isna()].drop(columns="_kept").assign(
        **{C.STAGE: "select", C.REASON: "not_among_farthest_P"})
    rows = pd.concat([rejected, not_selected], ignore_index=True)
    rows[C.REASON] = rows[C.REASON].where(rows[C.REASON].astype(str) != "", "rejected_by_grader")
    return rows.drop(columns=[BUCKET], errors="ignore")


def _clear(url: str) -> None:
    """A phase's output directory is rewritten whole (a rerun must not mix in an older run's files)."""
    fs, path = fresh(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _is_temp(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(TMP_PREFIX)

