from __future__ import annotations

import os
from pathlib import Path

import pytest

from medvideocap.dataset.schema import DataError
from medvideocap.handles import FileHandles, PerProcessCache, ShortReadError


def test_file_handles_pread_reads_ranges_and_names_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "shard.tar"
    path.write_bytes(bytes(range(100)))
    files = FileHandles()
    assert files.pread(path, 10, 5) == bytes([10, 11, 12, 13, 14])
    with pytest.raises(ShortReadError, match=r"shard\.tar: wanted 20 bytes at offset 90, got 10"):
        files.pread(path, 90, 20)
    assert issubclass(ShortReadError, DataError)  # a loader under on_error="skip" skips it


def test_cache_evicts_least_recently_used_and_closes_it() -> None:
    closed: list[int] = []
    cache = PerProcessCache(maxsize=2, on_evict=closed.append)
    for key in (1, 2, 1, 3):
        cache.get(key, lambda k=key: k * 10)
    assert closed == [20] and len(cache) == 2


def test_a_forked_child_starts_empty_and_never_closes_the_parents_handles(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    files = FileHandles()
    assert files.pread(path, 0, 3) == b"abc"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: sees an empty cache, opens its own descriptor
        os.close(read)
        ok = len(files) == 0 and files.pread(path, 1, 2) == b"bc"
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert files.pread(path, 0, 1) == b"a"  # the parent's descriptor still works
