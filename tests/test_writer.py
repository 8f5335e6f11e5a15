from __future__ import annotations

import json
import tarfile
from pathlib import Path

import polars as pl
import pytest
from fixtures_hubnative import same_tree

from medvideocap.dataset.hubnative import HubNativeDataset, is_hub_native
from medvideocap.dataset.schema import Caption, Category, ClipRecord, InvalidRecordError
from medvideocap.dataset.writer import DatasetWriter, WriterError, parse_size


def _record(i: int, *, split: str | None = "train", group: str | None = None) -> ClipRecord:
    return ClipRecord(
        id=f"clip{i:03d}",
        group=group or f"video{i}",
        file_name=f"clip{i:03d}.mp4",
        split=split,
        duration=2.0,
        fps=8.0,
        width=64,
        height=48,
        category=Category.clinical_practice if i % 2 else Category.medical_teaching,
        captions=[
            Caption(name="detailed", text=f"A detailed caption of clip {i}.", style="detailed"),
            Caption(name="brief", text=f"Clip {i}.", style="brief"),
        ],
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Three different real tiny mp4s (different sizes, so offsets are not trivially aligned)."""
    from videos import make_video

    root = tmp_path_factory.mktemp("writer-videos")
    return [
        make_video(root / f"v{i}.mp4", seconds=1.0 + 0.5 * i, fps=8, source=src).read_bytes()
        for i, src in enumerate(("testsrc2", "testsrc", "smptebars"))
    ]


def _write(out: Path, videos: list[bytes], n: int, *, shard_bytes: int, close: bool = True) -> DatasetWriter:
    writer = DatasetWriter(out, shard_bytes=shard_bytes, card=False)
    for i in range(n):
        writer.write(_record(i), videos[i % len(videos)])
    if close:
        writer.close()
    return writer


def test_shards_close_at_target_size_and_only_finished_shards_carry_the_final_name(
    tmp_path: Path, videos: list[bytes]
) -> None:
    size = max(len(v) for v in videos)
    writer = _write(tmp_path, videos, 5, shard_bytes=2 * size + 6000, close=False)
    folder = tmp_path / "data" / "train"
    finished = sorted(p.name for p in folder.glob("shard-*.tar"))
    partial = sorted(p.name for p in folder.glob(".shard-*"))
    assert finished == ["shard-00000.tar", "shard-00001.tar"]
    assert partial == [".shard-00002.tar.partial"]
    with tarfile.open(folder / "shard-00000.tar") as tar:
        assert tar.getnames() == ["clip000.mp4", "clip000.json", "clip001.mp4", "clip001.json"]
    writer.close()
    assert sorted(p.name for p in folder.iterdir()) == [
        "shard-00000.tar",
        "shard-00001.tar",
        "shard-00002.tar",
    ]
    for shard in folder.iterdir():
        assert shard.stat().st_size <= 2 * size + 6000 + 10240  # target + tar end-of-archive padding


def test_parquet_rows_match_shard_samples_and_offsets_read_back_the_exact_bytes(
    tmp_path: Path, videos: list[bytes]
) -> None:
    _write(tmp_path, videos, 7, shard_bytes=15_000)
    table = pl.read_parquet(tmp_path / "metadata" / "train.parquet")
    samples = 0
    for shard in sorted((tmp_path / "data" / "train").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            samples += sum(1 for m in tar.getmembers() if m.name.endswith(".mp4"))
    assert table.height == samples == 7
    assert table["offset"].dtype == pl.Int64 and table["size"].dtype == pl.Int64
    for row in table.iter_rows(named=True):
        expected = videos[int(row["id"][4:]) % len(videos)]
        with open(tmp_path / row["shard"], "rb") as fh:
            fh.seek(row["offset"])
            assert fh.read(row["size"]) == expected
        with tarfile.open(tmp_path / row["shard"]) as tar:
            member = tar.getmember(f"{row['id']}.mp4")
            assert member.offset_data == row["offset"]
        assert row["caption_brief"] == f"Clip {int(row['id'][4:])}."
    ds = HubNativeDataset.open(tmp_path)
    assert ds.read_video("train", "clip004") == videos[4 % len(videos)]


def test_tar_headers_carry_no_time_or_owner_and_two_writes_are_byte_identical(
    tmp_path: Path, videos: list[bytes]
) -> None:
    _write(tmp_path / "a", videos, 4, shard_bytes=15_000)
    _write(tmp_path / "b", videos, 4, shard_bytes=15_000)
    assert same_tree(tmp_path / "a", tmp_path / "b")
    with tarfile.open(tmp_path / "a" / "data" / "train" / "shard-00000.tar") as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_json_member_is_the_validated_record_with_its_split(tmp_path: Path, videos: list[bytes]) -> None:
    writer = DatasetWriter(tmp_path, shard_bytes=10**6, split_fn=lambda r: "test", card=False)
    writer.write(_record(1, split=None), videos[0])
    writer.close()
    with tarfile.open(tmp_path / "data" / "test" / "shard-00000.tar") as tar:
        data = json.loads(tar.extractfile("clip001.json").read())  # type: ignore[union-attr]
    back = ClipRecord.from_json_dict(data)
    assert back.split == "test"
    assert back.model_copy(update={"split": None}) == _record(1, split=None)
    assert list(HubNativeDataset.open(tmp_path).records("test")) == [back]


def test_invalid_records_are_refused_before_anything_is_written(tmp_path: Path, videos: list[bytes]) -> None:
    writer = DatasetWriter(tmp_path, shard_bytes=10**6, card=False)
    unknown = _record(1).model_copy(update={"uploader": "x"})
    unknown.__pydantic_extra__ = {"uploader": "x"}
    with pytest.raises(WriterError, match=r"clip001: fields not in schema .*uploader"):
        writer.write(unknown, videos[0])
    broken = _record(2).model_copy(update={"duration": -1.0})  # model_copy skips validation
    with pytest.raises(InvalidRecordError, match=r"clip clip002: duration"):
        writer.write(broken, videos[0])
    with pytest.raises(WriterError, match="empty"):
        writer.write(_record(3), b"")
    writer.write(_record(4), videos[0])
    with pytest.raises(WriterError, match="clip004: already written"):
        writer.write(_record(4), videos[1])
    writer.close()
    assert pl.read_parquet(tmp_path / "metadata" / "train.parquet")["id"].to_list() == ["clip004"]


def test_video_given_as_a_path_is_streamed_into_the_shard(tmp_path: Path, tiny_clip: Path) -> None:
    with DatasetWriter(tmp_path / "ds", card=False) as writer:
        writer.write(_record(0), tiny_clip)
    assert HubNativeDataset.open(tmp_path / "ds").read_video("train", "clip000") == tiny_clip.read_bytes()


def test_reopening_after_a_crash_keeps_finished_shards_and_rewrites_the_rest_identically(
    tmp_path: Path, videos: list[bytes]
) -> None:
    _write(tmp_path / "clean", videos, 7, shard_bytes=15_000)

    with (
        pytest.raises(RuntimeError),
        DatasetWriter(tmp_path / "crash", shard_bytes=15_000, card=False) as writer,
    ):
        for i in range(5):
            writer.write(_record(i), videos[i % len(videos)])
        raise RuntimeError("killed")
    assert list((tmp_path / "crash" / "data" / "train").glob(".shard-*.partial"))

    resumed = DatasetWriter(tmp_path / "crash", shard_bytes=15_000, card=False)
    finished = pl.read_parquet(tmp_path / "clean" / "metadata" / "train.parquet")
    on_disk = [
        p.relative_to(tmp_path / "crash").as_posix() for p in (tmp_path / "crash").rglob("shard-*.tar")
    ]
    first_shard_ids = finished.filter(pl.col("shard").is_in(on_disk))["id"].to_list()
    assert 0 < resumed.resumed == len(first_shard_ids) < 5
    assert [resumed.has(f"clip{i:03d}") for i in range(5)] == [
        f"clip{i:03d}" in first_shard_ids for i in range(5)
    ]
    assert not list((tmp_path / "crash" / "data" / "train").glob(".shard-*"))
    for i in range(7):
        if not resumed.has(f"clip{i:03d}"):
            resumed.write(_record(i), videos[i % len(videos)])
    resumed.close()
    assert same_tree(tmp_path / "clean", tmp_path / "crash")


def test_rejects_are_kept_once_per_input_and_stage_across_reopen(tmp_path: Path, videos: list[bytes]) -> None:
    writer = DatasetWriter(tmp_path, card=False)
    writer.reject("a.mp4", "verify", "duration_mismatch: a.mp4: JSON says 8 s", scores={"aesthetic": 2.5})
    writer.reject("a.mp4", "verify", "duration_mismatch: again")
    writer.write(_record(0), videos[0])
    writer.abort()
    writer = DatasetWriter(tmp_path, card=False)
    writer.reject("a.mp4", "verify", "duration_mismatch: a.mp4: JSON says 8 s")
    writer.reject("b.mp4", "upstream", "record_without_video: no member")
    writer.write(_record(0), videos[0])
    writer.close()
    rejects = pl.read_parquet(tmp_path / "meta" / "rejects.parquet")
    assert rejects.select("input", "stage").rows() == [("a.mp4", "verify"), ("b.mp4", "upstream")]
    assert json.loads(rejects["scores"][0]) == {"aesthetic": 2.5}
    assert not (tmp_path / "meta" / "progress").exists()


def test_resuming_with_other_settings_is_refused(tmp_path: Path, videos: list[bytes]) -> None:
    _write(tmp_path, videos, 3, shard_bytes=15_000)
    with pytest.raises(
        WriterError, match=r"other settings \(shard_bytes: 15000 -> 99999\)\. Rerun with the same"
    ):
        DatasetWriter(tmp_path, shard_bytes=99_999, card=False)


def test_info_counts_only_non_empty_splits_and_layout_is_recognised(
    tmp_path: Path, videos: list[bytes]
) -> None:
    assert not is_hub_native(tmp_path)
    _write(tmp_path, videos, 3, shard_bytes=15_000)
    info = json.loads((tmp_path / "meta" / "info.json").read_text())
    assert info["format"] == "medvideocap/hub-native"
    assert info["counts"] == {"train": 3}
    assert info["categories"] == {"clinical_practice": 1, "medical_teaching": 2}
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == ["train.parquet"]
    assert is_hub_native(tmp_path)
    ds = HubNativeDataset.open(tmp_path)
    assert ds.splits == ["train"]
    with pytest.raises(KeyError, match="no split 'test'"):
        ds.metadata("test")


@pytest.mark.parametrize(
    ("text", "expected"), [("1GB", 10**9), ("500MB", 5 * 10**8), ("64KiB", 65536), ("123", 123)]
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="expected a number of bytes"):
        parse_size("big")
