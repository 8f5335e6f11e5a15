"""``medvideocap.load`` map-style: item shapes and ranges, captions, backends, bad clips, workers,
buckets, and the upstream release giving the same samples as its hub-native conversion."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest
import torch
from fixtures_loader import clip_bytes, clip_record, edit_metadata, make_hub_native, rotated_clip
from torch.utils.data import DataLoader

import medvideocap
from medvideocap.dataset.schema import SCHEMA_VERSION, ClipRecord, DataError, SchemaVersionError
from medvideocap.dataset.writer import DatasetWriter
from medvideocap.loading.loader import SkippedSampleWarning, collate
from medvideocap.loading.sampler import BucketBatchSampler, bucket_batches
from medvideocap.media.decode import DecodeError
from medvideocap.media.frames import FrameSpec

if TYPE_CHECKING:
    from fixtures_s3 import S3StandIn  # the s3 fixture's type (conftest.py)

SMALL = FrameSpec(num_frames=9, fps=8, height=32, width=48, position="random", seed=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 clips of 2-3 s, every third one 96x48 (wide), in several shards."""
    return make_hub_native(tmp_path_factory.mktemp("hn") / "ds", 6, wide_every=3)


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub_native(tmp_path_factory.mktemp("bad") / "ds", 4, corrupt=("garbage", "truncated"))


def _items(ds: torch.utils.data.Dataset) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        return [ds[i] for i in range(len(ds))]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "output", "shape"),
    [
        (SMALL, "float", (3, 9, 32, 48)),
        (FrameSpec(num_frames=5, fps=4, height=16, width=16, position="center"), "float", (3, 5, 16, 16)),
        (
            FrameSpec(num_frames=13, fps=None, height=None, width=None, position="start"),
            "uint8",
            (3, 13, 48, 64),
        ),
    ],
)
def test_items_have_the_spec_shape_and_value_range(
    dataset: Path, spec: FrameSpec, output: str, shape: tuple
) -> None:
    ds = medvideocap.load(dataset, "train", frames=spec, output=output)  # type: ignore[arg-type]
    items = _items(ds)
    assert len(items) == 6 and all(it is not None for it in items)
    ids = set()
    for it in items:
        video = it["video"]
        if spec.height is None:  # native size: the wide clips stay wide
            assert video.shape[:3] == shape[:3] and video.shape[3] in (64, 96)
        else:
            assert video.shape == shape
        if output == "float":
            assert video.dtype == torch.float32 and video.min() >= -1 and video.max() <= 1
            assert video.min() < -0.5 and video.max() > 0.5  # real content, not a constant frame
        else:
            assert video.dtype == torch.uint8 and video.max() > 128
        ts = it["timestamps"]
        assert ts.shape == (shape[1],) and bool((ts[1:] > ts[:-1]).all())
        step = 1.0 / (spec.fps or 8)
        assert torch.allclose(ts[1:] - ts[:-1], torch.full_like(ts[1:], step), atol=1e-3)
        assert isinstance(it["record"], ClipRecord) and it["record"].id == it["id"]
        ids.add(it["id"])
    assert ids == {f"c{i:03d}" for i in range(6)}


def test_buckets_pick_the_shape_by_aspect_ratio_and_the_sampler_batches_equal_shapes(dataset: Path) -> None:
    buckets = ((9, 32, 48), (9, 32, 64))  # 1.5 and 2.0 aspect: 64x48 (1.33) and 96x48 (2.0) clips
    ds = medvideocap.load(dataset, frames=FrameSpec(num_frames=9, fps=8, buckets=buckets))
    shapes = {it["id"]: tuple(it["video"].shape) for it in _items(ds)}
    assert shapes == {f"c{i:03d}": (3, 9, 32, 64) if i % 3 == 2 else (3, 9, 32, 48) for i in range(6)}
    sampler = BucketBatchSampler.for_dataset(ds, batch_size=2, shuffle=True, seed=0)
    seen = []
    for batch in DataLoader(ds, batch_sampler=sampler, collate_fn=collate):
        assert batch["video"].shape[0] == len(batch["id"])
        seen += batch["id"]
    assert sorted(seen) == sorted(shapes)
    with pytest.raises(ValueError, match="BucketBatchSampler"):
        collate([ds[0], ds[2]])
    streamed = list(bucket_batches((ds[i] for i in range(len(ds))), batch_size=2))
    assert sorted(i for b in streamed for i in b["id"]) == sorted(shapes)


def test_bucket_sampler_gives_every_rank_the_same_number_of_batches(dataset: Path) -> None:
    ds = medvideocap.load(dataset, frames=FrameSpec(num_frames=9, fps=8, buckets=((9, 32, 48), (9, 32, 64))))
    per_rank = [list(BucketBatchSampler.for_dataset(ds, 3, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    covered = {i for batches in per_rank for b in batches for i in b}
    assert covered == set(range(len(ds)))


def test_caption_policy_picks_strips_and_mixes_by_seed(dataset: Path) -> None:
    detailed = medvideocap.load(dataset, frames=SMALL, caption="detailed")[0]
    assert detailed["caption"] == "A surgeon explains step c000."  # "In this video," stripped
    assert medvideocap.load(dataset, frames=SMALL, caption="brief")[0]["caption"] == "Step c000."
    mixed = medvideocap.load(dataset, frames=SMALL, caption={"detailed": 0.5, "brief": 0.5}, seed=3)
    picks = [mixed[i]["caption"].startswith("Step") for i in range(6)]
    assert set(picks) == {True, False}
    again = medvideocap.load(dataset, frames=SMALL, caption={"detailed": 0.5, "brief": 0.5}, seed=3)
    assert [again[i]["caption"].startswith("Step") for i in range(6)] == picks


def test_same_item_from_all_three_backends(dataset: Path) -> None:
    spec = FrameSpec(num_frames=9, fps=8, height=32, width=48, position="random", seed=5)
    by_backend = {
        b: _items(medvideocap.load(dataset, frames=spec, backend=b, output="uint8"))
        for b in ("torchcodec", "decord", "pyav")
    }
    for backend in ("decord", "pyav"):
        for a, b in zip(by_backend["torchcodec"], by_backend[backend], strict=True):
            assert a["id"] == b["id"] and torch.allclose(a["timestamps"], b["timestamps"])
            assert (a["video"].int() - b["video"].int()).abs().float().mean() <= 1.0


def test_windows_and_crops_are_reproducible_and_change_with_the_epoch(dataset: Path) -> None:
    spec = FrameSpec(num_frames=5, fps=8, height=32, width=32, crop="random", seed=2)
    ds = medvideocap.load(dataset, frames=spec)
    first = ds[1]
    assert torch.equal(first["video"], medvideocap.load(dataset, frames=spec)[1]["video"])
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.add(float(ds[1]["timestamps"][0]))
    assert len(starts) > 1


def test_corrupt_clips_are_skipped_with_a_warning_naming_them_and_counted(corrupt_dataset: Path) -> None:
    ds = medvideocap.load(corrupt_dataset, frames=SMALL, on_error="skip")
    assert len(ds) == 6
    with pytest.warns(SkippedSampleWarning) as caught:
        items = [ds[i] for i in range(len(ds))]
    named = " ".join(str(w.message) for w in caught)
    assert "bad_garbage.mp4" in named and "bad_truncated.mp4" in named
    assert sum(it is None for it in items) == 2
    assert ds.stats.skipped == 2 and ds.stats.samples == 4
    assert sorted(clip.rsplit(":", 1)[1] for clip, _ in ds.stats.skipped_ids) == [
        "bad_garbage.mp4",
        "bad_truncated.mp4",
    ]
    batch = collate(items)
    assert batch is not None and batch["video"].shape[0] == 4


def test_corrupt_clip_raises_by_default_and_under_on_error_raise(corrupt_dataset: Path) -> None:
    """Strict by default (webdataset's ``handler=reraise_exception``): skipping is opt-in."""
    for ds in (
        medvideocap.load(corrupt_dataset, frames=SMALL),
        medvideocap.load(corrupt_dataset, frames=SMALL, on_error="raise"),
    ):
        bad = ds.ids.index("bad_garbage")
        with pytest.raises(DecodeError, match="bad_garbage.mp4"):
            ds[bad]
        assert ds.stats.skipped == 0


def test_an_error_handler_gets_each_data_error_and_the_run_goes_on(corrupt_dataset: Path) -> None:
    """``on_error=handler``: called with the clip and its DataError instead of a warning."""
    seen: list[tuple[str, str]] = []

    def handler(where: str, error: DataError) -> None:
        seen.append((where.rsplit(":", 1)[1], type(error).__name__))

    ds = medvideocap.load(corrupt_dataset, frames=SMALL, on_error=handler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedSampleWarning)
        items = [ds[i] for i in range(len(ds))]
    assert sorted(seen) == [("bad_garbage.mp4", "DecodeError"), ("bad_truncated.mp4", "DecodeError")]
    assert sum(it is None for it in items) == 2 and ds.stats.skipped == 2


def test_short_clips_are_skipped_or_padded(dataset: Path) -> None:
    # 21 frames at 8 fps = 2.5 s: only the 3 s clips fit
    long_spec = partial(FrameSpec, num_frames=21, fps=8, height=32, width=48, position="start")
    skipping = medvideocap.load(dataset, frames=long_spec(short="skip"))
    items = _items(skipping)
    assert [it is None for it in items] == [True, False] * 3
    assert skipping.stats.short == 3 and skipping.stats.skipped == 3
    padded = _items(medvideocap.load(dataset, frames=long_spec(short="pad"), output="uint8"))
    short = padded[0]
    assert short["video"].shape == (3, 21, 32, 48)
    assert torch.equal(short["video"][:, -1], short["video"][:, 15])  # the 16th frame is the last one
    assert short["timestamps"][-1] == short["timestamps"][15]


# Run in a fresh interpreter: a fork copies whatever threads and locks the pytest process holds from
# the tests that ran before it in the same worker, and a hang caused by one of those says nothing about
# the loader. (Run inside the pytest worker, the pyav case hit the DataLoader's timeout once in a full
# run; it never did alone.) The frame spec is SMALL's.
_FORKED_WORKERS = """
import faulthandler
import sys
import torch
from torch.utils.data import DataLoader
import medvideocap
from medvideocap.loading.loader import collate
from medvideocap.media.frames import FrameSpec

spec = FrameSpec(num_frames=9, fps=8, height=32, width=48, position="random", seed=1)
ds = medvideocap.load(sys.argv[1], frames=spec, backend=sys.argv[2])
expected = {ds[i]["id"]: ds[i]["video"] for i in range(len(ds))}  # the parent now holds decoders


def watch(_worker: int) -> None:
    # a worker still busy after 100 s prints where it is stuck. Only in the workers: a watchdog started
    # in the parent before the fork leaves its lock held in every child, which then hangs for certain
    faulthandler.dump_traceback_later(100, exit=False)


loader = DataLoader(
    ds,
    batch_size=2,
    num_workers=2,
    collate_fn=collate,
    multiprocessing_context="fork",
    timeout=120,
    worker_init_fn=watch,
)
got = {clip_id: batch["video"][i] for batch in loader for i, clip_id in enumerate(batch["id"])}
assert got.keys() == expected.keys(), (sorted(got), sorted(expected))
assert all(torch.equal(got[k], expected[k]) for k in got)
print("same", len(got))
"""


@pytest.mark.parametrize("backend", ["torchcodec", "decord", "pyav"])
def test_dataloader_workers_after_the_parent_decoded_give_the_same_items(dataset: Path, backend: str) -> None:
    """decord and PyAV decoders inherited through fork hang a worker if the child frees them; the
    cache must leave them alone (a hang fails here through the DataLoader timeout). The parent is a
    fresh interpreter that decodes every clip and then forks two DataLoader workers."""
    out = subprocess.run(
        [sys.executable, "-c", _FORKED_WORKERS, str(dataset), backend],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["same", "6"]


def test_upstream_release_and_its_hub_native_conversion_give_the_same_samples(tmp_path: Path) -> None:
    from fixtures_upstream import make_upstream_release

    from medvideocap.dataset.upstream import UpstreamRelease

    up = make_upstream_release(tmp_path / "up", n_clips=6)
    with DatasetWriter(tmp_path / "hn", card=False) as writer:
        for clip in UpstreamRelease.open(up).clips():
            writer.write(clip.record, clip.read_bytes())
    spec = FrameSpec(num_frames=5, fps=8, height=32, width=48, seed=4, crop="random")
    from_up = medvideocap.load(up, "train", frames=spec, caption={"detailed": 1, "brief": 1})
    from_hn = medvideocap.load(tmp_path / "hn", "train", frames=spec, caption={"detailed": 1, "brief": 1})
    assert len(from_up) == len(from_hn) > 0
    hn = {it["id"]: it for it in _items(from_hn)}
    for it in _items(from_up):
        other = hn[it["id"]]
        assert torch.equal(it["video"], other["video"])
        assert torch.equal(it["timestamps"], other["timestamps"])
        assert it["caption"] == other["caption"]
        assert it["record"].to_json_dict() == other["record"].to_json_dict()


def test_unknown_source_is_an_error_saying_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="hub-native"):
        medvideocap.load(tmp_path / "empty")


def test_missing_split_names_the_splits_that_exist(dataset: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no metadata for split 'test'.*\['train'\]"):
        medvideocap.load(dataset, "test")


def test_single_clip_written_by_hand_loads(tmp_path: Path) -> None:
    """A dataset with one clip whose record is minimal (no captions) still gives an item."""
    rec = clip_record("solo", seconds=2.0, fps=8, size=(64, 48)).model_copy(update={"captions": []})
    with DatasetWriter(tmp_path / "one", card=False) as writer:
        writer.write(rec, clip_bytes(2.0, 8, (64, 48)))
    item = medvideocap.load(tmp_path / "one", frames=SMALL)[0]
    assert item["caption"] == "" and item["video"].shape == (3, 9, 32, 48)


# ---------------------------------------------------------------------------------------------------
# Schema versions are refused at load(), not clip by clip


def test_another_major_version_in_info_json_is_refused_at_load(dataset: Path, tmp_path: Path) -> None:
    root = edit_metadata(dataset, tmp_path / "v2", "train", lambda columns: None)
    info_path = root / "meta" / "info.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "schema_version": "2.0"}))
    for streaming in (False, True):
        with pytest.raises(SchemaVersionError) as caught:
            medvideocap.load(root, frames=SMALL, streaming=streaming)
        message = str(caught.value)
        assert "info.json" in message and "2.0" in message and SCHEMA_VERSION in message


def test_rows_of_another_major_version_are_refused_at_load(dataset: Path, tmp_path: Path) -> None:
    def bump(columns: dict[str, list]) -> None:
        columns["schema_version"][4] = "2.0"

    root = edit_metadata(dataset, tmp_path / "rows-v2", "train", bump)
    with pytest.raises(
        SchemaVersionError, match=rf"train.parquet row 4 \(clip c004\).*2\.0.*{SCHEMA_VERSION}"
    ):
        medvideocap.load(root, frames=SMALL)


def test_an_older_minor_version_loads(dataset: Path, tmp_path: Path) -> None:
    """Records written before the rotation field (schema 1.0) read as rotation 0."""

    def old(columns: dict[str, list]) -> None:
        columns["schema_version"] = ["1.0"] * len(columns["schema_version"])
        del columns["rotation"], columns["category_raw"]

    root = edit_metadata(dataset, tmp_path / "v1.0", "train", old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = medvideocap.load(root, frames=SMALL)
        item = ds[0]
    assert item is not None and item["record"].schema_version == "1.0" and item["record"].rotation == 0


# ---------------------------------------------------------------------------------------------------
# Category spellings of a release


def test_release_category_spellings_map_to_the_five_and_keep_the_raw_value(tmp_path: Path) -> None:
    from fixtures_upstream import make_upstream_release

    up = make_upstream_release(tmp_path / "up", n_clips=4)
    rows = json.loads((up / "metadata.json").read_text())
    spellings = [
        "clinical practice videos",
        "Medical Imaging Videos",
        "medical-teaching",
        "medical_animation",
    ]
    for row, spelling in zip(rows, spellings, strict=True):
        row["Video Categories"] = spelling
    (up / "metadata.json").write_text(json.dumps(rows))
    ds = medvideocap.load(up, split=None, frames=SMALL)
    records = {ds.record(i).file_name.rsplit("/", 1)[-1]: ds.record(i) for i in range(len(ds))}
    got = {name: (r.category.value, r.category_raw) for name, r in records.items()}
    assert got == {
        "00000.mp4": ("clinical_practice", "clinical practice videos"),
        "00001.mp4": ("medical_imaging", "Medical Imaging Videos"),
        "00002.mp4": ("medical_teaching", "medical-teaching"),
        "00003.mp4": ("medical_animation", None),  # already the canonical value
    }


# ---------------------------------------------------------------------------------------------------
# Rotated video: upright frames from every backend


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clip per display rotation (0, 90, 180, 270), stored 96x64, records made from the probe."""
    from medvideocap.media.probe import probe

    tmp = tmp_path_factory.mktemp("rot")
    with DatasetWriter(tmp / "ds", card=False) as writer:
        for rotation in (0, 90, 180, 270):
            path = rotated_clip(tmp / f"r{rotation}.mp4", rotation)
            info = probe(path, count_frames=True)
            record = clip_record(
                f"r{rotation:03d}", seconds=info.duration, fps=8, size=(info.width, info.height)
            )
            writer.write(record.model_copy(update={"rotation": info.rotation}), path)
    return tmp


def _ffmpeg_upright(path: Path, frames: int, width: int, height: int) -> torch.Tensor:
    """The first ``frames`` frames ``(T, H, W, 3)`` as ffmpeg shows them (its autorotate applies the
    display matrix): the field's own reference for "upright"."""
    import subprocess

    from videos import ffmpeg

    args = [ffmpeg(), "-v", "error", "-i", str(path), "-frames:v", str(frames)]
    raw = subprocess.run([*args, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True)
    return torch.frombuffer(bytearray(raw.stdout), dtype=torch.uint8).view(frames, height, width, 3)


@pytest.mark.parametrize("backend", ["torchcodec", "decord", "pyav"])
def test_rotated_clips_load_upright_at_their_display_size(rotated: Path, backend: str) -> None:
    native = FrameSpec(num_frames=5, fps=None, height=None, width=None, position="start")
    ds = medvideocap.load(rotated / "ds", frames=native, backend=backend, output="uint8")
    by_id = {clip_id: i for i, clip_id in enumerate(ds.ids)}
    for rotation in (0, 90, 180, 270):
        i = by_id[f"r{rotation:03d}"]
        record = ds.record(i)
        assert (record.width, record.height, record.rotation) == (96, 64, rotation)  # stored size
        display = (64, 96) if rotation in (90, 270) else (96, 64)
        assert (record.display_width, record.display_height) == display
        assert ds.target_shape(i) == (5, display[1], display[0])
        item = ds[i]
        assert item is not None and item["video"].shape == (3, 5, display[1], display[0])
        expected = _ffmpeg_upright(rotated / f"r{rotation}.mp4", 5, *display)
        got = item["video"].permute(1, 2, 3, 0)
        assert (got.int() - expected.int()).abs().float().mean() <= 2.0, (backend, rotation)


# ---------------------------------------------------------------------------------------------------
# on_error="skip" skips data errors only


def test_a_bug_in_the_pipeline_raises_even_under_skip(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TypeError from our own code is not a bad clip: skipping it would turn a bug into 'every clip
    skipped'. The bug is planted in the resize step the pipeline runs after decoding."""
    import medvideocap.loading.loader as loader_module

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("resize_crop() got an unexpected keyword argument 'antialias'")

    ds = medvideocap.load(dataset, frames=SMALL, on_error="skip")
    monkeypatch.setattr(loader_module, "resize_crop", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedSampleWarning)
        with pytest.raises(TypeError, match="antialias"):
            ds[0]
        stream = medvideocap.load(dataset, frames=SMALL, streaming=True, on_error="skip")
        with pytest.raises(TypeError, match="antialias"):
            next(iter(stream))
    assert ds.stats.skipped == 0


def test_a_key_error_in_the_caption_policy_raises_under_skip(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvideocap.loading.loader as loader_module

    def broken(*args: object, **kwargs: object) -> str:
        captions: dict[str, str] = {}
        return captions["detailed"]

    monkeypatch.setattr(loader_module, "choose_caption", broken)
    with pytest.raises(KeyError, match="detailed"):
        medvideocap.load(dataset, frames=SMALL, on_error="skip")[1]


def test_data_errors_are_skipped_each_with_its_named_reason(corrupt_dataset: Path, tmp_path: Path) -> None:
    """Decode errors, a missing member and a short clip are skipped, each named with its error type."""

    def drop_second(columns: dict[str, list]) -> None:
        columns["shard"][1] = "data/train/shard-99999.tar"

    root = edit_metadata(corrupt_dataset, tmp_path / "gone", "train", drop_second)
    spec = FrameSpec(num_frames=21, fps=8, height=16, width=16, short="skip")
    ds = medvideocap.load(root, frames=spec, on_error="skip")
    _items(ds)
    reasons = {clip.rsplit(":", 1)[1]: reason.split(":", 1)[0] for clip, reason in ds.stats.skipped_ids}
    assert reasons["c001.mp4"] == "MissingMemberError"
    assert reasons["bad_garbage.mp4"] == reasons["bad_truncated.mp4"] == "DecodeError"
    assert ds.stats.short >= 1 and "c000.mp4" in reasons  # 2 s at 8 fps: 16 frames < 21


def test_a_rotated_raw_video_built_with_the_demo_recipe_loads_upright(tmp_path: Path) -> None:
    """End to end: probe records the rotation, the build's record keeps it, the loader turns PyAV's
    stored frames upright (torchcodec's are already)."""
    from medvideocap.build.builder import build

    (tmp_path / "raw").mkdir()
    rotated_clip(tmp_path / "raw" / "phone.mp4", 90, seconds=3.0, size=(192, 128))
    build(tmp_path / "raw", tmp_path / "out", recipe="demo", workers=1)
    spec = FrameSpec(num_frames=5, fps=None, height=None, width=None, position="start")
    items = {}
    for backend in ("torchcodec", "pyav"):
        ds = medvideocap.load(tmp_path / "out", frames=spec, backend=backend, output="uint8")
        record = ds.record(0)
        assert (record.width, record.height, record.rotation) == (192, 128, 90)
        items[backend] = ds[0]["video"]
        assert items[backend].shape == (3, 5, 192, 128)
    assert (items["torchcodec"].int() - items["pyav"].int()).abs().float().mean() <= 2.0


def test_a_shard_path_leading_out_of_the_dataset_is_never_read(dataset: Path, tmp_path: Path) -> None:
    """A metadata row naming ``../elsewhere/x.tar`` (a real shard holding the clip at the recorded
    offset, so only the path check stands between the loader and another folder's bytes) is skipped
    with a warning naming the row, or raises under on_error="raise"; the other rows load."""
    moved: dict[str, str] = {}

    def escape(columns: dict[str, list]) -> None:
        moved["shard"] = columns["shard"][1]
        columns["shard"][1] = "../elsewhere/x.tar"

    root = edit_metadata(dataset, tmp_path / "ds", "train", escape)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(dataset / moved["shard"], tmp_path / "elsewhere" / "x.tar")

    ds = medvideocap.load(root, frames=SMALL, on_error="skip")
    with pytest.warns(SkippedSampleWarning, match=r"train\.parquet row 1 \(clip c001\).*leads outside"):
        assert ds[1] is None
    assert ds[0] is not None and ds.stats.skipped == 1 and ds.stats.samples == 1
    strict = medvideocap.load(root, frames=SMALL, on_error="raise")
    with pytest.raises(DataError, match=r"row 1 \(clip c001\): shard '\.\./elsewhere/x\.tar' leads outside"):
        strict[1]


def test_a_dataset_in_object_storage_loads_like_the_local_folder(dataset: Path, s3: S3StandIn) -> None:
    """``load("s3://bucket/ds")`` (a real S3 API on localhost) gives the local folder's items:
    map-style with one ranged GET of the member per clip, never the shard, also from forked
    DataLoader workers; and streaming."""
    url = s3.upload(dataset)
    local = medvideocap.load(dataset, frames=SMALL, output="uint8")
    remote = medvideocap.load(url, frames=SMALL, output="uint8", storage_options=s3.storage_options)
    assert remote.ids == local.ids and len(remote) == 6
    expected = {it["id"]: it for it in _items(local)}

    s3.requests.clear()
    item = remote[2]
    row = pl.read_parquet(dataset / "metadata" / "train.parquet").row(2, named=True)
    offset, size = int(row["offset"]), int(row["size"])
    assert [(r.range, r.status) for r in s3.gets(".tar")] == [
        (f"bytes={offset - 512}-{offset + size - 1}", 206)
    ]
    assert torch.equal(item["video"], expected[item["id"]]["video"])
    assert item["caption"] == expected[item["id"]]["caption"]

    loader = DataLoader(
        remote, batch_size=2, num_workers=2, collate_fn=collate, multiprocessing_context="fork", timeout=120
    )
    got = {clip_id: batch["video"][i] for batch in loader for i, clip_id in enumerate(batch["id"])}
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]["video"]) for k in got)
    assert all(r.range is not None for r in s3.gets(".tar"))  # no whole-shard download anywhere

    stream = medvideocap.load(
        url, streaming=True, shuffle=False, frames=SMALL, output="uint8", storage_options=s3.storage_options
    )
    streamed = {it["id"]: it["video"] for it in stream}
    assert streamed.keys() == expected.keys()
    assert all(torch.equal(streamed[k], expected[k]["video"]) for k in streamed)
