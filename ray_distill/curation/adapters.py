"""Thin Ray Data adapters over the pure curation functions.

    graded = ds.map_batches(GradeBatch, fn_constructor_args=(512, True, student_path),
                            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=2))
    selected = select_dataset(graded, p=4, seed=0, tokenizer_path=student_path)

Tokens are counted / compared with the student tokenizer: ``tokenizer_path`` is a local ``save_pretrained``
dir or hub id, or (cheaper in an actor) the :class:`~ray_distill.models.TokenIds` that :func:`token_counter`
made of one in the driver; with ``None``, characters are used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pandas as pd

from ray_distill import columns as C
from ray_distill.curation.graders import grade_rows, sandbox_from_config
from ray_distill.curation.selection import POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE, char_tokenize, select_questions
from ray_distill.models import TokenIds

logger = logging.getLogger(__name__)


def load_tokenize(tokenizer: str | TokenIds | None) -> Callable[[str], Sequence[int]]:
    """``text -> token ids``: ``tokenizer`` itself when it is a :class:`TokenIds` (built in the driver, cheap to
    rebuild in an actor), the tokenizer at a path or hub id, or code points when ``None``."""
    if tokenizer is None:
        return char_tokenize
    if isinstance(tokenizer, TokenIds):
        return tokenizer
    from ray_distill.models import load_tokenizer

    loaded = load_tokenizer(tokenizer)
    return lambda text: loaded(text, add_special_tokens=False)["input_ids"]


def token_counter(tokenizer: str | None) -> str | TokenIds | None:
    """What to hand grading and selection actors for ``tokenizer`` (a path or hub id): its :class:`TokenIds` when
    it has a fast backend (the actors then never import transformers), else the reference itself."""
    from ray_distill.models import token_ids

    return (token_ids(tokenizer) or tokenizer) if tokenizer is not None else None


class GradeBatch:
    """``map_batches`` stage: grade each completion against its question (``graders.grade_rows``):
    code when the row's ``tests`` is non-empty (run in the sandbox, inside this actor), else math
    against ``answer``.

    Needs ``completion`` and ``answer``, and ``tests`` whenever the batch may hold code questions (a
    batch without the column is all math); adds ``format_ok``, ``correct``, ``predicted``, ``reason``.
    Emits exactly the rows it receives. ``code`` is a ``CodeGraderConfig`` dump (sandbox limits).
    """

    INPUTS = (C.COMPLETION, C.ANSWER)
    OPTIONAL_INPUTS = (C.TESTS,)
    OUTPUTS = (C.FORMAT_OK, C.CORRECT, C.PREDICTED, C.REASON)

    def __init__(self, max_tokens: int | None, require_think: bool = True, tokenizer_path: str | TokenIds | None = None,
                 code: dict | None = None):
        self.max_tokens = max_tokens
        self.require_think = require_think
        tokenize = load_tokenize(tokenizer_path) if tokenizer_path else None
        self.count_tokens = (lambda text: len(tokenize(text))) if tokenize else None
        self.code = code
        self._sandbox = None  # built on the first code row: math-only jobs need no sandbox

    def sandbox(self):
        if self._sandbox is None:
            self._sandbox = sandbox_from_config(self.code)
        return self._sandbox

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.INPUTS if c not in batch.columns]
        if missing:
            raise ValueError(f"GradeBatch: missing columns {missing} (has {list(batch.columns)})")
        tests = [str(t) for t in batch[C.TESTS].fillna("")] if C.TESTS in batch.columns else [""] * len(batch)
        verdicts = grade_rows([str(t) for t in batch[C.COMPLETION].fillna("")], [str(a) for a in batch[C.ANSWER]],
                              tests, self.max_tokens, self.count_tokens, self.require_think,
                              self.sandbox() if any(tests) else None, finished_only=self.require_think)
        out = batch.assign(
            **{
                C.FORMAT_OK: [v.format_ok for v in verdicts],
                C.CORRECT: [v.correct for v in verdicts],
                C.PREDICTED: [v.predicted for v in verdicts],
                C.REASON: [v.reason for v in verdicts],
            }
        )
        if len(out) != len(batch):
            raise RuntimeError(f"GradeBatch: {len(batch)} rows in, {len(out)} out")
        return out


class SelectBatch:
    """``map_batches`` stage over blocks that each hold whole questions: the farthest-P correct
    trajectories of every question in the block (see ``select_diverse``)."""

    INPUTS = (C.QUESTION_ID, C.COMPLETION, C.CORRECT, C.FORMAT_OK, C.TEACHER, C.SAMPLE_INDEX)
    OUTPUTS = (C.SELECTION_DISTANCE, POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE)

    def __init__(self, p: int, seed: int, tokenizer_path: str | TokenIds | None = None):
        self.p, self.seed = p, seed
        self.tokenize = load_tokenize(tokenizer_path)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return select_questions(batch, self.p, self.seed, self.tokenize)


def select_dataset(df: pd.DataFrame, p: int, seed: int, tokenizer_path: str | TokenIds | None = None,
                   num_actors: int = 1, questions_per_block: int = 512):
    """Keep the ``p`` farthest-apart correct trajectories of each question.

    The rows are cut into blocks of whole questions here (they are already in memory after
    verification), so the Ray Data stage needs no ``groupby`` shuffle: a hash shuffle on a small
    cluster can wait forever for CPUs held by the stage's own actors. Returns a ``ray.data.Dataset``
    with the input columns plus ``selection_distance``.
    """
    import ray.data

    missing = [c for c in SelectBatch.INPUTS if c not in df.columns]
    if missing:
        raise ValueError(f"select_dataset: missing columns {missing}")
    ids = sorted(df[C.QUESTION_ID].astype(str).unique())
    blocks = [df[df[C.QUESTION_ID].astype(str).isin(set(ids[i : i + questions_per_block]))]
              for i in range(0, len(ids), questions_per_block)]
    return ray.data.from_pandas(blocks or [df]).map_batches(
        SelectBatch,
        fn_constructor_args=(p, seed, tokenizer_path),
        batch_size=None,  # one block = whole questions
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
    )
