"""The one place credentials are cut out of URIs before they are printed, logged or sent to MLflow.

    redact("https://user:secret@host/x?token=abc&page=2")   # 'https://***@host/x?token=***&page=2'
    redact_text("read s3://b/k?X-Amz-Signature=f00 failed")  # every URI inside a message
    redact_params({"questions.path": "https://h/q.jsonl?sig=s"})  # MLflow params, values only

Hidden: the user-info part of any ``scheme://user[:password]@host`` (``postgresql://u:p@db``,
``https://token@host``), and the values of query parameters whose names mean a credential
(:data:`SECRET_PARAMS`: ``token``, ``sig``, ``X-Amz-Signature``, ``X-Goog-Signature``, ``api_key``,
``password``..., compared case-insensitively, also as a ``*_token``/``*-key`` suffix). Everything else
stays, so a redacted URI still says which server, bucket and file it names.

Secret *values* are hidden too, wherever they appear in a text: the value of every environment
variable whose name looks like a secret's (:func:`is_secret_name`: ``HF_TOKEN``, ``OPENAI_API_KEY``,
``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD``, ``GOOGLE_APPLICATION_CREDENTIALS``...) and every value
handed to :func:`register_secret` (an engine's API key, whatever the name of its variable), from
:data:`MIN_SECRET_LEN` characters on. The driver passes every worker log line Ray forwards to its console
through the same function (:func:`redact_log_batch`, installed by ``ray_distill.runtime``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Query parameter names (lower case) whose value is a credential: signed URLs (S3, GCS, Azure SAS),
# tokens and keys. A name ending in one of SECRET_SUFFIXES counts too (access_token, x-api-key).
SECRET_PARAMS = frozenset({
    "token", "access_token", "refresh_token", "id_token", "auth", "authorization", "password", "passwd", "pwd",
    "secret", "client_secret", "key", "api_key", "apikey", "api-key", "sig", "signature", "sas",
    "x-amz-signature", "x-amz-security-token", "x-amz-credential", "x-goog-signature", "x-goog-credential",
    "awsaccesskeyid", "googleaccessid",
})
SECRET_SUFFIXES = ("token", "secret", "password", "signature", "_key", "-key", "apikey")

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s?#]*)@")
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s\"']*)")


# Words of an environment variable name that make its value a secret (the name split at every character that
# is not a letter or digit: HF_TOKEN, OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY; TOKENIZERS_PARALLELISM is not).
SECRET_NAME_WORDS = frozenset({
    "KEY", "KEYS", "APIKEY", "TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWORDS", "PASSWD", "PASSPHRASE",
    "CREDENTIAL", "CREDENTIALS", "CREDS", "PAT", "SAS",
})
# A last word that makes the variable hold where a secret is, not the secret (RAY_AUTH_TOKEN_PATH, KEY_FILE).
NOT_SECRET_LAST_WORDS = frozenset({"PATH", "FILE", "DIR", "MODE"})
# Shorter values are not masked: "1", "true" or "us-east-1" would blank out unrelated text.
MIN_SECRET_LEN = 8

_registered: set[str] = set()
_registered_lock = threading.Lock()


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether an environment variable called ``name`` holds a secret, by the words of its name
    (:data:`SECRET_NAME_WORDS`, also glued on as in ``HFTOKEN``): ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
    ``MLFLOW_TRACKING_PASSWORD`` yes; ``TOKENIZERS_PARALLELISM``, ``RAY_AUTH_TOKEN_PATH``, ``HF_HOME`` no."""
    words = [w for w in re.split(r"[^A-Z0-9]+", name.upper()) if w]
    if not words or words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    return any(w in SECRET_NAME_WORDS or w.endswith(("TOKEN", "APIKEY", "SECRET", "PASSWORD", "PASSWD"))
               or "CREDENTIAL" in w for w in words)


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every text this process redacts from now on (an API key read from a variable whose
    name need not look secret). Values shorter than :data:`MIN_SECRET_LEN` are ignored."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _registered_lock:
            _registered.add(value)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values :func:`redact_text` masks: those of the secret-looking variables of ``environ`` (default: this
    process's environment, read at each call) and the registered ones, longest first."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if len(v) >= MIN_SECRET_LEN and is_secret_name(k)}
    found.update(_registered)
    return sorted(found, key=len, reverse=True)


def _mask_values(text: str, values: Iterable[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def is_secret_param(name: str) -> bool:
    name = name.lower()
    return name in SECRET_PARAMS or name.endswith(SECRET_SUFFIXES)


def redact(uri: str) -> str:
    """``uri`` with its user-info and credential query values replaced by ``***``."""
    return redact_text(uri)


def redact_text(text: str) -> str:
    """``text`` (a log line, an error, a URI) with the credentials of every URI in it and every secret value
    (:func:`secret_values`) masked."""
    text = _mask_values(text, secret_values())
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@" if m["userinfo"] else m[0], text)
    if "=" in text and ("?" in text or "&" in text or ";" in text):
        text = _QUERY_PARAM.sub(
            lambda m: f"{m['lead']}{m['name']}={MASK}" if m["value"] and is_secret_param(m["name"]) else m[0], text)
    return text


def redact_value(value: Any) -> Any:
    """Strings redacted; lists, tuples and dicts redacted inside; anything else unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """MLflow params (or any flat config dump) with every value redacted."""
    return {k: redact_value(v) for k, v in params.items()}


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in every record it passes (message and arguments
    rendered first), so a URI or a key logged anywhere in the package, Ray or MLflow leaves no secret in
    the console or a log file. Installed on the CLI's handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_log_batch(batch: dict) -> dict:
    """A batch of worker log lines as Ray forwards it to the driver (``{"lines": [...], "pid": ..., ...}``)
    with every line redacted (the other fields stay)."""
    lines = batch.get("lines")
    if not lines:
        return batch
    return {**batch, "lines": [redact_text(line) if isinstance(line, str) else line for line in lines]}


# Ray Train's PlacementGroupCleaner (one detached actor per training run) asks the State API every second
# whether the run's controller still lives. The State API is served by the dashboard, which the local
# cluster a job starts does not run, so it warns on every check: ~280 lines in a quickstart's log. Where Ray
# forwards worker lines to the driver (the console's log file, runtime.redact_forwarded_logs) they are dropped.
# (A ``worker_process_setup_hook`` silenced them before; but a local cluster's job has no runtime_env at all,
# see runtime.init_ray.)
PLACEMENT_GROUP_CLEANER = "PlacementGroupCleaner"
CLEANER_NOISE = "Failed to query Ray Train Controller actor state"


def drop_cleaner_noise(batch: dict) -> dict:
    """A batch of forwarded worker lines without the PlacementGroupCleaner's State API warnings (see above)."""
    if batch.get("actor_name") != PLACEMENT_GROUP_CLEANER:
        return batch
    return {**batch, "lines": [line for line in batch.get("lines", []) if CLEANER_NOISE not in line]}
