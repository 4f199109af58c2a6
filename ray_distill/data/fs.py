"""fsspec helpers: every path in a job is a URL (local, s3://, gs://, memory://, ...)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager

import fsspec
from fsspec.implementations.local import LocalFileSystem


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts]])


def is_local(url: str) -> bool:
    return isinstance(fsspec.core.url_to_fs(url)[0], LocalFileSystem)


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


@contextmanager
def local_copy(url: str):
    """Yield a local directory holding the contents of ``url`` (a temp copy when remote)."""
    if is_local(url):
        yield fsspec.core.url_to_fs(url)[1]
        return
    fs, path = fsspec.core.url_to_fs(url)
    with tempfile.TemporaryDirectory(prefix="ray-distill-model-") as tmp:
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        yield tmp


def put_dir(local_dir: str, url: str) -> None:
    """Copy the contents of ``local_dir`` to the directory ``url`` (any fsspec URL)."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        shutil.copytree(local_dir, path, dirs_exist_ok=True)
        return
    fs.makedirs(path, exist_ok=True)
    fs.put(local_dir.rstrip("/") + "/", path, recursive=True)
