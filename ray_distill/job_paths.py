"""Where the relative paths of a job file point: its input files resolve against the job's ``base_dir``.

    tree = resolve_inputs(yaml.safe_load(text), "jobs/public_data.yaml", os.getcwd())
    tree["questions"]["path"]   # '/…/jobs/data/numina_shaped.parquet' from 'data/numina_shaped.parquet'

The rule (README, "Configuration"):

- **Input files** — ``questions.path``, ``dev.suite.path``, ``eval.suites[i].path``, ``replay.source``,
  ``eval.harness.include_path`` and a ``chat_template`` given as a file (``teachers[i].engine``,
  ``verify.judge.engine``, ``student``) — resolve against ``base_dir``: the job file's directory unless the file
  sets ``base_dir`` (itself relative to the job file's directory). So a job file and its data move together
  and the job runs from any directory.
- A relative input path that does not exist there but does from the working directory is read from the working
  directory: job files written before this rule keep working from where they were run.
- **Outputs** stay where the command runs: ``storage`` is relative to the working directory (or
  ``RAY_DISTILL_STORAGE``; see :mod:`ray_distill.environment`), so ``ray-distill run jobs/quickstart.yaml``
  from the repository root writes ``outputs/`` there.
- Paths set by command-line overrides follow the same rule (a file that exists only from where the command
  runs is read from there). URLs and absolute paths are used as they are; a ``chat_template``
  that holds Jinja (``{{``, ``{%``, ``{#``) is a template, not a path; ``cluster:`` keeps its own lookup
  (working directory, then beside the job file and its parent folder).
- A job file at a URL (``s3://bucket/jobs/x.yaml``): its directory URL is the base (no existence check).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from typing import Any

from ray_distill.environment import is_url

BASE_DIR_KEY = "base_dir"
# Dotted keys of the job tree that name input files ("*": every item of a list).
INPUT_KEYS = ("questions.path", "dev.suite.path", "eval.suites.*.path", "replay.source", "eval.harness.include_path")
TEMPLATE_KEYS = ("teachers.*.engine.chat_template", "verify.judge.engine.chat_template", "student.chat_template")
_JINJA = re.compile(r"{[{%#]")


def job_dir(job_file: str, cwd: str) -> str:
    """The directory of ``job_file`` (absolute, or a URL's directory)."""
    if is_url(job_file):
        return job_file.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(os.path.join(cwd, job_file.removeprefix("file://"))))


def base_dir(tree: dict, job_file: str, cwd: str) -> str:
    """``base_dir`` of the job (absolute or a URL): the job file's directory, or its ``base_dir`` key."""
    home = job_dir(job_file, cwd)
    given = tree.get(BASE_DIR_KEY)
    if not isinstance(given, str) or not given.strip():
        return home
    return _join(home, given.strip())


def resolve_inputs(tree: dict, job_file: str, cwd: str, exists: Callable[[str], bool] = os.path.exists) -> dict:
    """A copy of the job ``tree`` whose relative input paths are absolute (see the module docstring), with
    ``base_dir`` set to the directory they were resolved against."""
    base = base_dir(tree, job_file, cwd)
    out = _copy(tree)
    for key in INPUT_KEYS + TEMPLATE_KEYS:
        template = key in TEMPLATE_KEYS
        for node, leaf in _slots(out, key.split(".")):
            value = node.get(leaf)
            if isinstance(value, str) and not (template and _JINJA.search(value)):
                node[leaf] = resolve_path(value, base, cwd, exists)
    out[BASE_DIR_KEY] = base
    return out


def resolve_path(value: str, base: str, cwd: str, exists: Callable[[str], bool] = os.path.exists) -> str:
    """``value`` against ``base``; from ``cwd`` when only there it exists; URLs and absolute paths unchanged."""
    path = value.strip().removeprefix("file://")
    if not path or is_url(value.strip()) or os.path.isabs(path):
        return value
    candidate = _join(base, path)
    from_cwd = os.path.normpath(os.path.join(cwd, path))
    if is_url(base):
        return from_cwd if exists(from_cwd) else candidate
    if exists(candidate) or not exists(from_cwd):
        return candidate  # a missing file is reported where it was looked for first
    return from_cwd


def _join(base: str, path: str) -> str:
    if is_url(path) or os.path.isabs(path):
        return path
    if is_url(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(base, path))


def _slots(node: Any, parts: list[str]):
    """``(parent dict, key)`` for every place ``parts`` names in ``node`` (``*`` walks a list)."""
    head, rest = parts[0], parts[1:]
    if head == "*":
        for item in node if isinstance(node, list) else []:
            yield from _slots(item, rest)
    elif isinstance(node, dict) and not rest:
        if head in node:
            yield node, head
    elif isinstance(node, dict) and node.get(head) is not None:
        yield from _slots(node[head], rest)


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node
