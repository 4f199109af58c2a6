"""Ray Data stage of the LLM judge: graded rows in, the same rows out with the judge's verdict folded in.

    graded = judge_dataset(graded_ds, cfg.verify.judge, store_root="<storage>/generations")  # lazy Dataset

Runs as an actor pool of :class:`JudgeBatch` with the judge's own resources, like generation. Each actor
picks the rows its batch needs judged (``curation.judge.needs_judge``), renders their prompts, answers what
the generation store already holds (same content key as teacher samples: the judge is a one-sample teacher
whose question is the rendered judge prompt) and sends only the rest to the engine, which it builds on first
need (a rerun answered from the store starts no engine). New verdicts are written to the store as they come,
so a rerun makes no judge call. Adds ``columns.JUDGE_COLUMNS`` and rewrites ``correct`` and ``reason``; ``judge_called`` marks one row per
request sent (rows of a batch with the same judge prompt share one call).
"""

from __future__ import annotations

import hashlib
import logging

import pandas as pd
import ray.data
from pydantic import SecretStr

from ray_distill import columns as C
from ray_distill.config import JudgeConfig
from ray_distill.curation import judge as J
from ray_distill.generation.actor import GenerateBatch, engine_pool
from ray_distill.generation.engines import resolve_api_key
from ray_distill.generation.store import KEY, GenerationStore, generation_key, teacher_fingerprint

logger = logging.getLogger(__name__)

INPUTS = (C.QUESTION, C.ANSWER, C.COMPLETION, C.FORMAT_OK, C.CORRECT, C.PREDICTED, C.REASON)


def judge_requests(batch: pd.DataFrame, judge: JudgeConfig) -> tuple[pd.Series, pd.Series, list[str]]:
    """(math-verify decided, needs the judge, the judge prompt of every row: "" where none is needed)."""
    tests = batch[C.TESTS].fillna("").astype(str) if C.TESTS in batch.columns else pd.Series("", index=batch.index)
    decided = pd.Series([J.math_verify_decided(str(p or ""), str(a)) for p, a in zip(batch[C.PREDICTED], batch[C.ANSWER])],
                        index=batch.index, dtype=bool)
    need = pd.Series([J.needs_judge(judge.mode, bool(f), t, d) for f, t, d in zip(batch[C.FORMAT_OK], tests, decided)],
                     index=batch.index, dtype=bool)
    prompts = [judge_prompt(judge, q, a, c) if n else ""
               for q, a, c, n in zip(batch[C.QUESTION], batch[C.ANSWER], batch[C.COMPLETION], need)]
    return decided, need, prompts


def judge_prompt(judge: JudgeConfig, question, reference, completion) -> str:
    """The judge's user message for one teacher sample (its final-answer region against the reference)."""
    return J.render_judge_prompt(judge.prompt or J.DEFAULT_JUDGE_PROMPT, str(question), str(reference),
                                 J.answer_for_judge(str(completion)))


def count_stored_verdicts(store: GenerationStore, judge: JudgeConfig, samples: pd.DataFrame) -> int:
    """How many of the teacher ``samples`` already have a stored judge verdict (the dry run's "in store")."""
    if samples.empty:
        return 0
    teacher = judge.as_teacher()
    fp = teacher_fingerprint(teacher)
    keys = [generation_key(judge_prompt(judge, q, a, c), fp, 0)
            for q, a, c in zip(samples[C.QUESTION], samples[C.ANSWER], samples[C.COMPLETION])]
    have = set(store.load(teacher.name, set(keys))[KEY])
    return sum(k in have for k in keys)


def request_rows(prompts: list[str], fingerprint: dict) -> pd.DataFrame:
    """One store request per distinct prompt, in the generation store's question layout (sample 0)."""
    distinct = sorted(set(prompts))
    return pd.DataFrame({
        C.QUESTION_ID: [hashlib.sha256(p.encode()).hexdigest()[:16] for p in distinct],
        C.QUESTION: distinct, C.ANSWER: "", C.FAMILY: "judge", C.DIFFICULTY: -1, C.TESTS: "", C.PROMPT: distinct,
        C.SAMPLE_INDEX: 0, KEY: [generation_key(p, fingerprint, 0) for p in distinct],
    })


class JudgeBatch:
    """``map_batches`` callable: see the module docstring. ``store_root`` None: no cache (every call is made)."""

    def __init__(self, judge: dict, store_root: str | None = None, api_key: SecretStr | None = None):
        self.judge = JudgeConfig.model_validate(judge)
        self.teacher = self.judge.as_teacher()
        self.fingerprint = teacher_fingerprint(self.teacher)
        self.store = GenerationStore(store_root) if store_root else None
        self.api_key = api_key
        self._generate: GenerateBatch | None = None  # the engine, built on the first row the store cannot answer

    def generate(self, requests: pd.DataFrame) -> pd.DataFrame:
        if self._generate is None:
            t = self.teacher
            self._generate = GenerateBatch(t.name, t.engine.model_dump(), t.sampling.model_dump(), self.api_key)
        out = self._generate(requests)
        if self.store is not None:
            failed = out[C.ERROR] != ""
            if (~failed).any():
                self.store.write_part(self.teacher.name, out[~failed])
            if failed.any():
                self.store.write_part(self.teacher.name, out[failed], rejects=True)
        return out

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in INPUTS if c not in batch.columns]
        if missing:
            raise ValueError(f"judge: missing columns {missing} (has {list(batch.columns)})")
        batch = batch.reset_index(drop=True)
        decided, need, prompts = judge_requests(batch, self.judge)
        answers: dict[str, tuple[str, int, str, str, bool]] = {}  # key -> (text, tokens, finish, error, called)
        if need.any():
            requests = request_rows([p for p, n in zip(prompts, need) if n], self.fingerprint)
            stored = self.store.load(self.teacher.name, set(requests[KEY])) if self.store else pd.DataFrame(columns=[KEY])
            for r in stored.itertuples(index=False):
                answers[getattr(r, KEY)] = (r.completion, int(r.num_tokens), r.finish_reason, "", False)
            todo = requests[~requests[KEY].isin(set(answers))]
            if len(todo):
                generated = self.generate(todo)
                for k, r in zip(todo[KEY], generated.itertuples(index=False)):
                    answers[k] = (r.completion, int(r.num_tokens), r.finish_reason, r.error, True)
            logger.info("judge %s: %d rows, %d prompts, %d from the store, %d calls", self.teacher.name,
                        int(need.sum()), len(requests), len(requests) - len(todo), len(todo))
        return fold_verdicts(batch, decided, need, prompts, answers, self.fingerprint, self.judge.agree)


def fold_verdicts(batch: pd.DataFrame, decided: pd.Series, need: pd.Series, prompts: list[str],
                  answers: dict[str, tuple[str, int, str, str, bool]], fingerprint: dict, agree: str) -> pd.DataFrame:
    """``batch`` with the judge columns and ``correct``/``reason`` after the judge (``curation.judge.combine``)."""
    cols: dict[str, list] = {c: [] for c in (*C.JUDGE_COLUMNS, C.CORRECT, C.REASON)}
    seen: set[str] = set()  # rows with the same prompt share one call: it is counted on the first of them
    for i, row in enumerate(batch.itertuples(index=False)):
        mv_correct, mv_reason = bool(getattr(row, C.CORRECT)), str(getattr(row, C.REASON))
        verdict, text, tokens, called = None, "", 0, False
        if need.iloc[i]:
            key = generation_key(prompts[i], fingerprint, 0)
            text, tokens, finish, error, called = answers[key]
            called, _ = called and key not in seen, seen.add(key)
            verdict = J.parse_verdict(text, finish, error)
        correct, reason = J.combine(mv_correct, mv_reason, bool(decided.iloc[i]), verdict, agree)
        cols[C.JUDGE_VERDICT].append(verdict.label if verdict else "")
        cols[C.JUDGE_DETAIL].append(verdict.detail if verdict else "")
        cols[C.JUDGE_OUTPUT].append(text)
        cols[C.JUDGE_TOKENS].append(tokens)
        cols[C.JUDGE_CALLED].append(called)
        cols[C.MATH_VERIFY_CORRECT].append(mv_correct)
        cols[C.MATH_VERIFY_DECIDED].append(bool(decided.iloc[i]))
        cols[C.CORRECT].append(correct)
        cols[C.REASON].append(reason)
    return batch.assign(**cols)


def judge_dataset(ds: ray.data.Dataset, judge: JudgeConfig, store_root: str | None = None) -> ray.data.Dataset:
    """Lazily pass graded rows through an actor pool of the judge (rows in = rows out). An API key is read
    here, in the driver, as for teachers."""
    teacher = judge.as_teacher()
    api_key = resolve_api_key(teacher.engine) if teacher.engine.kind == "openai" else None
    return ds.map_batches(
        JudgeBatch,
        fn_constructor_kwargs={"judge": judge.model_dump(), "store_root": store_root, "api_key": api_key},
        **engine_pool(teacher),
    )
