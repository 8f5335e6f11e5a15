"""``medvideocap.dataset.hubnative``: the one reader of a tar member at a recorded offset (its header checked in
the same read) as the loaders and ``HubNativeDataset`` use it, on real shards written by the writer."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from fixtures_loader import clip_bytes, clip_record, edit_metadata, make_hub_native

import medvideocap
from medvideocap.dataset.hubnative import (
    HubNativeDataset,
    MemberMismatchError,
    MissingMemberError,
    read_metadata,
    read_tar_member,
)
from medvideocap.dataset.writer import DatasetWriter
from medvideocap.handles import FileHandles
from medvideocap.loading.loader import SkippedSampleWarning
from medvideocap.loading.streaming import StreamingClipDataset
from medvideocap.locations import Location
from medvideocap.media.frames import FrameSpec

SPEC = FrameSpec(num_frames=5, fps=8, height=16, width=16, position="start")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 clips of 2-3 s in one shard: c000 (2 s) and c001 (3 s) differ in length and bytes."""
    return make_hub_native(tmp_path_factory.mktemp("hn") / "ds", 4, shard_bytes=10**9)


def _swap(a: int, b: int) -> object:
    def edit(columns: dict[str, list]) -> None:
        for name in ("offset", "size"):
            columns[name][a], columns[name][b] = columns[name][b], columns[name][a]

    return edit


def _skipped(ds: object, i: int) -> tuple[object, str]:
    with pytest.warns(SkippedSampleWarning) as caught:
        item = ds[i]  # type: ignore[index]
    return item, " ".join(str(w.message) for w in caught)


def test_swapped_offsets_give_a_named_mismatch_never_another_clips_video(
    dataset: Path, tmp_path: Path
) -> None:
    """The issue's reproduction: rows 0 and 1 of the metadata trade offset and size."""
    root = edit_metadata(dataset, tmp_path / "swapped", "train", _swap(0, 1))  # type: ignore[arg-type]
    ds = medvideocap.load(root, frames=SPEC, output="uint8", on_error="skip")
    assert ds.ids[:2] == ["c000", "c001"]
    item, message = _skipped(ds, 0)
    assert item is None
    assert "c000.mp4" in message and "MemberMismatchError" in message and "'c001.mp4'" in message
    assert ds.stats.skipped_ids[0][0].endswith("c000.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedSampleWarning)
        intact = ds[2]
    assert intact is not None and intact["id"] == "c002"
    strict = medvideocap.load(root, frames=SPEC, on_error="raise")
    with pytest.raises(MemberMismatchError, match=r"c000\.mp4: offset \d+ of .* holds member 'c001\.mp4'"):
        strict[0]
    with pytest.raises(MemberMismatchError, match=r"c001\.mp4.*'c000\.mp4'"):
        HubNativeDataset(root).read_video("train", "c001")


def test_an_offset_into_a_member_is_not_taken_for_a_header(dataset: Path, tmp_path: Path) -> None:
    def shift(columns: dict[str, list]) -> None:
        columns["offset"][1] += 512

    root = edit_metadata(dataset, tmp_path / "shifted", "train", shift)
    with pytest.raises(
        MemberMismatchError, match=r"c001\.mp4: the 512 bytes before offset .* not a tar header"
    ):
        medvideocap.load(root, frames=SPEC, on_error="raise")[1]


def test_a_size_that_disagrees_with_the_header_is_a_mismatch(dataset: Path, tmp_path: Path) -> None:
    def shrink(columns: dict[str, list]) -> None:
        columns["size"][2] -= 100

    root = edit_metadata(dataset, tmp_path / "shrunk", "train", shrink)
    item, message = _skipped(medvideocap.load(root, frames=SPEC, on_error="skip"), 2)
    assert item is None and "c002.mp4" in message and "holds member 'c002.mp4'" in message


def test_a_missing_shard_is_a_missing_member_data_error(dataset: Path, tmp_path: Path) -> None:
    root = edit_metadata(dataset, tmp_path / "noshard", "train", lambda columns: None)
    (root / "data" / "train" / "shard-00000.tar").unlink()
    item, message = _skipped(medvideocap.load(root, frames=SPEC, on_error="skip"), 0)
    assert item is None and "MissingMemberError" in message and "shard-00000.tar is missing" in message
    with pytest.raises(MissingMemberError, match="c000.mp4"):
        medvideocap.load(root, frames=SPEC, on_error="raise")[0]


def test_a_truncated_shard_is_a_missing_member_data_error(dataset: Path, tmp_path: Path) -> None:
    root = edit_metadata(dataset, tmp_path / "cut", "train", lambda columns: None)
    shard = root / "data" / "train" / "shard-00000.tar"
    data = HubNativeDataset(root).metadata("train")
    last = data.row(data.height - 1, named=True)
    shard.write_bytes(shard.read_bytes()[: last["offset"] + 10])
    with pytest.raises(MissingMemberError, match=r"c003\.mp4: .*wanted \d+ bytes"):
        medvideocap.load(root, frames=SPEC, on_error="raise")[3]


def test_ids_longer_than_the_ustar_name_field_still_read(tmp_path: Path) -> None:
    """PAX keeps a long name in an extended header and truncates the ustar field to 100 bytes."""
    long_id = "clip_" + "x" * 140
    with DatasetWriter(tmp_path / "long", card=False) as writer:
        writer.write(clip_record(long_id, seconds=2.0, fps=8, size=(64, 48)), clip_bytes(2.0, 8, (64, 48)))
    hub = HubNativeDataset(tmp_path / "long")
    assert hub.read_video("train", long_id) == clip_bytes(2.0, 8, (64, 48))
    item = medvideocap.load(tmp_path / "long", frames=SPEC)[0]
    assert item is not None and item["id"] == long_id


def test_read_tar_member_returns_the_members_bytes_exactly(dataset: Path) -> None:
    meta = HubNativeDataset(dataset).metadata("train")
    files = FileHandles()
    for row in meta.iter_rows(named=True):
        data = read_tar_member(
            dataset / row["shard"], row["offset"], row["size"], f"{row['id']}.mp4", files=files
        )
        seconds = 2.0 if int(row["id"][1:]) % 2 == 0 else 3.0
        assert data == clip_bytes(seconds, 8, (64, 48))
    with pytest.raises(MemberMismatchError, match="cannot hold a tar member"):
        read_tar_member(dataset / meta["shard"][0], 100, 10, "c000.mp4", files=files)


def test_streaming_reads_members_through_the_checked_read(dataset: Path) -> None:
    """Streaming gets offsets from the tar itself; the same checked read gives the same clips."""
    ds = medvideocap.load(dataset, "train", streaming=True, frames=SPEC, output="uint8", shuffle=False)
    assert isinstance(ds, StreamingClipDataset)
    streamed = {it["id"]: it["video"] for it in ds}
    mapped = medvideocap.load(dataset, frames=SPEC, output="uint8")
    assert sorted(streamed) == mapped.ids
    for i, clip_id in enumerate(mapped.ids):
        assert torch.equal(streamed[clip_id], mapped[i]["video"])


def test_the_loader_reads_the_index_through_the_datasets_reader(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reader of the metadata parquet: the map-style loader's index is the table
    ``HubNativeDataset.metadata`` returns, read by ``hubnative.read_metadata``."""
    import medvideocap.dataset.hubnative as hubnative

    calls: list[tuple[str, str]] = []

    def counted(root: Location, split: str) -> object:
        calls.append((str(root), split))
        return read_metadata(root, split)

    monkeypatch.setattr(hubnative, "read_metadata", counted)
    ds = medvideocap.load(dataset, "train", frames=SPEC)
    assert calls == [(str(dataset), "train")]
    table = HubNativeDataset(dataset).metadata("train")
    assert table.equals(read_metadata(dataset, "train"))
    assert ds.ids == table["id"].to_list()
    keys = [ds.source.reader(i)[2] for i in range(len(ds))]
    assert keys == list(zip(table["shard"].to_list(), table["offset"].to_list(), strict=True))
    assert [ds.source.reader(i)[0]() for i in range(len(ds))] == [
        HubNativeDataset(dataset).read_video("train", i) for i in ds.ids
    ]
    assert (
        ds.record(1).to_json_dict()
        == next(r for i, r in enumerate(HubNativeDataset(dataset).records("train")) if i == 1).to_json_dict()
    )


def test_a_split_without_metadata_names_the_splits_that_have_it(dataset: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"no metadata for split 'test'.*test\.parquet missing.*\['train'\]"
    ):
        read_metadata(dataset, "test")
