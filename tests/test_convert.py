from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fixtures_disk import half_written, resize, tmpfs
from fixtures_hubnative import FRACTIONS, SHARD_BYTES, converted, same_tree
from fixtures_loader import rotated_clip
from fixtures_upstream import (
    FAULT_FILES,
    SIZE,
    make_upstream_release,
    paper_record,
    video_bytes,
    write_release,
    write_zip64,
    zeros_deflated,
)

from medvideocap.dataset.convert import ConvertSummary, convert, reject_kind, summary_table
from medvideocap.dataset.hubnative import HubNativeDataset
from medvideocap.dataset.schema import SPLITS, Category
from medvideocap.dataset.upstream import DEFAULT_MAX_CLIP_BYTES
from medvideocap.dataset.validate import DEFAULT_MAX_CAPTION_CHARS, validate
from medvideocap.dataset.writer import WriterError

FAULTS = ("duration_mismatch", "video_without_record", "truncated_mp4", "unknown_key")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted(tmp_path_factory.mktemp("convert"), faults=FAULTS)


@pytest.fixture(scope="module")
def meta(hub: Path) -> dict[str, pl.DataFrame]:
    return {s: pl.read_parquet(hub / "metadata" / f"{s}.parquet") for s in SPLITS}


def _check_row(row: dict, meta_row: dict) -> None:
    record = row["json"]
    assert record["id"] == row["__key__"] == meta_row["id"]
    assert Category(record["category"]).value == meta_row["category"]
    assert isinstance(record["duration"], float) and record["duration"] == meta_row["duration"] > 0
    assert isinstance(record["fps"], float) and record["fps"] == meta_row["fps"] > 0
    assert (record["width"], record["height"]) == (64, 48)
    assert isinstance(record["scores"]["aesthetic"], float) and isinstance(
        record["scores"]["technical"], float
    )
    captions = {c["name"]: c["text"] for c in record["captions"]}
    assert captions["detailed"] == meta_row["caption_detailed"] and captions["detailed"]
    assert captions["brief"] == meta_row["caption_brief"]
    assert isinstance(record["extra"], str)  # JSON text, one type for every row


def test_load_dataset_reads_three_splits_with_decodable_videos_and_typed_metadata(
    hub: Path, meta: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    import datasets
    from torchcodec.decoders import VideoDecoder

    ds = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "hf"))
    assert sorted(ds) == sorted(SPLITS)
    for split in SPLITS:
        by_id = {r["id"]: r for r in meta[split].iter_rows(named=True)}
        assert ds[split].num_rows == len(by_id) > 0
        for row in ds[split]:
            _check_row(row, by_id[row["__key__"]])
            decoder = row["mp4"]
            assert isinstance(decoder, VideoDecoder)
            assert tuple(decoder.get_frame_at(0).data.shape) == (3, 48, 64)
            assert decoder.metadata.num_frames == by_id[row["__key__"]]["num_frames"]


def test_load_dataset_streaming_reads_every_row(hub: Path, meta: dict[str, pl.DataFrame]) -> None:
    import datasets

    ds = datasets.load_dataset(str(hub), streaming=True)
    assert sorted(ds) == sorted(SPLITS)
    for split in SPLITS:
        by_id = {r["id"]: r for r in meta[split].iter_rows(named=True)}
        seen = []
        for row in ds[split]:
            _check_row(row, by_id[row["__key__"]])
            assert tuple(row["mp4"].get_frame_at(0).data.shape) == (3, 48, 64)
            seen.append(row["__key__"])
        assert seen == meta[split]["id"].to_list()  # shard order is the parquet order


def test_webdataset_library_streams_the_shards(hub: Path, meta: dict[str, pl.DataFrame]) -> None:
    import webdataset as wds

    for split in SPLITS:
        shards = [str(p) for p in HubNativeDataset.open(hub).shards(split)]
        samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
        table = meta[split]
        assert [s["__key__"] for s in samples] == table["id"].to_list()
        for sample, row in zip(samples, table.iter_rows(named=True), strict=True):
            assert json.loads(sample["json"])["split"] == split
            with open(hub / row["shard"], "rb") as fh:
                fh.seek(row["offset"])
                assert sample["mp4"] == fh.read(row["size"])


def test_metadata_row_counts_equal_shard_samples_and_info(hub: Path, meta: dict[str, pl.DataFrame]) -> None:
    import tarfile

    info = json.loads((hub / "meta" / "info.json").read_text())
    for split in SPLITS:
        samples = 0
        for shard in HubNativeDataset.open(hub).shards(split):
            with tarfile.open(shard) as tar:
                samples += sum(m.name.endswith(".mp4") for m in tar.getmembers())
        assert meta[split].height == samples == info["counts"][split]
    assert sum(info["counts"].values()) == 9  # 8 good clips + the one with an unknown key (kept)
    assert len(list((hub / "data" / "train").glob("shard-*.tar"))) >= 2


def test_media_facts_come_from_the_file(hub: Path, meta: dict[str, pl.DataFrame]) -> None:
    rows = pl.concat(meta.values())
    assert set(rows["codec"].to_list()) == {"h264"}
    for row in rows.iter_rows(named=True):
        assert row["num_frames"] == round(row["duration"] * row["fps"])


def test_dropped_clips_are_recorded_with_stage_and_reason(hub: Path) -> None:
    rejects = pl.read_parquet(hub / "meta" / "rejects.parquet")
    by_file = {r["input"].rsplit("/", 1)[-1].rsplit(":", 1)[-1]: r for r in rejects.iter_rows(named=True)}
    assert by_file[FAULT_FILES["duration_mismatch"]]["reason"].startswith("duration_mismatch:")
    assert "JSON says 8.99 s" in by_file[FAULT_FILES["duration_mismatch"]]["reason"]
    assert by_file[FAULT_FILES["video_without_record"]]["stage"] == "upstream"
    assert by_file[FAULT_FILES["truncated_mp4"]]["stage"] == "verify"
    assert FAULT_FILES["unknown_key"] not in by_file  # kept, with the key in record.extra
    extra = pl.concat(pl.read_parquet(p) for p in (hub / "metadata").glob("*.parquet")).filter(
        pl.col("id") == "90007"
    )["extra"][0]
    assert json.loads(extra) == {"Uploader Notes": "re-uploaded 2024"}


def test_summary_groups_drops_by_kind() -> None:
    summary = ConvertSummary(
        out=Path("x"),
        counts={"train": 3, "validation": 0, "test": 1},
        written=4,
        skipped=0,
        rejects=[
            {"input": "a", "stage": "verify", "reason": "duration_mismatch: a: JSON says 8 s"},
            {"input": "b", "stage": "verify", "reason": "duration_mismatch: b: JSON says 9 s"},
            {"input": "c", "stage": "upstream", "reason": "video_without_record: c"},
        ],
    )
    assert summary.reject_kinds() == [
        ("verify", "duration_mismatch", 2, "a"),
        ("upstream", "video_without_record", 1, "c"),
    ]
    assert summary_table(summary).row_count == 4


def test_rerun_on_a_finished_dataset_changes_nothing(hub: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(hub, copy)
    summary = convert(
        hub.parent / "upstream", copy, shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False
    )
    assert summary.written == 0 and summary.skipped == 9
    assert same_tree(hub, copy)


def test_split_is_identical_across_worker_counts_and_groups_never_straddle(hub: Path, tmp_path: Path) -> None:
    other = converted(tmp_path, faults=FAULTS, workers=3)
    assert same_tree(hub, other)
    rows = pl.concat(pl.read_parquet(p) for p in (other / "metadata").glob("*.parquet"))
    per_group = rows.group_by("group").agg(pl.col("split").n_unique().alias("n"))
    assert per_group["n"].max() == 1
    assert rows.filter(pl.col("group") == "yt_A")["id"].sort().to_list() == ["00000", "00001"]


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    src = make_upstream_release(tmp_path / "upstream", n_clips=40, faults=("duration_mismatch",))
    clean = tmp_path / "clean"
    convert(src, clean, shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False)

    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "medvideocap", "convert", str(src), "--out", str(killed)]
    args += ["--shard-size", str(SHARD_BYTES), "--fractions", ",".join(map(str, FRACTIONS)), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("data/*/shard-*.tar")):
        assert proc.poll() is None, "convert exited before writing its first shard"
        assert time.monotonic() < deadline, "no shard appeared within 120 s"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    if (killed / "meta" / "info.json").exists():
        pytest.fail("convert finished before the kill landed; the test needs a longer run")
    partial_state = sorted(p.name for p in killed.rglob("*") if p.is_file())
    assert any(name.startswith("shard-") for name in partial_state)

    summary = convert(src, killed, shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False)
    assert summary.skipped > 0  # finished shards were kept, not rewritten
    assert summary.skipped + summary.written == 40
    assert same_tree(clean, killed)


# ---------------------------------------------------------------------------------------------------
# hostile releases: what is converted, what is dropped (named), and the exit status


def _release(root: Path, clips: list[tuple[str, bytes, dict]], extra_zips: dict | None = None) -> Path:
    """A release of real clips: (member name, bytes, record overrides) each, in videos_1.zip."""
    records = []
    for i, (name, data, over) in enumerate(clips):
        rec = paper_record(name.rsplit("/", 1)[-1], 300 + i, 1.0, 8, len(data))
        records.append({**rec, **over})
    return write_release(root, {"videos_1.zip": [(n, d) for n, d, _ in clips], **(extra_zips or {})}, records)


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from medvideocap.cli import main

    return CliRunner().invoke(main, ["convert", *args, "--no-progress"])


def test_names_that_clean_up_to_one_id_both_convert(tmp_path: Path) -> None:
    clip = video_bytes(1.0, 8)
    src = _release(tmp_path / "up", [("a b.mp4", clip, {}), ("a_b.mp4", clip, {}), ("c.mp4", clip, {})])
    summary = convert(src, tmp_path / "out", progress=False)
    assert summary.written == 3 and summary.failure() is None
    rows = pl.concat(pl.read_parquet(p) for p in (tmp_path / "out" / "metadata").glob("*.parquet"))
    names = dict(zip(rows["file_name"], rows["id"], strict=True))
    assert names == {"a_b.mp4": "a_b", "a b.mp4": "a_b-2", "c.mp4": "c"}
    extra = json.loads(rows.filter(pl.col("id") == "a_b-2")["extra"][0])
    assert extra["id_collision"]["kept_by"] == "a_b.mp4"


def _peak_rss_of_convert(src: Path, out: Path) -> dict[str, int]:
    """Peak resident memory of a fresh process converting ``src``, and its peak before converting."""
    code = (
        "import json, resource, sys\n"
        "import medvideocap.dataset.convert, medvideocap.dataset.hubnative, medvideocap.dataset.card\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "s = medvideocap.dataset.convert.convert(sys.argv[1], sys.argv[2], progress=False)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'base_kib': base, 'peak_kib': peak, 'written': s.written}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


def test_a_member_inflating_to_1_gib_is_dropped_unread_with_bounded_memory(tmp_path: Path) -> None:
    import zipfile

    clip = video_bytes(1.0, 8)
    bomb, crc = zeros_deflated(1 << 30)  # 1 GiB of zeros in ~1 MB
    src = tmp_path / "up"
    src.mkdir()
    members = [(f"{i:05d}.mp4", clip, 0, zipfile.crc32(clip), len(clip)) for i in range(3)]
    write_zip64(src / "videos_1.zip", [*members, ("90100.mp4", bomb, 8, crc, 1 << 30)])
    records = [paper_record(m[0], i, 1.0, 8, len(clip)) for i, m in enumerate(members)]
    (src / "metadata.json").write_text(json.dumps([*records, paper_record("90100.mp4", 9, 1.0, 8, 1 << 30)]))
    assert (src / "videos_1.zip").stat().st_size < 2_000_000

    rss = _peak_rss_of_convert(src, tmp_path / "out")
    assert rss["written"] == 3
    # Growth past the imports; measured 0.16 GB here (the card's charts included) against 2.1 GB when
    # the member was read whole. Half the member's size is a bound no whole read can meet.
    assert rss["peak_kib"] - rss["base_kib"] < 512 * 1024, rss
    rejects = pl.read_parquet(tmp_path / "out" / "meta" / "rejects.parquet")
    assert rejects["input"].to_list() == ["videos_1.zip:90100.mp4"]
    reason = rejects["reason"][0]
    assert reason.startswith("member_too_large:") and "1073741824 bytes" in reason
    assert str(DEFAULT_MAX_CLIP_BYTES) in reason and "--max-clip-bytes" in reason


def test_a_zip_cut_before_its_central_directory_converts_its_members_and_exits_1(tmp_path: Path) -> None:
    import zipfile

    clip = video_bytes(1.0, 8)
    src = _release(tmp_path / "up", [(f"{i:05d}.mp4", clip, {}) for i in range(3)])
    archive = src / "videos_1.zip"
    with zipfile.ZipFile(archive) as zf:
        start_dir = zf.start_dir
    archive.write_bytes(archive.read_bytes()[:start_dir])
    result = _cli(str(src), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "1 inputs could not be read" in result.output and "damaged_archive" in result.output
    assert "Traceback" not in result.output
    rows = pl.concat(pl.read_parquet(p) for p in (tmp_path / "out" / "metadata").glob("*.parquet"))
    assert sorted(rows["id"]) == ["00000", "00001", "00002"]  # every intact member was kept
    accepted = _cli(str(src), "--out", str(tmp_path / "out"), "--max-failures", "1")
    assert accepted.exit_code == 0, accepted.output


def test_exit_status_says_when_nothing_was_converted_or_an_input_was_unreadable(tmp_path: Path) -> None:
    clip = video_bytes(1.0, 8)
    nothing = _release(tmp_path / "none", [("00000.mp4", clip, {"Duration": 8.99})])
    result = _cli(str(nothing), "--out", str(tmp_path / "out0"))
    assert result.exit_code == 1 and "no clip was converted" in result.output, result.output

    broken = {"videos_2.zip": []}
    src = _release(tmp_path / "up", [("00000.mp4", clip, {}), ("00001.mp4", clip, {})], broken)
    (src / "videos_2.zip").write_bytes(b"truncated download")
    out = tmp_path / "out"
    result = _cli(str(src), "--out", str(out))
    assert result.exit_code == 1 and "1 inputs could not be read" in result.output, result.output
    assert HubNativeDataset.open(out).info["total"] == 2  # what was converted is kept
    assert _cli(str(src), "--out", str(out), "--max-failures", "1").exit_code == 0
    healthy = _release(tmp_path / "ok", [("00000.mp4", clip, {})])
    assert _cli(str(healthy), "--out", str(tmp_path / "ok-out")).exit_code == 0
    again = _cli(str(healthy), "--out", str(tmp_path / "ok-out"))  # a finished rerun writes 0: fine
    assert again.exit_code == 0, again.output


def test_captions_over_the_bound_drop_the_clip_in_convert_as_in_validate(tmp_path: Path) -> None:
    clip = video_bytes(1.0, 8)
    huge = "word " * 20_000  # 99,999 characters once stripped: ten times the bound
    src = _release(
        tmp_path / "up", [("00000.mp4", clip, {}), ("00001.mp4", clip, {"Detailed Caption": huge})]
    )
    summary = convert(src, tmp_path / "out", progress=False)
    assert summary.written == 1
    (reject,) = summary.rejects
    assert reject["input"] == "videos_1.zip:00001.mp4" and reject["reason"].startswith("caption_too_long:")
    assert "99999 characters" in reject["reason"] and str(DEFAULT_MAX_CAPTION_CHARS) in reject["reason"]
    report = validate(src)
    assert [(p.kind, p.where) for p in report.errors] == [("caption_too_long", "videos_1.zip:00001.mp4")]
    assert validate(src, max_caption_chars=2_000_000).ok
    wider = convert(src, tmp_path / "wide", progress=False, max_caption_chars=2_000_000)
    assert wider.written == 2


# (record value, file) pairs on each side of validate's tolerances: fps 1 % of the record's value,
# duration max(0.5 s, 5 %), size exact.
BOUNDARY_CASES = {
    "fps_29.6_of_30": ({"FPS": 29.6}, 30, False),  # |30 - 29.6| = 0.40 > 0.296
    "fps_29.8_of_30": ({"FPS": 29.8}, 30, True),  # 0.20 < 0.298
    "fps_59.45_of_60": ({"FPS": 59.45}, 60, True),  # 0.55 < 0.5945
    "fps_59.3_of_60": ({"FPS": 59.3}, 60, False),  # 0.70 > 0.593
    "duration_1.45_of_1.0": ({"Duration": 1.45}, 8, True),
    "duration_1.55_of_1.0": ({"Duration": 1.55}, 8, False),
    "size_66x48_of_64x48": ({"Resolution": "66*48"}, 8, False),
    "size_exact": ({}, 8, True),
}


def test_convert_keeps_a_clip_exactly_when_validate_finds_no_problem(tmp_path: Path) -> None:
    clips = [
        (f"{i:05d}.mp4", video_bytes(1.0, fps), {"FPS": fps, **over})
        for i, (over, fps, _) in enumerate(BOUNDARY_CASES.values())
    ]
    src = _release(tmp_path / "up", clips)
    report = validate(src)
    flagged = {p.where.rsplit(":", 1)[-1]: p.kind for p in report.errors}
    summary = convert(src, tmp_path / "out", progress=False)
    dropped = {r["input"].rsplit(":", 1)[-1]: reject_kind(r["reason"]) for r in summary.rejects}
    assert dropped == flagged  # same clips, same problem names
    for i, (name, (_, _, kept)) in enumerate(BOUNDARY_CASES.items()):
        assert (f"{i:05d}.mp4" not in dropped) is kept, name
    assert set(dropped.values()) == {"fps_mismatch", "duration_mismatch", "size_mismatch"}
    assert "resolution_mismatch" not in json.dumps(summary.rejects)


def test_converted_output_always_passes_validate(hub: Path, tmp_path: Path) -> None:
    clips = [(f"{i:05d}.mp4", video_bytes(1.0, fps), {"FPS": fps, **over}) for i, (over, fps, _) in
             enumerate(BOUNDARY_CASES.values())]  # fmt: skip
    src = _release(tmp_path / "up", clips)
    out = tmp_path / "out"
    convert(src, out, progress=False)
    for dataset in (hub, out):
        report = validate(dataset)
        assert report.ok and report.problems == [], report.problems
        assert report.videos_checked == report.records > 0


def test_every_clip_convert_drops_is_one_validate_flags_and_its_output_validates_clean(
    tmp_path: Path,
) -> None:
    from fixtures_upstream import FAULTS as EVERY_FAULT

    # the fixture release with every planted fault, plus a third zip of clips on each side of the
    # fps / duration / size tolerances
    src = make_upstream_release(tmp_path / "up", n_clips=4, faults=EVERY_FAULT)
    records = json.loads((src / "metadata.json").read_text())
    boundary = []
    for i, (over, fps, _) in enumerate(BOUNDARY_CASES.values()):
        data = video_bytes(1.0, fps)
        boundary.append(
            (f"8{i:04d}.mp4", data, {**paper_record(f"8{i:04d}.mp4", 300 + i, 1.0, fps, len(data)), **over})
        )
    write_release(
        src, {"videos_3.zip": [(n, d) for n, d, _ in boundary]}, [*records, *(r for _, _, r in boundary)]
    )

    report = validate(src)
    flagged = {(p.where, p.kind) for p in report.errors}
    summary = convert(src, tmp_path / "out", progress=False)
    dropped = {(r["input"], reject_kind(r["reason"])) for r in summary.rejects}
    assert dropped == flagged  # the same clips, named the same way, for the same reason
    kept_boundary = {f"8{i:04d}.mp4" for i, (_, _, kept) in enumerate(BOUNDARY_CASES.values()) if kept}
    assert {w.rsplit(":", 1)[-1] for w, _ in dropped} & kept_boundary == set()
    assert {kind for _, kind in dropped} >= {"fps_mismatch", "size_mismatch", "duration_mismatch"}

    out = validate(tmp_path / "out")
    assert out.problems == [], out.problems  # not an error, not even a warning
    assert out.videos_checked == out.records == summary.written == 4 + 1 + len(kept_boundary)


def test_cli_help_names_the_bounds_it_defaults_to() -> None:
    from click.testing import CliRunner

    from medvideocap.cli import main

    for verb in ("convert", "validate"):
        text = " ".join(CliRunner().invoke(main, [verb, "--help"]).output.split())
        assert f"default {DEFAULT_MAX_CAPTION_CHARS}" in text
        assert "64MiB" in text and DEFAULT_MAX_CLIP_BYTES == 64 * 1024 * 1024


def test_a_rotated_clip_converts_with_its_rotation_recorded(tmp_path: Path) -> None:
    data = rotated_clip(tmp_path / "r.mp4", 90, size=SIZE).read_bytes()
    src = _release(tmp_path / "up", [("00001.mp4", data, {}), ("00002.mp4", video_bytes(1.0, 8), {})])
    summary = convert(src, tmp_path / "out", progress=False)
    assert summary.written == 2, summary.rejects
    rows = pl.concat(pl.read_parquet(p) for p in (tmp_path / "out" / "metadata").glob("*.parquet"))
    assert dict(zip(rows["file_name"], rows["rotation"], strict=True)) == {"00001.mp4": 90, "00002.mp4": 0}


def test_an_out_in_or_around_the_source_is_refused_before_any_work(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medvideocap.cli import main

    src = make_upstream_release(tmp_path / "release", n_clips=1)
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(ValueError, match=re.escape(f"--out {src / 'hub'} lies inside the source {src}: ")):
        convert(src, src / "hub", progress=False)
    with pytest.raises(ValueError, match=re.escape(f"the source {src} lies inside --out {tmp_path}: ")):
        convert(src, tmp_path, progress=False)
    done = CliRunner().invoke(main, ["convert", str(src), "--out", str(src), "--no-progress"])
    assert done.exit_code == 1 and done.output.startswith(f"Error: --out {src} is the source {src} itself: ")
    assert sorted(p.name for p in src.iterdir()) == before  # nothing written into the source


# ---------------------------------------------------------------------------------------------------
# a disk that refuses a write (issue row 11): one line, exit 1, nothing half-written, an exact resume


@pytest.fixture(scope="module")
def release_and_clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("full")
    src = make_upstream_release(root / "upstream", n_clips=12)
    convert(src, root / "clean", shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False)
    return src, root / "clean"


def _cli_convert(src: Path, out: Path) -> Any:
    fractions = ",".join(map(str, FRACTIONS))
    return _cli(str(src), "--out", str(out), "--shard-size", str(SHARD_BYTES), "--fractions", fractions)


@pytest.mark.parametrize("size", [64 * 1024, 180 * 1024], ids=["full-while-writing-shards", "full-at-close"])
def test_a_full_disk_is_one_line_and_the_rerun_with_space_converts_the_same_bytes(
    release_and_clean: tuple[Path, Path], tmp_path: Path, size: int
) -> None:
    src, clean = release_and_clean
    disk = tmp_path / "disk"
    with tmpfs(disk, size):
        full = _cli_convert(src, disk / "out")
        assert full.exit_code == 1, full.output
        line = full.output.strip().splitlines()[-1]
        assert line.startswith(f"Error: {disk}/out/") and ": no space left on the device (" in line, line
        assert "Traceback" not in full.output and half_written(disk) == []
        resize(disk, 16 * 1024 * 1024)
        again = _cli_convert(src, disk / "out")
        assert again.exit_code == 0, again.output
        assert same_tree(clean, disk / "out") and half_written(disk) == []


def test_a_shard_write_the_disk_refuses_names_the_shard_and_the_bytes_it_needed(
    release_and_clean: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without root: the errno is injected where the writer appends a clip to its shard, after part
    of the member's bytes went in."""
    import tarfile

    src, clean = release_and_clean
    out = tmp_path / "out"
    real_addfile = tarfile.TarFile.addfile
    calls: list[int] = []

    def full_on_the_ninth(self: tarfile.TarFile, info: tarfile.TarInfo, fileobj: Any = None) -> None:
        calls.append(1)
        if len(calls) < 9:
            return real_addfile(self, info, fileobj)
        self.fileobj.write(b"\0" * 700)  # type: ignore[union-attr]
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(tarfile.TarFile, "addfile", full_on_the_ninth)
        full = _cli_convert(src, out)
    assert full.exit_code == 1, full.output
    said = full.output.strip()
    assert re.fullmatch(
        rf"Error: {re.escape(str(out))}/data/\w+/shard-\d{{5}}\.tar: no space left on the device "
        r"\(\d+\.\d kB needed, [^)]+ free\); free some space there, then run the same command again: "
        "it resumes where it stopped",
        said.splitlines()[-1],
    ), said
    assert half_written(out) == []
    again = _cli_convert(src, out)
    assert again.exit_code == 0, again.output
    assert same_tree(clean, out)


def test_limit_and_archives_convert_a_subset_recorded_in_the_recipe(tmp_path: Path) -> None:
    src = make_upstream_release(tmp_path / "up", n_clips=8)
    done = _cli(str(src), "--out", str(tmp_path / "first3"), "--limit", "3")
    assert done.exit_code == 0, done.output
    info = json.loads((tmp_path / "first3" / "meta" / "info.json").read_text())
    assert sum(info["counts"].values()) == 3
    assert info["recipe"]["upstream"]["subset"] == {"limit": 3, "archives": None}
    assert _ids(tmp_path / "first3") == ["00000", "00001", "00002"]

    done = _cli(str(src), "--out", str(tmp_path / "second"), "--archives", "videos_2.zip")
    assert done.exit_code == 0, done.output
    assert _ids(tmp_path / "second") == ["00001", "00003", "00005", "00007"]  # videos_2.zip: odd clips
    assert (
        not (tmp_path / "second" / "meta" / "rejects.parquet").exists()
        or not pl.read_parquet(tmp_path / "second" / "meta" / "rejects.parquet").height
    )  # the even clips' records are not "record_without_video"

    bad = _cli(str(src), "--out", str(tmp_path / "bad"), "--archives", "videos_7.zip")
    assert bad.exit_code == 1 and "no archive named ['videos_7.zip']" in bad.output
    with pytest.raises(WriterError, match="other settings"):  # a rerun must take the same subset
        convert(src, tmp_path / "first3", progress=False)


def _ids(out: Path) -> list[str]:
    return sorted(pl.concat([pl.read_parquet(p) for p in out.glob("metadata/*.parquet")])["id"].to_list())
