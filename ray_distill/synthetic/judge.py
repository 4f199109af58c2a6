"""A scripted judge persona: a deterministic stand-in for an LLM judge, so the judge stage runs in CI.

    judge_reply(render_judge_prompt(DEFAULT_JUDGE_PROMPT, "1+1", "2", "\\boxed{2}"))
    # 'The final answer matches the reference.\\nVERDICT: CORRECT'

It reads the reference and the answer out of a prompt built from the default judge template (the
``Reference answer:`` and ``Student's final answer:`` sections) and compares the answer's last
``\\boxed{}`` (or the whole answer) with the reference as normalised strings: case, spaces, ``$`` and a
trailing period do not matter, so it accepts ``\\boxed{Paris}`` for ``paris``. A prompt without those
sections (a custom template) gets a reply without a verdict line, which the strict parser rejects.
"""

from __future__ import annotations

import re

_SECTION = re.compile(r"Reference answer:\n(?P<reference>.*?)\n\nStudent's final answer:\n(?P<answer>.*?)\n\n", re.DOTALL)
_BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text).replace("$", "").rstrip(".").lower()


def judge_reply(prompt: str) -> str:
    m = _SECTION.search(prompt)
    if not m:
        return "I cannot find a reference answer and a student answer to compare."
    answer = m.group("answer")
    boxed = last_boxed(answer)
    same = _norm(boxed if boxed is not None else answer) == _norm(m.group("reference"))
    if same:
        return "The final answer matches the reference.\nVERDICT: CORRECT"
    return "The final answer differs from the reference.\nVERDICT: INCORRECT"


JUDGES = {"judge": judge_reply}
