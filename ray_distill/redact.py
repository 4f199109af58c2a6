"""The one place credentials are cut out of URIs before they are printed, logged or sent to MLflow.

    redact("https://user:secret@host/x?token=abc&page=2")   # 'https://***@host/x?token=***&page=2'
    redact_text("read s3://b/k?X-Amz-Signature=f00 failed")  # every URI inside a message
    redact_params({"questions.path": "https://h/q.jsonl?sig=s"})  # MLflow params, values only

Hidden: the user-info part of any ``scheme://user[:password]@host`` (``postgresql://u:p@db``,
``https://token@host``), and the values of query parameters whose names mean a credential
(:data:`SECRET_PARAMS`: ``token``, ``sig``, ``X-Amz-Signature``, ``X-Goog-Signature``, ``api_key``,
``password``..., compared case-insensitively, also as a ``*_token``/``*-key`` suffix). Everything else
stays, so a redacted URI still says which server, bucket and file it names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
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


def is_secret_param(name: str) -> bool:
    name = name.lower()
    return name in SECRET_PARAMS or name.endswith(SECRET_SUFFIXES)


def redact(uri: str) -> str:
    """``uri`` with its user-info and credential query values replaced by ``***``."""
    return redact_text(uri)


def redact_text(text: str) -> str:
    """``text`` (a log line, an error, a URI) with the credentials of every URI in it masked."""
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
    rendered first), so a URI logged anywhere in the package, Ray or MLflow leaves no secret in the
    console or a log file. Installed on the CLI's handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
