"""fsspec helpers: every path in a job is a URL (local, s3://, gs://, memory://, ...).

Writes that a crash can cut short go through :func:`atomic_write` (a temp name beside the target, fsynced on
local disks, then renamed: readers see the old file or the new one, never half of one); listings of what
other processes write go through :func:`fresh` (no cached listing); remote models are materialised on a node
by :func:`local_dir` (one download per content version and node, under a file lock)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from contextlib import contextmanager, suppress

import fsspec
from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

logger = logging.getLogger(__name__)

TMP_PREFIX = "_tmp-"  # names of unfinished writes; readers skip them
STAMP_KEYS = ("mtime", "LastModified", "ETag", "updated", "generation", "created")  # what changes on a rewrite


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


def fresh(url: str):
    """``(fs, path)`` of ``url`` with every listing the filesystem cached at or under ``path`` dropped.

    fsspec keeps one filesystem object per process and some (s3fs, gcsfs) cache directory listings in it
    without expiry, so a reused worker would list what it saw earlier, not what other processes wrote
    since. Use this before listing anything another process writes."""
    fs, path = fsspec.core.url_to_fs(url)
    invalidate_listings(fs, path)
    return fs, path


def invalidate_listings(fs, path: str) -> None:
    """Drop ``fs``'s cached listings of ``path``, its parents (``fs.invalidate_cache``) and everything under it."""
    fs.invalidate_cache(path)
    cache = getattr(fs, "dircache", None)  # fsspec's DirCache: implementations that cache listings keep them here
    if cache:
        root = path.rstrip("/")
        for key in [k for k in list(cache) if k == root or str(k).startswith(root + "/")]:
            with suppress(KeyError):
                del cache[key]


@contextmanager
def atomic_write(url: str, mode: str = "wb", fs=None, **open_kwargs):
    """Open ``url`` for writing so that a crash or an exception leaves no partial file under its name::

        with atomic_write("s3://b/run/corpus.jsonl", "w", encoding="utf-8") as f:
            f.write(text)

    The data goes to ``_tmp-<uuid>-<name>`` beside the target; on success a local file is fsynced, renamed
    over the target (``os.replace``) and its directory fsynced, and a remote one is moved into place (an
    object store's upload is atomic and its copy is server-side). On an exception the temp file is removed.
    Parent directories are created. ``fs``: the filesystem ``url`` is a path of (default: the URL's own).
    ``open_kwargs`` go to ``fs.open`` (``encoding``, ``compression``; ``compression="infer"`` infers from
    the target's name)."""
    if "w" not in mode:
        raise ValueError(f"atomic_write opens for writing ('w' modes), not {mode!r}")
    fs, path = (fs, url) if fs is not None else fsspec.core.url_to_fs(url)
    parent, name = posixpath.split(path)
    if open_kwargs.get("compression") == "infer":
        open_kwargs["compression"] = infer_compression(name)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        with fs.open(tmp, mode, **open_kwargs) as f:
            yield f
        if isinstance(fs, LocalFileSystem):
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(parent or ".")
        else:
            fs.mv(tmp, path)
    except BaseException:
        with suppress(Exception):
            fs.rm(tmp)
        raise


def _fsync(path: str) -> None:
    """Flush a local file's (or directory's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a directory on a file system that cannot fsync one
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def write_text(url: str, text: str) -> None:
    with atomic_write(url, "w") as f:
        f.write(text)


def signature(url: str) -> tuple[tuple[str, int, str], ...]:
    """``(path, size, stamp)`` of every file under ``url`` (or of the file ``url``), sorted, listed fresh;
    ``stamp`` is what the storage changes on a rewrite (mtime, LastModified and ETag, ...). Empty when
    nothing is there."""
    fs, path = fresh(url)
    if not fs.exists(path):
        return ()
    files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    return tuple(sorted((f, int(info.get("size") or 0), _stamp(info)) for f, info in files.items()))


def _stamp(info: dict) -> str:
    return " ".join(str(info[k]) for k in STAMP_KEYS if info.get(k) not in (None, ""))


def default_cache_root() -> str:
    return os.path.join(tempfile.gettempdir(), "ray-distill-cache")


def local_dir(url: str, cache_root: str | None = None) -> str:
    """A local directory holding the contents of the directory ``url``: the path itself when local, else a
    node-local copy under ``cache_root`` (default: ``<tmp>/ray-distill-cache``).

    The copy is keyed by content: the URL and the :func:`signature` of its files (names, sizes, mtimes or
    ETags), so a model rewritten at the same URL (a retrained student) is downloaded again, never served
    stale. It is filled under a file lock, into a temp directory renamed into place when complete, so the
    actors of one node download it once and all see a whole directory. Older copies of the same URL (and
    temp directories of a crashed fill) are removed when a newer one lands."""
    if is_local(url):
        return absolute(url)
    files = signature(url)
    if not files:
        raise FileNotFoundError(f"{url}: no files to copy")
    home = os.path.join(cache_root or default_cache_root(), hashlib.sha256(url.encode()).hexdigest()[:16])
    version = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    target = os.path.join(home, version)
    if os.path.isdir(target):  # renamed into place only when complete
        return target
    os.makedirs(home, exist_ok=True)
    with FileLock(home + ".lock"):
        if not os.path.isdir(target):
            _fill(url, files, home, target)
    return target


def _fill(url: str, files: tuple, home: str, target: str) -> None:
    """Download ``url`` into ``home/_tmp-*``, check every file's size, rename it to ``target`` and remove
    the other entries of ``home`` (older versions, crashed fills). The caller holds ``home``'s lock."""
    fs, path = fsspec.core.url_to_fs(url)
    tmp = os.path.join(home, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    logger.info("copying %s to the node-local cache %s", url, target)
    try:
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)  # tmp does not exist: the contents land in it
        root = path.rstrip("/")
        for name, size, _ in files:
            local = os.path.join(tmp, posixpath.relpath(name, root))
            if not os.path.isfile(local) or os.path.getsize(local) != size:
                raise OSError(f"{url}: {posixpath.relpath(name, root)} copied incompletely to the node-local cache")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for other in os.listdir(home):
        if other != os.path.basename(target):
            shutil.rmtree(os.path.join(home, other), ignore_errors=True)


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
