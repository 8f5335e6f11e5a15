"""``dataset/source.py``: one ClipSource over both layouts, and the loader's strict error policy through it.

An upstream release (real zips of real mp4s, with planted faults) and its hub-native conversion are
opened by the one opener and read through the one interface; every reader (``load``, ``recaption``,
``encode-latents``) takes that interface. A bug planted in a decoder stops ``load`` even under a
skipping policy, while a truncated mp4 met earlier in the same run is recorded and skipped.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
from fixtures_loader import make_hub_native
from fixtures_upstream import make_upstream_release

import medvideocap
from medvideocap.dataset.hubnative import HubNativeDataset, HubNativeSource
from medvideocap.dataset.source import ClipSource, open_source
from medvideocap.dataset.upstream import UpstreamRelease, UpstreamSource
from medvideocap.dataset.writer import DatasetWriter
from medvideocap.errors import DataError
from medvideocap.loading.loader import SkippedSampleWarning
from medvideocap.media.decode import DecodeError, TorchCodecDecoder
from medvideocap.media.frames import FrameSpec

SPEC = FrameSpec(num_frames=5, fps=8, height=32, width=48)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An upstream release with a truncated mp4 and a record without video, and its hub-native
    conversion (split by the deterministic split, as ``convert`` does)."""
    tmp = tmp_path_factory.mktemp("src")
    up = make_upstream_release(tmp / "up", n_clips=6, faults=("truncated_mp4", "record_without_video"))
    with DatasetWriter(tmp / "hn", card=False) as writer:
        for clip in UpstreamRelease.open(up).clips():
            writer.write(clip.record, clip.read_bytes())
    return up, tmp / "hn"


def _clips(source: ClipSource) -> dict[str, tuple[dict, bytes]]:
    out = {}
    for i, clip_id in enumerate(source.ids):
        read, where, _ = source.reader(i)
        assert clip_id in where
        out[clip_id] = (source.record(i).to_json_dict(), read())
    return out


@pytest.mark.parametrize("split", [None, "train"])
def test_both_layouts_give_the_same_clips_through_one_interface(
    both: tuple[Path, Path], split: str | None
) -> None:
    up, hn = both
    upstream, hub = open_source(up, split), open_source(hn, split)
    assert isinstance(upstream, UpstreamSource) and isinstance(hub, HubNativeSource)
    assert isinstance(upstream, ClipSource) and isinstance(hub, ClipSource)
    assert len(upstream) == len(upstream.ids) > 0 and sorted(upstream.ids) == sorted(hub.ids)
    a, b = _clips(upstream), _clips(hub)
    assert a.keys() == b.keys() and "90001" in a  # the truncated mp4 is a clip; its bytes are what they are
    for clip_id, (record, data) in a.items():
        hub_record, hub_data = b[clip_id]
        assert data == hub_data
        if split is not None:
            assert record == hub_record
        else:  # unsplit upstream records carry no split; the hub-native rows carry theirs
            assert {**record, "split": None} == {**hub_record, "split": None}
    # what was found opening the release is reported by the source (the clip itself is left out)
    assert [p.kind for p in upstream.problems] == ["record_without_video"]
    assert list(hub.problems) == []
    assert str(up) in upstream.where and str(hn) in hub.where


def test_every_split_of_a_hub_native_source_reads_its_own_rows(tmp_path: Path) -> None:
    """``split=None`` takes the splits one after the other; row i of the second split names its own
    metadata file and reads its own bytes."""
    root = tmp_path / "ds"
    up = make_upstream_release(tmp_path / "up", n_clips=6)
    with DatasetWriter(
        root, card=False, split_fn=lambda r: "test" if r.id in ("00001", "00004") else "train"
    ) as w:
        for clip in UpstreamRelease.open(up).clips():
            w.write(clip.record, clip.read_bytes())
    every = open_source(root, None)
    hub = HubNativeDataset(root)
    assert every.split is None and len(every) == 6
    assert sorted(every.ids) == sorted(hub.source().ids) == [f"{i:05d}" for i in range(6)]
    for i, clip_id in enumerate(every.ids):
        record = every.record(i)
        assert record.split == ("test" if clip_id in ("00001", "00004") else "train")
        assert every.reader(i)[0]() == hub.read_video(record.split, clip_id)
    test = hub.source("test")
    assert test.ids == ["00001", "00004"] and test.split == "test"
    with pytest.raises(KeyError, match="no split 'validation'"):
        hub.source("validation")


def test_a_source_pickles_for_dataloader_workers_and_reads_the_same(both: tuple[Path, Path]) -> None:
    for source in (open_source(both[0], "train"), open_source(both[1], "train")):
        again = pickle.loads(pickle.dumps(source))
        assert again.ids == source.ids
        assert again.reader(0)[0]() == source.reader(0)[0]()
        assert again.record(0) == source.record(0)


def test_load_takes_an_open_source_and_refuses_to_stream_one(both: tuple[Path, Path]) -> None:
    source = open_source(both[1], "train")
    assert open_source(source) is source
    ds = medvideocap.load(source, frames=SPEC, output="uint8", on_error="skip")
    assert ds.ids == list(source.ids)
    with pytest.raises(ValueError, match="pass the folder or URL, not an open ClipSource"):
        medvideocap.load(source, streaming=True)


@pytest.mark.parametrize("layout", ["upstream", "hub-native"])
def test_the_truncated_mp4_raises_by_default_and_is_skipped_when_asked(
    both: tuple[Path, Path], layout: str
) -> None:
    root = both[0] if layout == "upstream" else both[1]
    spec = FrameSpec(num_frames=7, fps=8, height=32, width=48, position="start")  # up to its cut-off tail
    strict = medvideocap.load(root, None, frames=spec)
    bad = strict.ids.index("90001")
    with pytest.raises(DecodeError, match="90001"):
        strict[bad]
    errors: list[tuple[str, DataError]] = []
    lenient = medvideocap.load(root, None, frames=spec, on_error=lambda where, e: errors.append((where, e)))
    items = [lenient[i] for i in range(len(lenient))]
    assert [i for i, it in enumerate(items) if it is None] == [bad]
    assert len(errors) == 1 and "90001" in errors[0][0] and isinstance(errors[0][1], DecodeError)


@pytest.mark.parametrize("policy", ["skip", "handler"])
def test_a_bug_in_a_decoder_stops_load_under_a_skipping_policy_after_the_truncated_clip_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    root = make_hub_native(tmp_path / "ds", 4, corrupt=("truncated",))  # c000 c001 c002 bad_truncated c003
    real = TorchCodecDecoder._decode

    def planted(self: TorchCodecDecoder, indices: list[int]) -> object:
        if "c003" in self.name:
            raise TypeError("get_frames_at() got an unexpected keyword argument 'planted'")
        return real(self, indices)

    monkeypatch.setattr(TorchCodecDecoder, "_decode", planted)
    handled: list[str] = []
    on_error = "skip" if policy == "skip" else (lambda where, error: handled.append(where))
    ds = medvideocap.load(root, frames=SPEC, on_error=on_error)
    assert ds.ids == ["c000", "c001", "c002", "bad_truncated", "c003"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedSampleWarning)
        got = [ds[i] for i in range(4)]
        with pytest.raises(TypeError, match="planted") as bug:
            ds[4]
    assert bug.traceback[-1].name == "planted"
    assert [it is None for it in got] == [False, False, False, True]
    assert [clip for clip, _ in ds.stats.skipped_ids] == ["data/train/shard-00000.tar:bad_truncated.mp4"]
    if policy == "skip":
        assert [str(w.message) for w in caught if "bad_truncated" in str(w.message)]
    else:
        assert handled == ["data/train/shard-00000.tar:bad_truncated.mp4"] and not caught
