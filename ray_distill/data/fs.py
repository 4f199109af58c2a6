"""fsspec helpers: every path in a job is a URL (local, s3://, gs://, memory://, ...)."""

from __future__ import annotations

import hashlib
import os
import tempfile

import fsspec


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts]])


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def absolute(url: str) -> str:
    """Local paths become absolute (Ray workers do not share the driver's cwd); URLs are kept."""
    return os.path.abspath(url.removeprefix("file://")) if is_local(url) else url


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def write_text(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)


def local_dir(url: str) -> str:
    """A local directory holding the contents of ``url`` (downloaded once into a cache if remote)."""
    if is_local(url):
        return absolute(url)
    cache = os.path.join(tempfile.gettempdir(), "ray-distill-cache", hashlib.sha1(url.encode()).hexdigest()[:16])
    if not os.path.exists(os.path.join(cache, ".complete")):
        fs, path = fsspec.core.url_to_fs(url)
        fs.get(path.rstrip("/") + "/", cache, recursive=True)
        open(os.path.join(cache, ".complete"), "w").close()
    return cache


def upload_dir(local: str, url: str) -> None:
    """Copy a local directory to ``url`` (a no-op when it is the same local path)."""
    if is_local(url) and absolute(url) == os.path.abspath(local):
        return
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
    fs.put(local.rstrip("/") + "/", path, recursive=True)
