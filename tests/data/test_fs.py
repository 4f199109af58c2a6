"""fsspec helpers: atomic writes, listings that are never stale, the node-local model cache."""

from __future__ import annotations

import multiprocessing
import os
import time

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from ray_distill.data import fs as F


class CachingMemoryFileSystem(MemoryFileSystem):
    """A memory filesystem that keeps directory listings across calls, as s3fs and gcsfs do (without expiry):
    ``ls`` and ``find`` answer from ``dircache`` once a directory was listed. Instances made with
    ``skip_instance_cache=True`` share the files (memory://'s) but not the listings (another process's view)."""

    protocol = "cachedmem"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("cachedmem://"))

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if path not in self.dircache:
            self.dircache[path] = super().ls(path, detail=True)
        entries = self.dircache[path]
        return entries if detail else [e["name"] for e in entries]

    find = AbstractFileSystem.find  # walks with ls, so through the listing cache

    def invalidate_cache(self, path=None):
        """As s3fs does: the path and its parents, not what lies under it."""
        if path is None:
            self.dircache.clear()
            return
        path = self._strip_protocol(path)
        while path:
            self.dircache.pop(path, None)
            path = self._parent(path) if "/" in path.strip("/") else ""
        self.dircache.pop("", None)


fsspec.register_implementation("cachedmem", CachingMemoryFileSystem, clobber=True)


class FarFileSystem(DirFileSystem):
    """A 'remote' store (not a LocalFileSystem, so local_dir copies from it) over the local folder
    ``$FAR_ROOT``; every download appends a line to ``$FAR_ROOT/../downloads.log`` (outside the store)
    and takes 0.5 s."""

    protocol = "far"

    def __init__(self, *args, **kwargs):
        super().__init__(path=os.environ["FAR_ROOT"], fs=LocalFileSystem())

    def get(self, rpath, lpath, recursive=False, **kwargs):
        with open(os.path.join(os.environ["FAR_ROOT"], "..", "downloads.log"), "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # a download in progress: the other process arrives meanwhile
        return super().get(rpath, lpath, recursive=recursive, **kwargs)


fsspec.register_implementation("far", FarFileSystem, clobber=True)


@pytest.mark.parametrize("base", ["local", "memory"])
def test_atomic_write_leaves_the_old_file_or_nothing_when_cut_short(base, tmp_path):
    root = str(tmp_path) if base == "local" else f"memory://atomic-{tmp_path.name}"
    fs, _ = fsspec.core.url_to_fs(root)
    target = F.join(root, "sub", "corpus.jsonl")
    F.write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="cut short"):
        with F.atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("cut short")
    with pytest.raises(RuntimeError):
        with F.atomic_write(F.join(root, "sub", "new.parquet"), "wb") as f:
            f.write(b"PAR1 half")
            raise RuntimeError("cut short")
    assert fs.cat(target) == b"old\n"  # the reader sees the old file whole, and no temp file is left
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(F.join(root, "sub"), detail=False)) == ["corpus.jsonl"]
    with F.atomic_write(target, "w") as f:
        f.write("new\n")
    assert fs.cat(target) == b"new\n"


def test_atomic_write_fsyncs_the_local_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    with F.atomic_write(str(tmp_path / "d" / "part-1.parquet"), "wb") as f:
        f.write(b"data")
    assert len(synced) == 2 and os.path.basename(synced[0]).startswith("_tmp-") and synced[1] == str(tmp_path / "d")
    assert (tmp_path / "d" / "part-1.parquet").read_bytes() == b"data"


def test_fresh_drops_cached_listings_another_process_made_stale():
    url = f"cachedmem://listing-{os.getpid()}-{time.monotonic_ns()}"
    mine, _ = fsspec.core.url_to_fs(url)
    other = CachingMemoryFileSystem(skip_instance_cache=True)  # shares the files, not the listings
    mine.pipe_file(f"{url}/a/part-1", b"1")
    assert len(mine.find(url)) == 1
    other.pipe_file(f"{url}/a/part-2", b"2")
    other.pipe_file(f"{url}/b/part-3", b"3")
    assert len(mine.find(url)) == 1  # the storage caches listings: without fresh() this is what a reader sees
    fs, path = F.fresh(url)
    assert fs is mine and [p.rsplit("/", 2)[-2:] for p in fs.find(path)] == [["a", "part-1"], ["a", "part-2"],
                                                                              ["b", "part-3"]]


def _model(root, version: str) -> None:
    os.makedirs(root, exist_ok=True)
    for name, size in (("config.json", 100), ("model.safetensors", 200_000)):
        with open(os.path.join(root, name), "w") as f:
            f.write(version * size)


def _race(url: str, cache_root: str, barrier, results) -> None:
    barrier.wait()
    path = F.local_dir(url, cache_root=cache_root)
    files = {n: open(os.path.join(path, n)).read() for n in sorted(os.listdir(path))}  # what this actor loads
    results.put((path, {n: (len(t), set(t)) for n, t in files.items()}))


def test_local_dir_two_processes_racing_download_once_and_both_see_the_whole_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FAR_ROOT", str(tmp_path / "remote"))
    _model(tmp_path / "remote" / "student", "a")
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each, as two actors on one node
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=("far://student", str(tmp_path / "cache"), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    seen = [results.get(timeout=5) for _ in procs]
    assert (tmp_path / "downloads.log").read_text().count("\n") == 1  # one download for both
    assert seen[0][0] == seen[1][0]
    assert seen[0][1] == seen[1][1] == {"config.json": (100, {"a"}), "model.safetensors": (200_000, {"a"})}


def test_local_dir_fetches_a_model_rewritten_at_the_same_url_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FAR_ROOT", str(tmp_path / "remote"))
    cache = str(tmp_path / "cache")
    _model(tmp_path / "remote" / "student", "a")
    first = F.local_dir("far://student", cache_root=cache)
    assert F.local_dir("far://student", cache_root=cache) == first  # unchanged: served from the cache
    _model(tmp_path / "remote" / "student", "b")  # retrained: same names, same sizes, new bytes and mtimes
    later = time.time() + 5
    for name in os.listdir(tmp_path / "remote" / "student"):
        os.utime(tmp_path / "remote" / "student" / name, (later, later))
    second = F.local_dir("far://student", cache_root=cache)
    assert second != first and open(os.path.join(second, "config.json")).read() == "b" * 100
    assert not os.path.exists(first)  # the stale copy is gone, not left to fill the node's disk
    assert (tmp_path / "downloads.log").read_text().count("\n") == 2


def test_local_dir_of_a_local_path_is_the_path_and_of_nothing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FAR_ROOT", str(tmp_path / "remote"))
    os.makedirs(tmp_path / "remote")
    assert F.local_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="far://missing: no files"):
        F.local_dir("far://missing", cache_root=str(tmp_path / "cache"))
