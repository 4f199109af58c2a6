"""The failures a user can cause, one family each, and the exit code the CLI ends with for it.

    raise ConfigError("jobs/q.yaml: train.epoch: unknown key")   # str(err) is the one line the user reads
    err, code = family(exc)                                        # the user's error inside Ray's wrappers, 3

A leaf module: it imports nothing from ray_distill, and config, environment, data, curation and the CLI
import their errors from here. Each family keeps the builtin base its callers already catch (a config error
is a ``ValueError``, an unreachable cluster a ``ConnectionError``, a model that does not load an ``OSError``).

Exit codes (README, "The CLI"): 1 an unexpected error (a bug: the traceback is in the log file), 2 config,
3 data, 4 a missing environment variable, 5 no code sandbox, 6 cluster or storage unreachable, 7 a model that
does not load, 8 budget, 9 out of memory, 10 the submission itself, 11 a remote engine refused the key,
130 interrupted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class ConfigError(ValueError):
    """A job file or an override is invalid; ``str(err)`` is a one-line message for the user."""


class DataError(ValueError):
    """A data file cannot be read at all; ``str(err)`` is a one-line message naming the file."""


class RowError(ValueError):
    """One row is invalid; ``str(err)`` is its reject reason (rows are rejected, never a CLI failure)."""


class FieldError(DataError):
    """A ``fields`` mapping names a column the file does not have; ``field`` is the target (``question``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # crosses process boundaries (Ray) with its field
        return type(self), (self.field, str(self))


class MissingVariable(ValueError):
    """An environment variable the job needs (an API key named by ``api_key_env``, a token) is not set."""


class SandboxUnavailable(RuntimeError):
    """No working sandbox on this machine; ``str(err)`` says what was tried and how to fix it."""


class Unreachable(ConnectionError):
    """The Ray cluster or the storage cannot be reached (or written); ``str(err)`` names which and where."""


class ModelLoadError(OSError):
    """A model (hub id, path or URL) does not load; ``str(err)`` names the model and why."""


class BudgetExceeded(RuntimeError):
    """Spending would pass a configured teacher-token cap; raised before the tokens are spent."""


class OutOfMemory(MemoryError):
    """A stage ran out of (GPU or host) memory; ``str(err)`` names the stage and the knobs that lower it."""


class KeyRefused(PermissionError):
    """A remote engine refused the job's credentials (HTTP 401/403): nothing it answers will be a sample, so
    the job stops at the first refusal; ``str(err)`` names the engine, the status and the key's variable."""


class EngineFailing(RuntimeError):
    """Most of a remote engine's first requests failed even after their retries (a wrong model name, a URL that
    is not an OpenAI endpoint, a server down): the job stops before it sends more; ``str(err)`` names the engine,
    the failure count and the commonest error."""


class SubmitError(RuntimeError):
    """The submission itself is wrong (missing secret variable, job file outside the working dir, ...)."""


UNEXPECTED = 1
INTERRUPTED = 130

# family -> (exit code, label of the one line). Order matters: the first base that matches wins.
EXIT_CODES: dict[type[BaseException], tuple[int, str]] = {
    ConfigError: (2, "config error"),
    DataError: (3, "data error"),
    MissingVariable: (4, "missing variable"),
    SandboxUnavailable: (5, "sandbox unavailable"),
    Unreachable: (6, "unreachable"),
    ModelLoadError: (7, "model does not load"),
    BudgetExceeded: (8, "over budget"),
    OutOfMemory: (9, "out of memory"),
    SubmitError: (10, "submit error"),
    KeyRefused: (11, "key refused"),
    EngineFailing: (12, "engine failing"),
}

# Out-of-memory errors of other libraries, recognised by class name so that this module imports neither:
# torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError) and ray.exceptions.OutOfMemoryError.
_FOREIGN_OOM = ("OutOfMemoryError",)
_BY_NAME = {cls.__name__: cls for cls in EXIT_CODES}
# A family's "Name: message" inside a text-only wrapper (Ray's ActorDiedError keeps its cause as text).
_IN_TEXT = re.compile(r"\b(" + "|".join(_BY_NAME) + r"): ([^\n]+)")


def exit_code(err: BaseException) -> int:
    """The exit code of ``err``'s family (see :data:`EXIT_CODES`); 1 when it is no user error."""
    return family(err)[1]


def family(err: BaseException) -> tuple[BaseException, int]:
    """``(the user's error, its exit code)``: the first error of a known family in ``err``'s causes, looked
    for through Ray's wrappers (a ``RayTaskError``'s ``cause``, an ``ActorDiedError``'s message, Ray Train's
    ``worker_failures``, Ray Data's ``raise UserCodeException(...) from err``) and ``raise ... from``;
    ``(err, 1)`` when there is none."""
    if isinstance(err, KeyboardInterrupt):
        return err, INTERRUPTED
    for e in causes(err):
        code = _own_code(e)
        if code is not None:
            return e, code
    for e in causes(err):  # a wrapper that kept only the text of its cause: its traceback's last such line
        found = _IN_TEXT.findall(str(e))
        if found:
            name, message = found[-1]
            rebuilt = _BY_NAME[name](message.strip())
            return rebuilt, EXIT_CODES[type(rebuilt)][0]
    return err, UNEXPECTED


def label(err: BaseException) -> str:
    """The one line's prefix for ``err``'s family: ``config error``, ``out of memory``, ... or ``error``."""
    for cls, (_, name) in EXIT_CODES.items():
        if isinstance(err, cls):
            return name
    return "out of memory" if _is_foreign_oom(err) else "error"


def causes(err: BaseException, _seen: set[int] | None = None) -> Iterator[BaseException]:
    """``err`` and every error it wraps, each once, outer before inner, except that a Ray wrapper comes after
    its cause (``RayTaskError.as_instanceof_cause`` makes the wrapper an instance of its cause's class, but its
    text is the whole remote traceback)."""
    seen = set() if _seen is None else _seen
    if id(err) in seen:
        return
    seen.add(id(err))
    wrapper = isinstance(getattr(err, "cause", None), BaseException)
    inner = [getattr(err, "cause", None), err.__cause__]  # not __context__: a bug while handling a user error
    failures = getattr(err, "worker_failures", None)  # Ray Train: {rank: error}
    if isinstance(failures, dict):
        inner += list(failures.values())
    if not wrapper:
        yield err
    for e in inner:
        if isinstance(e, BaseException):
            yield from causes(e, seen)
    if wrapper:
        yield err


def _own_code(e: BaseException) -> int | None:
    for cls, (code, _) in EXIT_CODES.items():
        if isinstance(e, cls) and not isinstance(getattr(e, "cause", None), BaseException):
            return code
    if _is_foreign_oom(e):
        return EXIT_CODES[OutOfMemory][0]
    return None


def _is_foreign_oom(e: BaseException) -> bool:
    return any(c.__name__ in _FOREIGN_OOM for c in type(e).__mro__) or isinstance(e, MemoryError)
