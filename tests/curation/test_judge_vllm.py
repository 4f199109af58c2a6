"""The judge stage with a real model: SmolLM2-135M-Instruct as a vLLM judge (CPU) on a handful of rows. Plumbing
only (prompt through the chat template, verdicts parsed, tokens counted, the store answering a rerun); whether the
135M model judges well is not the point."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.config import JudgeConfig
from ray_distill.curation import judge as J
from ray_distill.curation.adapters import GradeBatch
from ray_distill.curation.judge_stage import judge_dataset
from ray_distill.generation.store import GenerationStore

pytestmark = pytest.mark.slow


def test_smollm2_as_a_vllm_judge(ray_local, smollm2_path, tmp_path):
    rows = pd.DataFrame({
        C.QUESTION: ["Capital of France?", "2+2?", "3+4?", "Capital of Italy?"],
        C.ANSWER: ["Paris", "4", "7", "Rome"],
        C.COMPLETION: ["<think>x</think>\\boxed{Paris}", "<think>x</think>\\boxed{4}", "<think>x</think>\\boxed{9}",
                       "<think>x</think>Milan"],
    })
    graded = GradeBatch(max_tokens=None)(rows)
    judge = JudgeConfig(mode="always", engine={"kind": "vllm", "model": smollm2_path, "dtype": "float32",
                                               "max_model_len": 512},
                        sampling={"temperature": 0.0, "max_tokens": 12})
    store = str(tmp_path / "generations")
    out = judge_dataset(ray_local.data.from_pandas(graded), judge, store).to_pandas()

    assert len(out) == 4 and set(C.JUDGE_COLUMNS) <= set(out.columns)
    assert out[C.JUDGE_VERDICT].isin([J.CORRECT, J.INCORRECT, J.UNPARSED]).all()  # every row judged, none failed
    assert out[C.JUDGE_CALLED].all() and out[C.JUDGE_TOKENS].between(1, 12).all()
    assert (out[C.JUDGE_OUTPUT].str.len() > 0).all()
    unparsed = out[out[C.JUDGE_VERDICT] == J.UNPARSED]
    assert unparsed[C.JUDGE_DETAIL].str.contains("is not 'VERDICT: CORRECT'").all()
    # an unparseable verdict verifies nothing: under the default agree: both the row is not accepted by both checks,
    # so it is rejected whatever math-verify decided, with the judge's reason where math-verify had accepted it
    assert judge.agree == "both" and not unparsed[C.CORRECT].any()
    assert (unparsed[unparsed[C.MATH_VERIFY_CORRECT]][C.REASON] == J.R_JUDGE_UNPARSED).all()
    assert len(GenerationStore(store).load("judge")) == 4

    # a rerun is answered by the store: no call, no engine start, the same outputs
    again = judge_dataset(ray_local.data.from_pandas(graded), judge, store).to_pandas()
    assert not again[C.JUDGE_CALLED].any()
    assert sorted(again[C.JUDGE_OUTPUT]) == sorted(out[C.JUDGE_OUTPUT])
