"""The upstream reader: paper-style JSON + zips of real mp4s -> typed records joined to decodable bytes."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import av
import pytest
from fixtures_upstream import (
    DURATIONS,
    RATES,
    make_upstream_release,
    paper_record,
    video_bytes,
    write_release,
    write_zip64,
    zeros_deflated,
)

from medvideocap.dataset import layout
from medvideocap.dataset.schema import Category, UnknownFieldsWarning
from medvideocap.dataset.upstream import (
    ALIASES,
    MemberReadError,
    MemberTooLargeError,
    UpstreamFormatError,
    UpstreamRelease,
    fetch_member,
    is_unsafe_member_name,
    normalise_key,
    parse_bit_rate,
    parse_duration,
    parse_fps,
    parse_resolution,
)
from medvideocap.media.probe import probe


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_upstream_release(tmp_path_factory.mktemp("upstream"), n_clips=6)


def _copy_with(tmp_path: Path, release_dir: Path, records: list[dict[str, Any]] | dict[str, Any]) -> Path:
    """The fixture's zips with another metadata file."""
    root = tmp_path / "release"
    root.mkdir()
    for z in release_dir.glob("*.zip"):
        (root / z.name).write_bytes(z.read_bytes())
    (root / "metadata.json").write_text(json.dumps(records))
    return root


def _records(release_dir: Path) -> list[dict[str, Any]]:
    return json.loads((release_dir / "metadata.json").read_text())


def test_reader_yields_typed_records_joined_to_decodable_bytes(release_dir: Path) -> None:
    release = UpstreamRelease.open(release_dir)
    clips = list(release.clips())
    assert [c.record.id for c in clips] == [f"{i:05d}" for i in range(6)]
    assert release.problems == []
    for i, clip in enumerate(clips):
        rec = clip.record
        assert (rec.width, rec.height) == (64, 48)
        assert rec.duration == DURATIONS[i % 3] and rec.fps == RATES[i % 3]
        member = f"{i:05d}.mp4" if i % 2 == 0 else f"videos_2/{i:05d}.mp4"  # the member's full name
        assert rec.file_name == member == clip.member and rec.split is None
        assert isinstance(rec.category, Category) and rec.category != Category.other
        assert rec.scores.aesthetic is not None and rec.scores.technical is not None
        assert rec.bit_rate is not None and 10_000 < rec.bit_rate < 200_000
        assert rec.camera_motion in ("static shot", "pan left", "zoom in")
        detailed = next(c for c in rec.captions if c.name == "detailed")
        assert (detailed.style, detailed.source, detailed.model) == ("detailed", "upstream", "gpt-4o")
        assert rec.caption("brief") and rec.caption("detailed")
        assert rec.extra == {}
        # decode the joined member with PyAV: the bytes are the real clip the record describes
        with av.open(io.BytesIO(clip.read_bytes())) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == round(rec.duration * rec.fps)
        assert (frames[0].width, frames[0].height) == (64, 48)


def test_groups_come_from_the_source_video_key(release_dir: Path) -> None:
    groups = {c.record.id: c.record.group for c in UpstreamRelease.open(release_dir).clips()}
    assert groups["00000"] == groups["00001"] == "yt_A"
    assert groups["00002"] == groups["00003"] == "yt_B"
    assert groups["00004"] != groups["00005"]


def test_members_in_folders_are_joined_and_streamed_without_extraction(release_dir: Path) -> None:
    before = sorted(p.name for p in release_dir.rglob("*"))
    release = UpstreamRelease.open(release_dir)
    clip = release.get("00001")
    assert clip.zip_path.name == "videos_2.zip" and clip.member == "videos_2/00001.mp4"
    with clip.open() as stream:
        info = probe(stream, name=clip.where, count_frames=True)
    assert (info.duration, info.fps, info.num_frames) == (1.5, 10.0, 15)
    assert sorted(p.name for p in release_dir.rglob("*")) == before  # nothing extracted
    assert len(release) == 6 and release.num_rows == 6
    with pytest.raises(KeyError, match="no clip"):
        release.get("nope")


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("Video Name", "file_name"),
        ("video", "file_name"),
        ("path", "file_name"),
        ("file_name", "file_name"),
        ("video_path", "file_name"),
        ("Resolution", "resolution"),
        ("Dover Score", "scores.technical"),
        ("DOVER", "scores.technical"),
        ("technical score", "scores.technical"),
        ("Aesthetic Score", "scores.aesthetic"),
        ("Video Bit Rate", "bit_rate"),
        ("bitrate", "bit_rate"),
        ("Camera Motion Type", "camera_motion"),
        ("Video Categories", "category"),
        ("category", "category"),
        ("Brief Caption", "captions.brief"),
        ("Short Caption", "captions.brief"),
        ("Detailed Caption", "captions.detailed"),
        ("Caption", "captions.detailed"),
        ("Source Video", "source.video_id"),
        ("Title", "source.title"),
        ("transcript", "source.transcript"),
        ("URL", "source.url"),
    ],
)
def test_alias_table_maps_paper_and_common_spellings(key: str, target: str) -> None:
    assert ALIASES[normalise_key(key)] == target


def test_value_parsers_understand_units() -> None:
    assert parse_resolution("720*480") == (720, 480)
    assert parse_resolution("720x480") == (720, 480)
    assert parse_resolution("720 × 480") == (720, 480)
    assert parse_resolution([720, 480]) == (720, 480)
    assert parse_bit_rate("1.2 Mbps") == 1_200_000
    assert parse_bit_rate("1200 kb/s") == 1_200_000
    assert parse_bit_rate("850kbps") == 850_000
    assert parse_bit_rate(1_000_000) == 1_000_000
    assert parse_duration("8.99 s") == 8.99
    assert parse_duration("00:00:08.50") == 8.5
    assert parse_duration(8.99) == 8.99
    assert parse_fps("30000/1001") == pytest.approx(29.97, abs=0.01)
    assert parse_fps("25 fps") == 25.0
    for parser, bad in [
        (parse_resolution, "big"),
        (parse_bit_rate, "fast"),
        (parse_duration, "long"),
        (parse_fps, "x"),
    ]:
        with pytest.raises(ValueError):
            parser(bad)


def test_other_key_spellings_and_string_values_are_read(tmp_path: Path, release_dir: Path) -> None:
    rows = []
    for row in _records(release_dir):
        rows.append(
            {
                "video_path": f"clips/{row['Video Name']}",
                "resolution": "64x48",
                "bitrate": "0.03 Mbps",
                "DOVER": str(row["Dover Score"]),
                "aesthetic": row["Aesthetic Score"],
                "duration": f"{row['Duration']} s",
                "frame_rate": f"{row['FPS']} fps",
                "category": [row["Video Categories"]],
                "Short Caption": row["Brief Caption"],
                "Caption": row["Detailed Caption"],
                "title": "Bedside teaching",
                "url": "https://example.org/v",
            }
        )
    root = _copy_with(tmp_path, release_dir, {"version": "1", "data": rows})
    release = UpstreamRelease.open(root)
    clips = list(release.clips())
    assert release.problems == []
    assert len(clips) == 6
    rec = clips[1].record
    assert rec.bit_rate == 30_000 and rec.fps == 10.0 and rec.duration == 1.5
    assert rec.scores.technical == pytest.approx(0.55)
    assert rec.category == Category.clinical_practice
    assert rec.source.title == "Bedside teaching" and rec.source.url == "https://example.org/v"
    assert rec.caption("brief") and rec.caption("detailed")


def test_object_keyed_by_video_name_is_read(tmp_path: Path, release_dir: Path) -> None:
    keyed = {}
    for row in _records(release_dir):
        name = row.pop("Video Name")
        keyed[name] = row
    release = UpstreamRelease.open(_copy_with(tmp_path, release_dir, keyed))
    assert [c.record.id for c in release.clips()] == [f"{i:05d}" for i in range(6)]
    assert release.problems == []


def test_missing_video_name_field_fails_listing_keys_and_aliases(tmp_path: Path, release_dir: Path) -> None:
    rows = _records(release_dir)
    for row in rows:
        row["clip_identifier"] = row.pop("Video Name")
    release = UpstreamRelease.open(_copy_with(tmp_path, release_dir, rows))
    with pytest.raises(UpstreamFormatError) as info:
        release.scan()
    message = str(info.value)
    assert "no video name field" in message
    assert "clip_identifier" in message  # the keys seen
    assert "videoname" in message and "videopath" in message  # the aliases accepted


def test_media_facts_missing_from_the_json_are_read_from_the_video(tmp_path: Path, release_dir: Path) -> None:
    rows = _records(release_dir)
    for row in rows:
        del row["FPS"], row["Resolution"]
    del rows[2]["Duration"]
    release = UpstreamRelease.open(_copy_with(tmp_path, release_dir, rows))
    records = {c.record.id: c.record for c in release.clips()}
    assert len(records) == 6
    assert [r.fps for r in records.values()] == [8.0, 10.0, 12.0] * 2
    assert records["00002"].duration == 2.0 and (records["00002"].width, records["00002"].height) == (64, 48)
    assert sorted((p.kind, p.message.split(": ", 1)[1]) for p in release.problems) == [
        ("filled_from_video", "1 records have no duration/fps/width/height; taken from their video files"),
        ("filled_from_video", "5 records have no fps/width/height; taken from their video files"),
    ]


def test_missing_media_facts_without_a_video_are_an_invalid_record(tmp_path: Path, release_dir: Path) -> None:
    rows = _records(release_dir)
    rows.append({**rows[0], "Video Name": "77777.mp4"})
    del rows[-1]["Duration"]
    release = UpstreamRelease.open(_copy_with(tmp_path, release_dir, rows))
    assert len(release) == 6
    (problem,) = release.problems
    assert problem.kind == "invalid_record"
    assert "77777.mp4" in problem.message and "duration" in problem.message and "missing" in problem.message


def test_unknown_keys_are_kept_and_warned_once_per_key(tmp_path: Path, release_dir: Path) -> None:
    rows = _records(release_dir)
    for row in rows:
        row["Uploader Notes"] = "x"
    release = UpstreamRelease.open(_copy_with(tmp_path, release_dir, rows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clips = list(release.clips())
    assert all(c.record.extra == {"Uploader Notes": "x"} for c in clips)
    assert [w.category for w in caught] == [UnknownFieldsWarning]
    assert [p.kind for p in release.problems] == ["unknown_key"]
    assert "Uploader Notes" in release.problems[0].message


@pytest.mark.parametrize("name", ["../x.mp4", "/abs/x.mp4", "a/../../x.mp4", "C:\\x.mp4", "..\\x.mp4"])
def test_names_escaping_the_root_are_unsafe(name: str) -> None:
    assert is_unsafe_member_name(name)


@pytest.mark.parametrize("name", ["x.mp4", "videos_2/x.mp4", "a/b/..x.mp4"])
def test_ordinary_names_are_safe(name: str) -> None:
    assert not is_unsafe_member_name(name)


def test_absolute_member_and_cross_zip_duplicate_are_reported(tmp_path: Path, release_dir: Path) -> None:
    root = _copy_with(tmp_path, release_dir, _records(release_dir))
    good = (UpstreamRelease.open(release_dir).get("00000")).read_bytes()
    with zipfile.ZipFile(root / "videos_3.zip", "w") as zf:
        zf.writestr("/etc/evil.mp4", good)
        zf.writestr("more/00000.mp4", good)
    release = UpstreamRelease.open(root)
    assert len(list(release.clips())) == 6
    kinds = {(p.kind, p.where) for p in release.problems}
    assert ("unsafe_member_name", "videos_3.zip:/etc/evil.mp4") in kinds
    assert ("duplicate_name", "videos_3.zip:more/00000.mp4") in kinds
    assert release.get("00000").zip_path.name == "videos_1.zip"  # the first one is kept


def test_a_rewritten_zip_is_read_afresh(tmp_path: Path) -> None:
    """Zip handles are cached per process; rewriting an archive in place must not serve stale members."""
    root = make_upstream_release(tmp_path, n_clips=2)
    assert len(UpstreamRelease.open(root)) == 2
    make_upstream_release(root, n_clips=4)
    release = UpstreamRelease.open(root)
    assert len(release) == 4
    assert len(release.get("00002").read_bytes()) > 0


def test_detection_of_the_layout(release_dir: Path, tmp_path: Path) -> None:
    assert layout.is_upstream_release(release_dir)
    assert layout.resolve(release_dir) == ("upstream", release_dir)
    assert not layout.is_upstream_release(tmp_path)
    with pytest.raises(layout.LayoutError, match="not a dataset folder"):
        layout.resolve(tmp_path)
    with pytest.raises(layout.LayoutError, match="not a Hub repo id"):
        layout.resolve(tmp_path / "missing" / "deeper" / "path")


def test_repo_ids_are_downloaded_only_when_asked(release_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: snapshot_download is replaced by a fake that records its arguments. The zips are
    fetched only with download=True; locate() of a repo id fetches its metadata and leaves the zips on
    the Hub (read where they lie, see test_upstream_remote.py)."""
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(release_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    repo = "FreedomIntelligence/MedVideoCap-55K"
    release = UpstreamRelease.open(repo, revision="abc123", download=True)
    assert len(release) == 6 and release.location is None
    (call,) = calls
    assert call["repo_id"] == repo
    assert call["repo_type"] == "dataset" and call["revision"] == "abc123"
    assert "*.json" in call["allow_patterns"] and "videos_*.zip" in call["allow_patterns"]

    calls.clear()
    assert layout.resolve(repo, videos=False) == ("upstream", release_dir)
    assert len(calls) == 1 and not any("zip" in p for p in calls[0]["allow_patterns"])
    calls.clear()
    kind, location = layout.locate(repo, "abc123")
    assert kind == "upstream" and location.url == "hf://datasets/FreedomIntelligence/MedVideoCap-55K@abc123"
    assert len(calls) == 1 and not any("zip" in p for p in calls[0]["allow_patterns"])


def test_hub_failures_become_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(**kwargs: Any) -> str:
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(layout.LayoutError, match="owner/missing: cannot fetch .*network is unreachable"):
        UpstreamRelease.open("owner/missing", download=True)


def test_every_alias_is_documented_in_the_module_docstring() -> None:
    import re

    import medvideocap.dataset.upstream as upstream

    documented = set(re.findall(r"[a-z0-9]+", upstream.__doc__ or ""))
    assert sorted(k for k in ALIASES if k not in documented) == []
    for target in set(ALIASES.values()) - {"resolution"}:
        assert target.split(".")[-1] in (upstream.__doc__ or ""), target


def test_unknown_category_keeps_the_clip_as_other(tmp_path: Path, release_dir: Path) -> None:
    rows = _records(release_dir)
    rows[0]["Video Categories"] = "Health News"
    rows[1]["Video Categories"] = "Health News"
    rows[2]["Video Categories"] = ["Medical Imaging", "Medical Teaching"]
    release = UpstreamRelease.open(_copy_with(tmp_path, release_dir, rows))
    clips = {c.record.id: c.record for c in release.clips()}
    assert len(clips) == 6
    assert clips["00000"].category == Category.other
    assert clips["00000"].extra == {"Video Categories": "Health News"}
    assert clips["00002"].category == Category.medical_imaging  # a list: the first is the category
    assert [p.kind for p in release.problems] == ["unknown_category"]  # once per distinct value
    assert "Health News" in release.problems[0].message


# ---------------------------------------------------------------------------------------------------
# hostile archives: colliding ids, folders in names, cut-off central directories, oversized members


def _clip_release(root: Path, names: list[str], *, fps: int = 8) -> tuple[Path, dict[str, bytes]]:
    """One zip holding a real 1-s clip under each member name, and a record per name."""
    data = video_bytes(1.0, fps)
    members = [(name, data) for name in names]
    records = [paper_record(name, 200 + i, 1.0, fps, len(data)) for i, name in enumerate(names)]
    return write_release(root, {"videos_1.zip": members}, records), dict(members)


def test_names_that_clean_up_to_one_id_get_distinct_ids_by_a_fixed_rule(tmp_path: Path) -> None:
    names = ["a b.mp4", "a_b.mp4", "a+b.mp4", "a_b-2.mp4", "c.mp4"]
    root, _ = _clip_release(tmp_path / "r", names)
    release = UpstreamRelease.open(root)
    by_name = {c.record.file_name: c.record for c in release.clips()}
    assert len(by_name) == 5
    # the clean name keeps the id; the others are suffixed in sorted order, skipping ids already taken
    assert {n: r.id for n, r in by_name.items()} == {
        "a_b.mp4": "a_b",
        "a b.mp4": "a_b-3",
        "a+b.mp4": "a_b-4",
        "a_b-2.mp4": "a_b-2",
        "c.mp4": "c",
    }
    how = by_name["a b.mp4"].extra["id_collision"]
    assert how["cleaned_id"] == "a_b" and how["kept_by"] == "a_b.mp4"
    assert "id_collision" not in by_name["a_b.mp4"].extra
    collisions = [p for p in release.problems if p.kind == "id_collision"]
    assert len(collisions) == 2 and "'a b.mp4'" in collisions[0].message + collisions[1].message
    # the same rule whatever the order of the JSON
    records = json.loads((root / "metadata.json").read_text())
    (root / "metadata.json").write_text(json.dumps(records[::-1]))
    again = {c.record.file_name: c.record.id for c in UpstreamRelease.open(root).clips()}
    assert again == {n: r.id for n, r in by_name.items()}


def test_member_names_with_folders_are_kept_whole_in_the_record(tmp_path: Path) -> None:
    data = video_bytes(1.0, 8)
    zips = {"videos_1.zip": [("clips/day 1/00010.mp4", data), ("videos_1/00011.mp4", data)]}
    records = [
        paper_record("clips/day 1/00010.mp4", 10, 1.0, 8, len(data)),
        paper_record("elsewhere/00011.mp4", 11, 1.0, 8, len(data)),
    ]
    release = UpstreamRelease.open(write_release(tmp_path / "r", zips, records))
    first, second = release.clips()
    assert (first.record.id, first.record.file_name) == ("00010", "clips/day 1/00010.mp4")
    assert first.record.extra == {}
    # the member's name is the record's; the JSON's other folder is kept, not lost
    assert (second.record.id, second.record.file_name) == ("00011", "videos_1/00011.mp4")
    assert second.record.extra == {"Video Name": "elsewhere/00011.mp4"}
    assert probe(first.read_bytes()).num_frames == 8


def _cut(archive: Path, at: int) -> None:
    archive.write_bytes(archive.read_bytes()[:at])


def test_a_zip_without_its_central_directory_gives_back_every_intact_member(tmp_path: Path) -> None:
    names = [f"{i:05d}.mp4" for i in range(4)]
    root, members = _clip_release(tmp_path / "r", names)
    archive = root / "videos_1.zip"
    with zipfile.ZipFile(archive) as zf:
        start_dir = zf.start_dir
    _cut(archive, start_dir)  # the download stopped where the central directory starts
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(archive)
    release = UpstreamRelease.open(root)
    clips = list(release.clips())
    assert [c.record.file_name for c in clips] == names
    for clip in clips:
        assert clip.read_bytes() == members[clip.member]
        with clip.open() as stream:  # seekable, for the demuxer
            assert probe(stream, count_frames=True).num_frames == 8
    assert [(p.kind, p.where) for p in release.problems] == [("damaged_archive", "videos_1.zip")]
    assert "recovered 4" in release.problems[0].message


def test_a_zip_cut_inside_a_member_gives_back_the_members_before_it(tmp_path: Path) -> None:
    names = [f"{i:05d}.mp4" for i in range(4)]
    root, members = _clip_release(tmp_path / "r", names)
    archive = root / "videos_1.zip"
    with zipfile.ZipFile(archive) as zf:
        third = zf.getinfo("00002.mp4")
    _cut(archive, third.header_offset + 30 + len("00002.mp4") + third.file_size // 2)
    release = UpstreamRelease.open(root)
    assert [c.record.id for c in release.clips()] == ["00000", "00001"]
    assert all(c.read_bytes() == members[c.member] for c in release.clips())
    kinds = {(p.kind, p.where) for p in release.problems}
    assert ("damaged_archive", "videos_1.zip") in kinds
    assert ("unreadable_member", "videos_1.zip:00002.mp4") in kinds  # named, with why
    assert ("record_without_video", "metadata.json row 3 (00003.mp4)") in kinds  # after the cut: lost
    cut = next(p for p in release.problems if p.kind == "unreadable_member")
    assert "cut short" in cut.message


def test_a_recovered_member_that_fails_its_crc_is_refused(tmp_path: Path) -> None:
    root, _ = _clip_release(tmp_path / "r", ["00000.mp4", "00001.mp4"])
    archive = root / "videos_1.zip"
    with zipfile.ZipFile(archive) as zf:
        start_dir, first = zf.start_dir, zf.getinfo("00000.mp4")
    data = bytearray(archive.read_bytes()[:start_dir])
    data[first.header_offset + 30 + len(first.filename) + 100] ^= 0xFF
    archive.write_bytes(bytes(data))
    clip = UpstreamRelease.open(root).get("00000")
    with pytest.raises(MemberReadError, match="CRC"):
        clip.read_bytes()
    assert len(UpstreamRelease.open(root).get("00001").read_bytes()) > 0


def test_recovered_names_escaping_the_archive_are_refused(tmp_path: Path) -> None:
    root, _ = _clip_release(tmp_path / "r", ["00000.mp4", "../00001.mp4", "/abs/00002.mp4"])
    archive = root / "videos_1.zip"
    with zipfile.ZipFile(archive) as zf:
        start_dir = zf.start_dir
    _cut(archive, start_dir)
    release = UpstreamRelease.open(root)
    assert [c.record.id for c in release.clips()] == ["00000"]
    unsafe = {p.where for p in release.problems if p.kind == "unsafe_member_name"}
    assert unsafe == {"videos_1.zip:../00001.mp4", "videos_1.zip:/abs/00002.mp4"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["r", "metadata.json", "videos_1.zip"])


def test_garbage_named_zip_fails_loudly(tmp_path: Path) -> None:
    root, _ = _clip_release(tmp_path / "r", ["00000.mp4"])
    (root / "videos_2.zip").write_bytes(b"not a zip at all " * 100)
    release = UpstreamRelease.open(root)
    assert len(release) == 1
    bad = next(p for p in release.problems if p.where == "videos_2.zip")
    assert bad.kind == "unreadable_member" and "no member was found" in bad.message


def test_members_over_the_clip_bound_are_reported_and_never_read(tmp_path: Path) -> None:
    root, members = _clip_release(tmp_path / "r", ["00000.mp4"])
    payload, crc = zeros_deflated(64 << 20)
    data = members["00000.mp4"]
    write_zip64(
        root / "videos_1.zip",
        [("00000.mp4", data, 0, zipfile.crc32(data), len(data)), ("big.mp4", payload, 8, crc, 64 << 20)],
    )
    records = json.loads((root / "metadata.json").read_text())
    (root / "metadata.json").write_text(json.dumps([*records, paper_record("big.mp4", 9, 1.0, 8, 64 << 20)]))
    release = UpstreamRelease.open(root, max_clip_bytes=32 << 20)
    assert [c.record.id for c in release.clips()] == ["00000"]
    too_large = [p for p in release.problems if p.kind == "member_too_large"]
    assert [p.where for p in too_large] == ["videos_1.zip:big.mp4"] and len(release.problems) == 1
    assert "67108864 bytes" in too_large[0].message and "--max-clip-bytes" in too_large[0].message
    # the bound holds while streaming too, on disk or in memory
    with pytest.raises(MemberTooLargeError, match="inflates past 1000 bytes"):
        fetch_member(root / "videos_1.zip", "00000.mp4", max_bytes=1000)
    spilled = fetch_member(root / "videos_1.zip", "big.mp4", scratch=tmp_path, memory_bytes=1 << 20)
    assert isinstance(spilled, Path) and spilled.stat().st_size == 64 << 20
    spilled.unlink()
    assert fetch_member(root / "videos_1.zip", "00000.mp4", scratch=tmp_path) == data


def test_a_cut_zip_written_with_data_descriptors_fails_loudly_naming_the_member(tmp_path: Path) -> None:
    class Unseekable(io.RawIOBase):  # zipfile then writes data descriptors (sizes after the data)
        def __init__(self) -> None:
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.buf += bytes(b)
            return len(b)

    root, members = _clip_release(tmp_path / "r", ["00000.mp4"])
    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("00000.mp4", members["00000.mp4"])
    data = bytes(sink.buf)
    (root / "videos_1.zip").write_bytes(data[: data.index(b"PK\x01\x02")])
    release = UpstreamRelease.open(root)
    assert list(release.clips()) == []
    problem = next(p for p in release.problems if p.kind == "unreadable_member")
    assert problem.where == "videos_1.zip:00000.mp4" and "data descriptor" in problem.message
