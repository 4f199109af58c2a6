"""What ``ray-distill validate`` checks before a cluster is touched, beyond the config schema.

    problems = preflight(cfg)
    [p.line() for p in problems]   # ['error: questions.path: /data/q.jsonl: file not found', 'warning: ...']

- every question file (``questions.path``, ``dev.suite.path``, ``eval.suites[i].path``) exists and its
  first bytes can be read, through fsspec as the job would (a missing file is an error; so is an URL
  whose protocol fsspec does not know or whose package is not installed);
- the protocol of ``storage`` is known to fsspec and its implementation is importable (a missing s3fs or
  gcsfs names the package extra that installs it: ``pip install 'ray-distill[s3]'``, ``[gcs]``);
- ``selection.keep_per_question`` (P) is at most ``selection.samples_per_question`` (M): a larger P is
  allowed but warned about, with what it means.

Before a job starts its cluster, the CLI also checks that ``storage`` can be written (:func:`check_writable`)
and that a ``HOST:PORT`` Ray address answers (:func:`check_ray_address`).

A job run on the cluster reads its files there: a path that only exists on the cluster's nodes is an
error here, which is why ``validate`` reports instead of ``submit`` refusing.
"""

from __future__ import annotations

import re
import socket
import uuid
from dataclasses import dataclass

import fsspec

from ray_distill.config import JobConfig
from ray_distill.redact import redact

ERROR, WARNING = "error", "warning"
# fsspec protocol -> the package extra that installs its implementation (pyproject.toml)
PROTOCOL_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


@dataclass(frozen=True)
class Problem:
    level: str  # ERROR or WARNING
    key: str  # the config key it is about
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


def preflight(cfg: JobConfig) -> list[Problem]:
    """Every problem found, errors and warnings, in config order."""
    problems = [p for key, path in question_files(cfg) if (p := check_readable(key, path))]
    if p := check_protocol("storage", cfg.storage):
        problems.append(p)
    if p := check_p_le_m(cfg):
        problems.append(p)
    return problems


def question_files(cfg: JobConfig) -> list[tuple[str, str]]:
    """(config key, path) of every question file the job reads."""
    files = [("questions.path", cfg.questions.path)]
    if cfg.dev.suite is not None:
        files.append(("dev.suite.path", cfg.dev.suite.path))
    files += [(f"eval.suites[{i}].path", s.path) for i, s in enumerate(cfg.eval.suites)]
    return [(k, p) for k, p in files if p is not None]


def check_protocol(key: str, url: str) -> Problem | None:
    """An error when fsspec does not know ``url``'s protocol or cannot import its implementation."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return Problem(ERROR, key, f"{redact(url)}: storage protocol {protocol!r} is not known to fsspec")
    except ImportError as err:
        extra = PROTOCOL_EXTRAS.get(protocol)
        fix = f"; pip install 'ray-distill[{extra}]'" if extra else ""
        return Problem(ERROR, key, f"{redact(url)}: protocol {protocol!r} needs a package that is not installed "
                                   f"({_first_line(err)}){fix}")
    return None


def check_ray_address(address: str, timeout_s: float = 5.0) -> str | None:
    """Why the Ray cluster at ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) cannot be reached (a TCP connect
    within ``timeout_s``), or None. ``ray.init`` itself retries an address where nothing listens for minutes;
    other forms (``auto``) are left to it."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if not match:
        return None
    try:
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout_s):
            return None
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"


def check_writable(key: str, url: str) -> Problem | None:
    """An error when a file cannot be written and removed under ``url`` (created if missing): the storage a
    job is about to write to, checked before a cluster starts (missing credentials, no such bucket, a read-only
    or unreachable mount, an unknown host)."""
    if p := check_protocol(key, url):
        return p
    try:
        fs, root = fsspec.core.url_to_fs(url)
        fs.makedirs(root, exist_ok=True)
        probe = f"{root.rstrip('/')}/.ray-distill-write-check-{uuid.uuid4().hex[:8]}"
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as err:  # credentials, network, permissions: whatever the job would hit first
        return Problem(ERROR, key, f"{redact(url)}: cannot write there ({type(err).__name__}: {_first_line(err)})")
    return None


def check_readable(key: str, path: str) -> Problem | None:
    """An error when ``path`` cannot be opened and read (missing, a directory, unknown protocol, denied)."""
    if p := check_protocol(key, path):
        return p
    shown = redact(path)
    try:
        fs, fs_path = fsspec.core.url_to_fs(path)
        if not fs.exists(fs_path):
            return Problem(ERROR, key, f"{shown}: file not found")
        if fs.isdir(fs_path):
            return Problem(ERROR, key, f"{shown}: is a directory, expected a jsonl or parquet file")
        with fs.open(fs_path, "rb") as f:
            f.read(1)
    except Exception as err:  # permissions, credentials, network: whatever the job would hit first
        return Problem(ERROR, key, f"{shown}: cannot read ({type(err).__name__}: {_first_line(err)})")
    return None


def check_p_le_m(cfg: JobConfig) -> Problem | None:
    """A warning when P > M: selection then keeps every distinct correct sample (at most M per question)."""
    s = cfg.selection
    p, m = s.keep_per_question, s.samples_per_question
    if p <= m:
        return None
    return Problem(WARNING, "selection.keep_per_question",
                   f"P={p} > M={m} (selection.samples_per_question): a question has at most {m} teacher samples, so "
                   f"selection keeps all of its correct ones and farthest-P selects nothing; the corpus gets at most "
                   f"{m} per question, not {p}. Raise M to at least P, or lower P.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
