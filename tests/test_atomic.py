"""Atomic writes leave either the old file or the new one, never a stray temporary."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_disk import tmpfs
from fixtures_s3 import S3StandIn

from medvideocap.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_parquet
from medvideocap.disk import ResourceError
from medvideocap.loading.sampler import BucketBatchSampler


def test_writes_replace_the_target_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_bytes(target, b"old")
    atomic_write_json(target, {"b": 1, "a": "é"}, sort_keys=True, ensure_ascii=False)
    assert target.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    atomic_write_parquet(tmp_path / "t.parquet", pa.table({"x": [1, 2]}))
    assert pq.read_table(tmp_path / "t.parquet").column("x").to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "sub", "t.parquet"]
    assert json.loads(target.read_text(encoding="utf-8"))["b"] == 1


def test_atomic_path_keeps_the_suffix_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "chart.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".chart.png.tmp-")
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_bucket_sampler_pads_every_rank_even_with_fewer_batches_than_ranks() -> None:
    per_rank = [list(BucketBatchSampler([(1,)] * 2, 2, rank=r, world_size=4)) for r in range(4)]
    assert [len(b) for b in per_rank] == [1, 1, 1, 1]
    assert [
        len(b)
        for b in (
            list(BucketBatchSampler([(1,)] * 2, 2, drop_last=True, rank=r, world_size=4)) for r in range(4)
        )
    ] == [0] * 4


def test_a_write_the_disk_refuses_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The errno is injected at the lowest write call: half the bytes land, then the disk is full."""
    target = tmp_path / "meta" / "info.json"
    atomic_write_bytes(target, b"old")
    real_write = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(ResourceError) as raised:
        atomic_write_bytes(target, b"x" * 5000)
    assert str(raised.value).startswith(f"{target}: no space left on the device (5.0 kB needed, ")
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["info.json"]


def test_a_full_or_read_only_file_system_is_one_error_naming_the_target(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with tmpfs(disk, 64 * 1024):
        atomic_write_bytes(disk / "kept.bin", b"old")
        with pytest.raises(ResourceError, match=f"^{re.escape(str(disk / 'big.bin'))}: no space left on the"):
            atomic_write_bytes(disk / "big.bin", b"x" * 200_000)
        assert sorted(p.name for p in disk.iterdir()) == ["kept.bin"]
    with (
        tmpfs(disk, 64 * 1024, read_only=True),
        pytest.raises(ResourceError, match=f"^{re.escape(str(disk / 'a'))}: the file system is read-only"),
    ):
        atomic_write_json(disk / "a" / "b.json", {"a": 1})  # the folder it would make is what the OS names


def test_an_object_store_write_publishes_whole_through_a_temporary_key_and_cleans_up_on_failure(
    s3: S3StandIn,
) -> None:
    """On S3 (moto's server): the old object or the new one, never half of one and no stray key."""
    import fnmatch
    import uuid

    from medvideocap.atomic import TEMP_GLOB, atomic_output, atomic_write_to, temp_url
    from medvideocap.locations import resolve

    bucket = f"atomic-{uuid.uuid4().hex[:12]}"
    location = resolve(f"s3://{bucket}/out", storage_options=s3.storage_options)
    location.fs.mkdir(bucket)
    target = location.path("meta/a.json")
    assert fnmatch.fnmatch(temp_url(target).rpartition("/")[2], TEMP_GLOB)
    atomic_write_to(location, target, b"old")

    def listed() -> list[str]:
        location.fs.invalidate_cache()
        return sorted(location.fs.find(f"{bucket}/out"))

    with pytest.raises(RuntimeError), atomic_output(location, target) as staged:
        assert staged.parent.is_dir() and staged.name == "a.json"  # a local file for any writer
        staged.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert location.read_bytes(target) == b"old" and listed() == [f"{bucket}/out/meta/a.json"]
    with atomic_output(location, target) as staged:
        staged.write_bytes(b"new")
    assert location.read_bytes(target) == b"new" and listed() == [f"{bucket}/out/meta/a.json"]
    assert not staged.exists()  # the local staging copy goes too
