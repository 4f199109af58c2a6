"""Content-addressed generation store on any fsspec URL: generate once, curate many times.

    store = GenerationStore("s3://bucket/generations")          # or a local path, memory://, ...
    df, counters = store.get_or_generate(question_rows, teacher_cfg, n=8)  # generates only what is missing
    counters   # {'requested': 16, 'cached': 8, 'generated': 8, 'failed': 0, 'completion_tokens': 1903, ...}
    df, _ = store.get_or_generate(question_rows, teacher_cfg, n={"q1": 4, "q2": 8})  # per question

Every sample is stored under a key: sha256 of (question text hash, teacher name, engine kind, model,
persona, revision, sampling params except ``n``, prompt-template hash, sample index; the API mode for
``openai``; the content digest of the model's files when the caller passes one, :func:`model_digest`).
A larger ``n``, a rerun or a crash restart therefore only generates what is missing.

The student is stored like a teacher (under the name ``student``, with the digest of its checkpoint: the
same path retrained to other weights is another model): compression, smoke-test and evaluation samples
are drawn once, and a rerun or a resumed job reads them back. ``store.totals[name]`` adds up the row
counters of every call of this store object (how many samples it generated, how many it found).

Layout: ``<root>/<teacher>/part-<uuid>.parquet`` (successes, ``GENERATION_COLUMNS`` + ``generation_key``)
and ``<root>/<teacher>/rejects/part-<uuid>.parquet`` (failed requests, kept for inspection and
retried on the next call). Part files are written under a ``_tmp-`` name, fsynced (local disks) and
then renamed (``data.fs.atomic_write``), and readers only read ``part-*.parquet``, listed fresh (no
cached listing), so a crash never leaves a half-written part visible; temp parts left by a crash are
removed after an hour. A part that cannot be read (empty, truncated) is skipped with a warning naming
it: its samples count as missing and are generated again. Finished samples are written once
``flush_rows`` are waiting or the oldest has waited ``flush_s`` seconds (and when the run stops, even
by an error), so a crashed driver loses at most seconds of paid work. Parts written before a column
was added read back with that column's default (:data:`STORED_DEFAULTS`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from functools import lru_cache

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from ray_distill import columns as C
from ray_distill.config import TeacherConfig
from ray_distill.data.fs import TMP_PREFIX, atomic_write, fresh, invalidate_listings, signature
from ray_distill.generation.actor import with_question_defaults
from ray_distill.generation.engines import PROMPT_TEMPLATE_HASH
from ray_distill.generation.hosts import generation
from ray_distill.presets import PRESETS

logger = logging.getLogger(__name__)

KEY = "generation_key"  # content key of one stored sample
PART_PREFIX, REJECTS_DIR = "part-", "rejects"
TEMP_MAX_AGE_S = 3600.0  # a temp part older than this is a crashed write's leftover (a live write takes seconds)
STORED_COLUMNS = [*C.GENERATION_COLUMNS, KEY]
STORED_DEFAULTS = {C.PROMPT_TOKENS: -1}  # for parts written before the column existed (others: None)
Counts = int | Mapping[str, int] | None  # samples per question: one n for all, or one per question id


def teacher_fingerprint(teacher: TeacherConfig, model_digest: str | None = None) -> dict:
    """Everything about a teacher that changes its samples (the chat template and its variables
    included; the prompt template is in the hashed prompt text). Not in it: ``n`` (it only adds samples),
    ``base_url`` (where a model is served, not which model: a moved server keeps its samples; the
    teacher name and model tell models apart), the API key and the transport settings (concurrency,
    timeout, retries)."""
    e = teacher.engine
    fp = {
        "teacher": teacher.name,
        "kind": e.kind,
        "model": e.model,
        "persona": e.persona,
        "revision": e.revision,
        # n only adds samples; no stop strings is the old default (keys stay what they were)
        "sampling": teacher.sampling.model_dump(exclude={"n"} | ({"stop"} if not teacher.sampling.stop else set())),
        "prompt_template": PROMPT_TEMPLATE_HASH,
    }
    if e.kind == "openai" or e.api != "chat":  # chat messages vs a raw prompt are different requests
        fp["api"] = e.api
    if e.preset:  # a built-in model: its name and build version, not where this job's cache put it
        fp["model"] = f"preset:{e.preset}-v{PRESETS[e.preset][0]}"
    if e.chat_template:  # set only when used, so stores written before keep their keys
        fp["chat_template"] = hashlib.sha256(e.chat_template.encode()).hexdigest()[:16]
    if e.chat_template_kwargs:
        fp["chat_template_kwargs"] = e.chat_template_kwargs
    if model_digest:  # set only when given, so teacher keys stay what they were
        fp["model_digest"] = model_digest
    return fp


# model_digest: files up to this size are hashed whole; larger *.safetensors files are sampled (see there).
FULL_HASH_BELOW = 512 << 20
SAMPLE_BYTES = 1 << 20  # first, middle and last MiB of a sampled file
TENSOR_HEAD_BYTES = 4096  # and the first 4 KiB of every tensor in it


def model_digest(path: str) -> str:
    """A digest of a model directory's files on any fsspec URL; ``path`` itself for a hub id
    (``org/name[@revision]``: pin a commit for reproducible reruns). Computed once per process for each
    set of (name, size, mtime) of the files.

    Every file contributes its relative name and size. Files up to :data:`FULL_HASH_BELOW` (512 MiB: config,
    tokenizer, chat template, every weight file of a small model, so every model the CPU suite and the
    quickstart use) and any file that is not safetensors contribute all their bytes, exactly as before.
    A larger ``*.safetensors`` file (a 7B-32B checkpoint's shards) contributes its header (every tensor's
    name, dtype, shape and byte offsets), the first :data:`TENSOR_HEAD_BYTES` of every tensor and the first,
    middle and last MiB of the file: a few MiB per shard instead of 131 GB for a 32B student. What that
    guarantees: a retrained checkpoint of the same shapes gets another digest as soon as any tensor's first
    4 KiB changed, which full fine-tuning does to every trained tensor; a change confined to the rest of a
    tensor of a large shard (a hand edit of a few values) is not seen (give such a model another path)."""
    fs, root = fresh(path)
    if not fs.isdir(root):
        return path
    return _digest(path, signature(path))


@lru_cache(maxsize=64)
def _digest(path: str, signature: tuple, full_below: int = FULL_HASH_BELOW) -> str:
    fs, root = fsspec.core.url_to_fs(path)
    h = hashlib.sha256()
    for name, size, _ in signature:
        h.update(f"{os.path.relpath(name, root)}\0{size}\0".encode())
        if size > full_below and name.endswith(".safetensors"):
            h.update(b"sampled\0")
            for chunk in _safetensors_samples(fs, name, size):
                h.update(chunk)
            continue
        with fs.open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:32]


def _safetensors_samples(fs, name: str, size: int) -> list[bytes]:
    """The header of the safetensors file ``name`` and the sampled ranges of its data (see
    :func:`model_digest`), read with one ``cat_ranges`` (concurrent range requests on object stores)."""
    with fs.open(name, "rb") as f:
        head = f.read(8)
        header = f.read(int.from_bytes(head, "little"))
    data = 8 + len(header)
    tensors = sorted(v["data_offsets"] for k, v in json.loads(header).items() if k != "__metadata__")
    ranges = [(data + a, min(data + b, data + a + TENSOR_HEAD_BYTES)) for a, b in tensors if b > a]
    middle = max(0, size // 2 - SAMPLE_BYTES // 2)
    ranges += [(0, min(size, SAMPLE_BYTES)), (middle, min(size, middle + SAMPLE_BYTES)),
               (max(0, size - SAMPLE_BYTES), size)]
    return [head, header, *fs.cat_ranges([name] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])]


def generation_key(question: str, fingerprint: dict, sample_index: int) -> str:
    payload = {**fingerprint, "question": hashlib.sha256(question.encode()).hexdigest(), "sample_index": sample_index}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class GenerationStore:
    """``flush_rows``/``flush_s``: finished samples are written as a part once this many are waiting or the
    oldest has waited this long (``clock``: the time function those seconds are measured with)."""

    def __init__(self, root: str, flush_rows: int = 4096, flush_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root = root.rstrip("/")
        self.fs, self.root_path = fsspec.core.url_to_fs(self.root)
        self.flush_rows, self.flush_s, self.clock = flush_rows, flush_s, clock
        self.totals: defaultdict[str, Counter] = defaultdict(Counter)  # row counters of this object's calls

    def teacher_dir(self, teacher_name: str) -> str:
        if not teacher_name or "/" in teacher_name or teacher_name.startswith((".", "_")):
            raise ValueError(f"teacher name {teacher_name!r} cannot be a store directory")
        return f"{self.root_path}/{teacher_name}"

    def part_files(self, teacher_name: str, rejects: bool = False) -> list[str]:
        """Complete part files, listed fresh (temp names are never listed)."""
        d = self._dir(teacher_name, rejects)
        invalidate_listings(self.fs, d)  # another process may have written parts since this one listed
        if not self.fs.isdir(d):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(d, detail=False)]
        return sorted(f"{d}/{n}" for n in names if n.startswith(PART_PREFIX) and n.endswith(".parquet"))

    def read_part(self, path: str, columns: list[str] | None = None, filters=None) -> pa.Table | None:
        """One part file as a table; None, with a warning naming it, when it cannot be read (an empty or
        truncated file: its samples then count as missing and are generated again)."""
        try:
            return pq.read_table(path, filesystem=self.fs, columns=columns, filters=filters)
        except Exception as err:
            logger.warning("generation store part %s is unreadable and skipped (its samples will be generated "
                           "again; delete the file to silence this): %s", path, _first_line(err))
            return None

    def load(self, teacher_name: str, keys: set[str] | None = None, rejects: bool = False) -> pd.DataFrame:
        """Stored rows of a teacher (only ``keys`` when given), one row per key; unreadable parts are skipped."""
        if keys is not None and not keys:
            return pd.DataFrame(columns=STORED_COLUMNS)
        filters = [(KEY, "in", sorted(keys))] if keys is not None else None
        tables = [self.read_part(path, filters=filters) for path in self.part_files(teacher_name, rejects)]
        frames = [_with_stored_columns(t.to_pandas()) for t in tables if t is not None]
        if not frames:
            return pd.DataFrame(columns=STORED_COLUMNS)
        return pd.concat(frames, ignore_index=True).drop_duplicates(KEY, ignore_index=True)

    def index(self, teacher_name: str) -> dict[str, tuple[str, bool]]:
        """content key → (part file, is a failed request) of every readable stored sample; a success wins
        over a stored failure."""
        out: dict[str, tuple[str, bool]] = {}
        for rejects in (True, False):
            for path in self.part_files(teacher_name, rejects=rejects):
                table = self.read_part(path, columns=[KEY])
                for key in table.column(0).to_pylist() if table is not None else []:
                    out[key] = (path, rejects)
        return out

    def write_part(self, teacher_name: str, df: pd.DataFrame, rejects: bool = False) -> str:
        """Write ``df`` as a new part file atomically (temp name, fsync, rename); returns its path."""
        final = f"{self._dir(teacher_name, rejects)}/{PART_PREFIX}{uuid.uuid4().hex}.parquet"
        with atomic_write(final, "wb", fs=self.fs) as f:
            df[STORED_COLUMNS].to_parquet(f, index=False)
        return final

    def clean_temp_parts(self, teacher_name: str, older_than_s: float = TEMP_MAX_AGE_S) -> list[str]:
        """Remove the temp parts of crashed writes (older than ``older_than_s``); returns their paths."""
        removed = []
        for rejects in (False, True):
            d = self._dir(teacher_name, rejects)
            invalidate_listings(self.fs, d)
            if not self.fs.isdir(d):
                continue
            now = datetime.now(timezone.utc)
            for path in self.fs.ls(d, detail=False):
                if not path.rstrip("/").rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                    continue
                try:
                    modified = self.fs.modified(path)
                except (NotImplementedError, OSError):  # a storage that does not say: leave it (readers skip it)
                    continue
                modified = modified if modified.tzinfo else modified.replace(tzinfo=timezone.utc)
                if (now - modified).total_seconds() > older_than_s:
                    self.fs.rm(path)
                    removed.append(path)
        if removed:
            logger.info("generation store %s/%s: removed %d temp parts of crashed writes", self.root, teacher_name,
                        len(removed))
        return removed

    def persist(self, teacher_name: str, batches: Iterable[pd.DataFrame],
                poll_s: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write finished batches (``STORED_COLUMNS`` with ``error``) as parts while they stream in, failures
        under ``rejects/``: a part once ``flush_rows`` rows are waiting or the oldest has waited ``flush_s``
        seconds (checked at least every ``poll_s`` seconds while no batch arrives), and whatever is waiting
        when the stream ends or fails. Returns (successes, failures)."""
        empty = pd.DataFrame(columns=STORED_COLUMNS)
        ok, bad = [empty], [empty]
        buffer = PartBuffer(self, teacher_name, self.flush_rows, self.flush_s, self.clock)

        def wait_s() -> float:
            left = buffer.seconds_left()
            return poll_s if left is None else min(poll_s, left)

        try:
            for batch in _with_timeouts(batches, wait_s):
                if batch is None:  # no batch for a while: write what has waited long enough
                    if buffer.due():
                        buffer.flush()
                    continue
                failed = batch[C.ERROR] != ""
                ok.append(batch.loc[~failed, STORED_COLUMNS])
                bad.append(batch.loc[failed, STORED_COLUMNS])
                buffer.add(batch)
        finally:
            buffer.flush()  # what finished is kept, even when the run fails
        return pd.concat(ok, ignore_index=True), pd.concat(bad, ignore_index=True)

    def _dir(self, teacher_name: str, rejects: bool) -> str:
        return self.teacher_dir(teacher_name) + (f"/{REJECTS_DIR}" if rejects else "")

    def get_or_generate(
        self, questions: list[dict], teacher: TeacherConfig, n: Counts = None, digest: str | None = None,
    ) -> tuple[pd.DataFrame, dict[str, int]]:
        """Samples ``0..n-1`` (default ``teacher.sampling.n``; a mapping gives each question id its own
        ``n``) of every question, generating only the missing ones, all in one actor pool. Returns one
        row per requested (question, sample index), in request order, with ``STORED_COLUMNS``; rows
        whose request failed this time carry a non-empty ``error``. Counters
        (:func:`generation_counters`): row counts (requested = cached + generated + failed) and the
        prompts, tokens and wall time spent by this call, plus the tokens of the cached samples.
        ``digest``: the model's content digest (:func:`model_digest`), part of every key when given."""
        requests = request_frame(questions, teacher, n, digest)
        self.clean_temp_parts(teacher.name)
        cached = self.load(teacher.name, set(requests[KEY]))
        todo = requests[~requests[KEY].isin(cached[KEY])].drop_duplicates(KEY)
        start = time.perf_counter()
        new_ok, new_bad = self._generate(todo, teacher)
        wall_s = time.perf_counter() - start

        found = pd.concat([cached, new_ok, new_bad], ignore_index=True)
        out = _answer(requests, found, how="left")
        if len(out) != len(requests):
            raise RuntimeError(f"{len(requests) - len(out)} requested samples are missing after generation")
        counters = generation_counters(requests, cached, todo, new_ok, new_bad, wall_s)
        self.totals[teacher.name].update({k: counters[k] for k in ("requested", "cached", "generated", "failed")})
        logger.info("generation store %s/%s: %s", self.root, teacher.name, counters)
        return out, counters

    def lookup(self, questions: list[dict], teacher: TeacherConfig, n: Counts = None,
               digest: str | None = None) -> pd.DataFrame:
        """The stored ones among the samples ``get_or_generate(questions, teacher, n, digest)`` asks for, in
        request order, in the same layout; generates nothing."""
        requests = request_frame(questions, teacher, n, digest)
        return _answer(requests, self.load(teacher.name, set(requests[KEY])), how="inner")

    def count_cached(self, questions: list[dict], teacher: TeacherConfig, n: Counts = None) -> int:
        """How many of the samples ``get_or_generate(questions, teacher, n)`` asks for are stored (free)."""
        return len(self.lookup(questions, teacher, n))

    def mean_completion_tokens(self, teacher: TeacherConfig) -> float | None:
        """Mean completion length of the samples stored under this teacher's name (None when empty):
        the length a dry run expects of new samples."""
        total = count = 0
        for path in self.part_files(teacher.name):
            table = self.read_part(path, columns=[C.NUM_TOKENS])
            if table is None:
                continue
            tokens = table.column(0).to_numpy()
            tokens = tokens[tokens >= 0]  # -1: the engine did not report a count
            total, count = total + int(tokens.sum()), count + len(tokens)
        return total / count if count else None

    def _generate(self, todo: pd.DataFrame, teacher: TeacherConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Generate ``todo`` (one row per missing sample) and persist it in parts as it streams in."""
        if todo.empty:
            empty = pd.DataFrame(columns=STORED_COLUMNS)
            return empty, empty
        logger.info("generating %d missing samples for teacher %s", len(todo), teacher.name)
        # One block per engine batch: a block's output only streams out when the whole block is done, so
        # a single big block would persist nothing before the end and keep every actor but one idle.
        size = teacher.resources.batch_size
        blocks = [todo.iloc[i: i + size] for i in range(0, len(todo), size)]
        with generation(ray.data.from_pandas(blocks), teacher) as ds:  # from_pandas' task runs before the hosts
            new_ok, new_bad = self.persist(teacher.name, ds.iter_batches(batch_size=None, batch_format="pandas"))
        if len(new_ok) + len(new_bad) != len(todo):
            raise RuntimeError(f"generation returned {len(new_ok) + len(new_bad)} rows for {len(todo)} requests")
        return new_ok, new_bad


class PartBuffer:
    """Finished samples waiting to be written as a store part (successes and, under ``rejects/``, failures):
    written once ``flush_rows`` are waiting or the oldest has waited ``flush_s`` seconds of ``clock``."""

    def __init__(self, store: GenerationStore, teacher_name: str, flush_rows: int, flush_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.teacher_name = store, teacher_name
        self.flush_rows, self.flush_s, self.clock = flush_rows, flush_s, clock
        self.frames: list[pd.DataFrame] = []
        self.rows, self.since = 0, 0.0  # rows waiting; when the oldest of them arrived
        self.parts: list[str] = []  # every part written

    def add(self, batch: pd.DataFrame) -> None:
        if not len(batch):
            return
        if not self.rows:
            self.since = self.clock()
        self.frames.append(batch)
        self.rows += len(batch)
        if self.due():
            self.flush()

    def seconds_left(self) -> float | None:
        """Seconds until the waiting rows are due by time (<= 0: due now); None when none wait."""
        return self.flush_s - (self.clock() - self.since) if self.rows else None

    def due(self) -> bool:
        return self.rows >= self.flush_rows or (self.rows > 0 and self.seconds_left() <= 0)

    def flush(self) -> None:
        if not self.rows:
            return
        batch = pd.concat(self.frames, ignore_index=True)
        failed = batch[C.ERROR] != ""
        if (~failed).any():
            self.parts.append(self.store.write_part(self.teacher_name, batch[~failed]))
        if failed.any():
            self.parts.append(self.store.write_part(self.teacher_name, batch[failed], rejects=True))
        self.frames, self.rows = [], 0


def _with_timeouts(items: Iterable, timeout: Callable[[], float]) -> Iterator:
    """The items of ``items``, pulled by a helper thread, and a ``None`` whenever ``timeout()`` seconds
    pass without one (so the consumer can act while the producer is slow). The producer's error is raised
    here; when the consumer stops, the helper stops pulling."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:  # handed to the consumer
            put(("error", err))

    threading.Thread(target=pull, name="generation-store-reader", daemon=True).start()
    try:
        while True:
            try:
                kind, value = q.get(timeout=max(0.0, timeout()))
            except queue.Empty:
                yield None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def generation_counters(requests: pd.DataFrame, cached: pd.DataFrame, todo: pd.DataFrame, new_ok: pd.DataFrame,
                        new_bad: pd.DataFrame, wall_s: float) -> dict[str, int | float]:
    """Per-teacher counters of one ``get_or_generate`` call. Row counts are per requested row; the
    token counts are per stored sample (unknown counts, -1, are left out of the sums)."""
    new = pd.concat([new_ok, new_bad], ignore_index=True)
    completion_tokens = _known_sum(new[C.NUM_TOKENS])
    return {
        "requested": len(requests),
        "cached": int(requests[KEY].isin(cached[KEY]).sum()),
        "generated": int(requests[KEY].isin(new_ok[KEY]).sum()),
        "failed": int(requests[KEY].isin(new_bad[KEY]).sum()),
        "prompts": int(todo[C.PROMPT].nunique()),  # distinct prompts sent (each once per missing sample)
        "prompt_tokens": _known_sum(new[C.PROMPT_TOKENS]),
        "completion_tokens": completion_tokens,
        "wall_s": round(wall_s, 3),
        "completion_tokens_per_s": round(completion_tokens / wall_s, 1) if wall_s > 0 and len(new) else 0.0,
        "cached_prompt_tokens": _known_sum(cached[C.PROMPT_TOKENS]),
        "cached_completion_tokens": _known_sum(cached[C.NUM_TOKENS]),
    }


def _known_sum(tokens: pd.Series) -> int:
    values = pd.to_numeric(tokens, errors="coerce")
    return int(values[values >= 0].sum())


def _with_stored_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every stored column; a column an older part lacks gets its default."""
    for col in STORED_COLUMNS:
        if col not in df.columns:
            df[col] = STORED_DEFAULTS.get(col)
    return df


def _answer(requests: pd.DataFrame, found: pd.DataFrame, how: str) -> pd.DataFrame:
    """Requests joined with their stored samples (``STORED_COLUMNS``). Question columns come from the
    request: a cached sample may have been generated for the same text under another question id."""
    sample_cols = [KEY, C.TEACHER, C.SEED, C.COMPLETION, C.NUM_TOKENS, C.FINISH_REASON, C.ERROR, C.PROMPT_TOKENS]
    out = requests.merge(found[STORED_COLUMNS][sample_cols], on=KEY, how=how, validate="many_to_one")
    out = out.dropna(subset=[C.COMPLETION])
    return out[STORED_COLUMNS].astype({C.SEED: "int64", C.NUM_TOKENS: "int64", C.PROMPT_TOKENS: "int64"}).reset_index(drop=True)


def sample_counts(question_ids: list[str], n: int | Mapping[str, int]) -> list[int]:
    """Samples asked of each question: ``n``, or ``n[question_id]`` (every question must be in it)."""
    if not isinstance(n, Mapping):
        counts = [int(n)] * len(question_ids)
    else:
        n = {str(q): c for q, c in n.items()}
        missing = [q for q in question_ids if q not in n]
        if missing:
            raise ValueError(f"no sample count for {len(missing)} questions, e.g. {missing[0]!r}")
        counts = [int(n[q]) for q in question_ids]
    if any(c < 1 for c in counts):
        raise ValueError(f"sample counts must be >= 1, got {min(counts)}")
    return counts


def request_frame(questions: list[dict], teacher: TeacherConfig, n: Counts, digest: str | None = None) -> pd.DataFrame:
    """One row per (question, sample index < its n) with its content key (``n``: see ``get_or_generate``)."""
    qdf = with_question_defaults(pd.DataFrame(questions), "questions")
    counts = sample_counts(qdf[C.QUESTION_ID].astype(str).tolist(), n if n is not None else teacher.sampling.n)
    req = qdf[C.QUESTION_COLUMNS].iloc[np.repeat(np.arange(len(qdf)), counts)].reset_index(drop=True)
    req[C.SAMPLE_INDEX] = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.arange(0)
    fp = teacher_fingerprint(teacher, digest)
    # the key hashes what the teacher is sent (the prompt: the question itself when there is no template)
    req[KEY] = [generation_key(q, fp, int(i)) for q, i in zip(req[C.PROMPT], req[C.SAMPLE_INDEX])]
    return req
