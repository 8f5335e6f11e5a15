"""End-to-end builds from a raw/ folder made to trip each stage, plus the real clips."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures_build import EXPECTED_REJECTS, SCENE_CUTS, make_raw, tree_bytes
from fixtures_disk import half_written, resize, tmpfs
from videos import make_video

from medvideocap.build import build
from medvideocap.dataset.schema import ClipRecord
from medvideocap.media.probe import probe


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("build") / "raw")


@pytest.fixture(scope="module")
def reference(raw: Path):
    """The uninterrupted build everything else is compared with (2 local workers)."""
    out = raw.parent / "reference"
    result = build(raw, out, recipe="demo", workers=2)
    return out, result


def _records(out: Path) -> dict[str, ClipRecord]:
    records = {}
    for shard in sorted((out / "data").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    data = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    records[data["id"]] = ClipRecord.from_json_dict(data, where=member.name)
    return records


def test_each_tripwire_input_is_rejected_at_its_stage_with_its_reason(reference) -> None:
    out, result = reference
    rejects = pq.read_table(out / "meta" / "rejects.parquet").to_pylist()
    by_input = {
        r["input"].split("#")[0]: r for r in rejects
    }  # clip rejects read "bars.mp4#000 (0.00-3.00 s)"
    for name, (stage, code) in EXPECTED_REJECTS.items():
        assert name in by_input, f"{name} not in rejects: {sorted(by_input)}"
        assert by_input[name]["stage"] == stage, by_input[name]
        assert by_input[name]["reason"].startswith(f"{code}: "), by_input[name]
    assert "corrupt.mp4" in by_input["corrupt.mp4"]["reason"]  # the reason names the file
    static_scores = json.loads(by_input["static.mp4"]["scores"])
    assert static_scores["motion"] < 0.5 and static_scores["sharpness"] > 100  # scores kept for rejects too


def test_survivors_are_the_clean_generated_clips_and_real_clips(reference) -> None:
    out, result = reference
    records = _records(out)
    assert {"good-000", "scenes-000", "scenes-001", "scenes-002", "lecture-000", "ward-000"} <= set(records)
    assert any(i.startswith("bikes-") for i in records) and any(
        i.startswith("bigbuckbunny-") for i in records
    )
    assert not any(i.split("-")[0] in {n.split(".")[0] for n in EXPECTED_REJECTS} for i in records)
    assert result.kept == len(records)
    for record in records.values():
        assert record.duration >= 2.0 - 0.2, record.id
        assert record.height >= 96


def test_scene_cuts_are_found_within_a_second_of_where_they_were_made(reference) -> None:
    records = _records(reference[0])
    scenes = sorted((r for r in records.values() if r.id.startswith("scenes-")), key=lambda r: r.id)
    assert len(scenes) == 3
    starts = [r.source.start for r in scenes[1:]]
    for found, made in zip(starts, SCENE_CUTS, strict=True):
        assert found is not None and abs(found - made) <= 1.0, (starts, SCENE_CUTS)
    assert [round(c) for c in scenes[0].extra["cuts"]] == [round(c) for c in SCENE_CUTS]


def test_every_kept_clip_stores_its_scores_and_camera_motion_provenance(reference) -> None:
    for record in _records(reference[0]).values():
        s = record.scores
        assert None not in (s.sharpness, s.motion, s.temporal_consistency, s.black_border), record.id
        assert s.sharpness > 100 and s.motion > 0.5 and 0 <= s.temporal_consistency <= 1
        assert record.camera_motion in {
            "static shot",
            "pan left",
            "pan right",
            "tilt up",
            "tilt down",
            "zoom in",
            "zoom out",
        }
        assert "heuristic" in record.extra["camera_motion_method"]
        assert s.get("camera_pan_speed") is not None


def test_sidecar_metadata_gives_context_category_and_captions(reference) -> None:
    records = _records(reference[0])
    good = records["good-000"]
    assert good.source.title == "Interrupted suture demonstration" and good.group == "yt-good"
    assert good.category == "clinical_practice" and good.extra["category_source"] == "sidecar"
    assert good.caption("brief") == "A moving test pattern." and good.captions[0].source == "sidecar"
    assert all(records[f"scenes-00{i}"].category == "medical_animation" for i in range(3))
    assert records["scenes-000"].extra["sidecar"] == {"license": "CC-BY-4.0"}  # unknown sidecar keys are kept
    assert (
        records["lecture-000"].category == "other"
        and records["lecture-000"].extra["category_source"] == "default"
    )


def test_cuts_on_keyframes_are_stream_copied_and_others_re_encoded(reference) -> None:
    records = _records(reference[0])
    assert records["good-000"].extra["cut"] == "stream-copy"  # whole H.264 file: starts on its keyframe
    assert records["scenes-001"].extra["cut"] == "re-encode"  # starts mid-GOP at 2.5 s
    assert (
        records["lecture-000"].extra["cut"] == "re-encode" and records["lecture-000"].codec == "h264"
    )  # VP8 in


def test_clips_are_standalone_h264_mp4s_matching_their_span(reference, tmp_path: Path) -> None:
    out, _ = reference
    records = _records(out)
    for shard in sorted((out / "data").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".mp4"):
                    path = tmp_path / member.name
                    path.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
                    info = probe(path, count_frames=True)
                    record = records[member.name[:-4]]
                    assert info.codec == "h264" and not info.has_audio
                    assert abs(info.duration - (record.source.end - record.source.start)) < 0.3, member.name
                    assert (info.width, info.height) == (record.width, record.height)


def test_load_dataset_reads_the_built_dataset(reference) -> None:
    datasets = pytest.importorskip("datasets")
    out, result = reference
    ds = datasets.load_dataset(str(out))
    total = sum(len(split) for split in ds.values())
    assert total == result.kept
    first = next(iter(ds.values()))[0]
    assert json.loads(first["json"])["id"] if isinstance(first["json"], str) else first["json"]["id"]


def test_funnel_is_saved_with_counts_and_reasons(reference) -> None:
    out, result = reference
    funnel = json.loads((out / "meta" / "funnel.json").read_text())
    rows = {r["stage"]: r for r in funnel["stages"]}
    assert rows["probe"]["in"] == result.inputs == 14
    assert rows["probe"]["dropped"] == 5 and rows["probe"]["out"] == 9
    assert rows["split"]["in"] == 9 and rows["split"]["out"] == rows["black_border"]["in"]
    assert {r["code"] for r in rows["probe"]["top_reasons"]} <= {
        "empty",
        "no_video_stream",
        "not_video",
        "unreadable",
        "too_short",
    }
    assert rows["measures"]["dropped"] == 2
    assert funnel["clips"] == result.kept == rows["caption"]["out"]
    # where the time went: seconds per stage, the one decode and the one encode, and the real-time factor
    took = funnel["time"]
    stage_seconds = sum(r["seconds"] for r in funnel["stages"])
    assert rows["split"]["seconds"] > 0 and all(r["seconds"] >= 0 for r in funnel["stages"])
    assert took["decode_seconds"] > 0 and took["encode_seconds"] > 0  # clips were kept, so written once
    assert took["processing_seconds"] == pytest.approx(
        stage_seconds + took["decode_seconds"] + took["encode_seconds"], abs=0.02
    )
    assert took["video_seconds"] > 0
    assert took["realtime_factor_per_worker"] == pytest.approx(
        took["video_seconds"] / took["processing_seconds"], rel=0.01
    )


def test_a_killed_build_resumes_into_the_same_bytes(raw: Path, reference, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "medvideocap",
        "build",
        "--recipe",
        "demo",
        "--src",
        str(raw),
        "--out",
        str(out),
        "--recipe",
        "demo",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = Path(str(out) + ".build") / "journal"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_dir() and len(list(journal.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        f"build ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(journal.glob("*.json")))
    assert 0 < finished < reference[1].inputs
    assert not (out / "meta" / "info.json").exists()

    result = build(raw, out, recipe="demo", workers=1)
    assert result.resumed == finished
    assert tree_bytes(out) == tree_bytes(reference[0])


def test_rerunning_a_finished_build_changes_nothing(raw: Path, reference) -> None:
    out, first = reference
    before = tree_bytes(out)
    again = build(raw, out, recipe="demo", workers=1)
    assert again.resumed == first.inputs and again.kept == first.kept
    assert tree_bytes(out) == before


def test_ray_engine_builds_the_same_dataset_as_the_local_pool(raw: Path, reference, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        build(raw, tmp_path / "ray", recipe="demo", engine="ray")
    finally:
        ray.shutdown()
    assert tree_bytes(tmp_path / "ray") == tree_bytes(reference[0])


# ------------------------------------------------------------------------------------------------
# hostile source folders (issue 12 items 9, 10, 12): small raw folders of real clips

BAD_NAME = os.fsdecode(b"bad\xff\xfe.mp4")  # not UTF-8: Python keeps the bytes as lone surrogates


def _small_raw(root: Path) -> Path:
    from videos import make_video

    make_video(root / "good.mp4", seconds=3, fps=8, size=(160, 120))
    make_video(root / "other.mp4", seconds=3, fps=8, size=(160, 120), source="mandelbrot=size=160x120:rate=8")
    return root


def _cli_build(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "medvideocap", "build", "--recipe", "demo", "--workers", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300)


def test_a_file_name_that_is_not_utf8_is_built_under_an_escaped_name(tmp_path: Path) -> None:
    raw = _small_raw(tmp_path / "raw")
    (raw / BAD_NAME).write_bytes((raw / "good.mp4").read_bytes())
    out = tmp_path / "out"
    done = _cli_build("--src", str(raw), "--out", str(out), "--name", "Ward videos")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    card = (out / "README.md").read_text()
    assert "# Ward videos\n" in card and "from raw/" in card and "MedVideoCap-55K (hub-native)" not in card
    records = _records(out)
    assert {"good-000", "other-000"} <= set(records)  # the good inputs next to it are built
    [bad] = [r for r in records.values() if r.extra["input"] != r.id.rsplit("-", 1)[0] + ".mp4"]
    assert bad.extra["input"] == "bad\\xff\\xfe.mp4" and bad.id == "bad_xff_xfe-000"
    before = tree_bytes(out)
    again = _cli_build(
        "--src", str(raw), "--out", str(out), "--name", "Ward videos"
    )  # the journal round-trips the name
    assert again.returncode == 0, again.stderr[-3000:]
    assert tree_bytes(out) == before


def test_symlinks_are_refused_by_default_and_followed_only_when_asked(tmp_path: Path) -> None:
    raw = _small_raw(tmp_path / "raw")
    outside = _small_raw(tmp_path / "outside")
    (raw / "link.mp4").symlink_to(outside / "other.mp4")
    (raw / "linked_dir").symlink_to(outside, target_is_directory=True)
    (raw / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")

    result = build(raw, tmp_path / "out", recipe="demo", workers=1)
    rejects = {
        r["input"]: r for r in pq.read_table(tmp_path / "out" / "meta" / "rejects.parquet").to_pylist()
    }
    for name in ("link.mp4", "linked_dir", "dangling.mp4"):
        assert rejects[name]["stage"] == "source", rejects
        assert (
            rejects[name]["reason"].startswith("symlink: ") and "--follow-symlinks" in rejects[name]["reason"]
        )
    assert "outside the source folder" in rejects["link.mp4"]["reason"]
    assert set(_records(tmp_path / "out")) == {"good-000", "other-000"}
    source_row = json.loads((tmp_path / "out" / "meta" / "funnel.json").read_text())["stages"][0]
    assert (source_row["stage"], source_row["in"], source_row["out"]) == ("source", 5, 2)
    assert result.kept == 2

    followed = build(raw, tmp_path / "followed", recipe="demo", workers=1, follow_symlinks=True)
    ids = set(_records(tmp_path / "followed"))
    assert {"good-000", "other-000", "link-000", "linked_dir_good-000", "linked_dir_other-000"} <= ids
    rejects = pq.read_table(tmp_path / "followed" / "meta" / "rejects.parquet").to_pylist()
    assert [(r["input"], r["reason"].split(":")[0]) for r in rejects] == [("dangling.mp4", "broken_symlink")]
    assert followed.kept == len(ids)


def test_a_deleted_output_is_rebuilt_by_running_the_same_command_again(tmp_path: Path) -> None:
    raw = _small_raw(tmp_path / "raw")
    out = tmp_path / "out"
    first = _cli_build("--src", str(raw), "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    reference = tree_bytes(out)
    assert not (tmp_path / "out.build" / "clips").exists()  # a finished build removed its cut clips

    shutil.rmtree(out)
    again = _cli_build("--src", str(raw), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "journal" not in again.stderr and "redoing 2 processed inputs" in again.stderr
    assert tree_bytes(out) == reference

    for shard in (out / "data").rglob("*.tar"):  # only the shards lost: meta/ is still there
        shard.unlink()
    third = _cli_build("--src", str(raw), "--out", str(out))
    assert third.returncode == 0, third.stderr[-3000:]
    assert tree_bytes(out) == reference


def test_a_build_that_keeps_no_clip_exits_1_naming_where_the_reasons_are(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_video(raw / "short.mp4", seconds=1.0, fps=8, size=(128, 96))  # the demo recipe wants >= 2 s
    done = _cli_build("--src", str(raw), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "kept no clip" in done.stderr and "rejects.parquet" in done.stderr


def test_an_out_or_work_folder_in_or_around_src_is_refused_before_any_work(tmp_path: Path) -> None:
    """``build --out src/out`` used to write the dataset into the source tree, which the next run
    scanned as input. Every overlap is refused in one line naming both folders; nothing is written."""
    from click.testing import CliRunner

    from medvideocap.cli import main

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "good.mp4").write_bytes(b"not read")
    link, out = tmp_path / "link", tmp_path / "out"
    link.symlink_to(raw, target_is_directory=True)
    cases = [
        (["--out", str(raw / "out")], f"--out {raw / 'out'} lies inside --src {raw}"),
        (["--out", str(raw)], f"--out {raw} is --src {raw} itself"),
        (["--out", str(link)], f"--out {link} is --src {raw} itself"),  # a link to the source is it
        (["--out", str(tmp_path)], f"--src {raw} lies inside --out {tmp_path}"),
        (["--out", str(out), "--work", str(raw / "work")], f"--work {raw / 'work'} lies inside --src {raw}"),
    ]
    for args, says in cases:
        done = CliRunner().invoke(main, ["build", "--src", str(raw), *args, "--recipe", "demo"])
        line = done.output.strip()
        assert done.exit_code == 1 and "\n" not in line and line.startswith(f"Error: {says}: "), done.output
    assert [p.name for p in raw.iterdir()] == ["good.mp4"] and not out.exists()


def test_a_symlink_loop_under_src_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from click.testing import CliRunner

    from medvideocap.build.pipeline import scan
    from medvideocap.cli import main

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "good.mp4").write_bytes(b"a video")
    (raw / "loop.mp4").symlink_to("loop.mp4")
    (raw / "a.mp4").symlink_to("b.mp4")
    (raw / "b.mp4").symlink_to("a.mp4")
    for follow in (False, True):  # a loop is never readable: the same verdict either way
        caplog.clear()
        with caplog.at_level("WARNING", logger="medvideocap.build.pipeline"):
            found = scan(raw, follow_symlinks=follow)
        assert [s.input for s in found.samples] == ["good.mp4"]
        refused = {o.input: o.reason or "" for o in found.refused}
        assert sorted(refused) == ["a.mp4", "b.mp4", "loop.mp4"]
        for name, reason in refused.items():
            assert reason.startswith(f"symlink_loop: {raw / name} is a symlink loop"), reason
            assert "--follow-symlinks" not in reason
        assert sorted(r.getMessage().split(" ")[0] for r in caplog.records) == [
            str(raw / n) for n in ("a.mp4", "b.mp4", "loop.mp4")
        ]

    (tmp_path / "src").symlink_to("src")  # --src itself a loop: one line, not pathlib's RuntimeError
    done = CliRunner().invoke(main, ["build", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    said = done.output
    assert done.exit_code == 1 and said.startswith(
        f"Error: --src {tmp_path / 'src'}: runs through a symlink loop"
    )


# ------------------------------------------------------------------------------------------------
# one writer per output, and a disk that refuses a write (issue rows 10 and 11)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Two small real inputs and the bytes of their uninterrupted build."""
    root = tmp_path_factory.mktemp("small")
    raw = _small_raw(root / "raw")
    done = _cli_build("--src", str(raw), "--out", str(root / "reference"))
    assert done.returncode == 0, done.stderr[-3000:]
    return raw, tree_bytes(root / "reference")


def _one_line(text: str) -> str:
    """Rich wraps long log lines; compare messages with their whitespace made single spaces."""
    return " ".join(text.split())


def test_a_second_build_on_the_same_out_exits_1_naming_the_first(small, tmp_path: Path) -> None:
    """Two real builds on one --out: the second stops before any work, naming the first (pid, host,
    since when); once the first is killed, its lock is taken over with a warning and the build runs."""
    raw, reference = small
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "medvideocap", "build", "--recipe", "demo", "--workers", "1"]
        + ["--src", str(raw), "--out", str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = out / ".medvideocap.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and f'"pid": {first.pid},' in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first build never took its lock"
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGSTOP)  # holds its lock, does nothing more, until killed
        second = _cli_build("--src", str(raw), "--out", str(out))
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        said = second.stderr
        assert said.startswith(f"Error: {out} is in use by `medvideocap build` (pid {first.pid} on "), said
        assert f"which holds {lock}; wait for it to finish or stop it" in said and said.count("\n") == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert f'"pid": {first.pid},' in lock.read_text()  # a killed run leaves its details, not its lock

    third = _cli_build("--src", str(raw), "--out", str(out))
    assert third.returncode == 0, third.stderr[-3000:]
    said = _one_line(third.stdout)  # the log handler writes to stdout
    assert f"taking over the lock left by `medvideocap build` (pid {first.pid} on " in said, said
    assert tree_bytes(out) == reference  # no lock file left in the output either


@pytest.mark.parametrize(
    "size, workers",
    [(96 * 1024, 2), (200 * 1024, 1), (300 * 1024, 1)],
    ids=["full-while-cutting-in-a-pool", "full-while-writing-shards", "full-while-writing-metadata"],
)
def test_a_full_disk_is_one_line_and_the_rerun_with_space_writes_the_same_bytes(
    small, tmp_path: Path, size: int, workers: int
) -> None:
    """A real small file system (tmpfs) holding --out and the work dir fills up at a different step
    for each size: one line naming the file, exit 1, nothing half-written left; with room, the same
    command resumes into the bytes of an uninterrupted build."""
    raw, reference = small
    disk = tmp_path / "disk"
    out = disk / "out"
    with tmpfs(disk, size):
        args = ("--src", str(raw), "--out", str(out), "--workers", str(workers))
        full = _cli_build(*args)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        [line] = [x for x in full.stderr.splitlines() if x.startswith("Error: ")]
        assert line.startswith(f"Error: {disk}/") and ": no space left on the device (" in line, line
        assert line.endswith(
            "free some space there, then run the same command again: it resumes where it stopped"
        )
        assert half_written(disk) == []
        resize(disk, 16 * 1024 * 1024)
        again = _cli_build(*args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert tree_bytes(out) == reference and half_written(disk) == []


def test_a_read_only_out_or_work_folder_is_one_line_before_any_work(small, tmp_path: Path) -> None:
    raw, _ = small
    disk = tmp_path / "disk"
    with tmpfs(disk, 1024 * 1024, read_only=True):
        for args, named in (
            (["--out", str(disk / "out")], disk / "out"),
            (["--out", str(tmp_path / "out"), "--work", str(disk / "work")], disk / "work"),
        ):
            done = _cli_build("--src", str(raw), *args)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
            assert done.stderr == (
                f"Error: {named}: the file system is read-only; write to a folder on a writable disk "
                "(or remount this one read-write), then run again\n"
            )
    assert not (tmp_path / "out").exists()  # the folder made for its lock went with it


def test_a_clip_cut_short_by_a_full_disk_stops_the_build_and_is_cut_again_on_rerun(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without root: the errno is injected where ffmpeg meets it. ffmpeg 5 reports a trailer it could
    not write for lack of space and still exits 0, leaving a cut-off mp4; that must stop the build
    (not become a reject journaled for good, nor a clip taken as whole)."""
    from click.testing import CliRunner

    from medvideocap.cli import main

    raw, reference = small
    out = tmp_path / "out"
    real_run = subprocess.run
    cut: list[str] = []

    def full_after_half(cmd: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        done = real_run(cmd, *args, **kwargs)  # type: ignore[call-overload]
        if "+faststart" not in cmd or cut:  # only the first clip cut meets the full disk
            return done
        output = Path(cmd[-1])
        output.write_bytes(output.read_bytes()[:1000])
        cut.append(cmd[-1])
        stderr = f"Error writing trailer of {output}: No space left on device\n"
        return subprocess.CompletedProcess(cmd, 0, "", stderr)

    args = ["build", "--recipe", "demo", "--workers", "1", "--src", str(raw), "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "run", full_after_half)
        full = CliRunner().invoke(main, args)
    assert full.exit_code == 1 and cut, full.output
    line = full.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: {out}.build/clips/") and ": no space left on the device" in line, line
    assert not list((tmp_path / "out.build" / "journal").glob("*.json"))  # the input is not journaled
    assert half_written(tmp_path) == []
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert tree_bytes(out) == reference


def test_a_build_logged_to_a_file_prints_inputs_done_clips_kept_and_an_eta(tmp_path: Path) -> None:
    """stderr no terminal (a batch log): the bar draws nothing, so a plain line at start and at the end
    (and every 30 s between, from a timer) says inputs done, clips kept, the rate and the ETA."""
    raw = _small_raw(tmp_path / "raw")
    done = _cli_build("--src", str(raw), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    said = [x for x in done.stderr.splitlines() if x.startswith("build: ")]
    assert said[0].startswith("build: 0/2 inputs, - s/input, ") and said[0].endswith("ETA -")
    kept = json.loads((tmp_path / "out" / "meta" / "funnel.json").read_text())["clips"]
    assert said[-1].startswith("build: 2/2 inputs, ") and f", {kept} clips kept, " in said[-1]
    assert said[-1].endswith("ETA 0s")


def test_a_dry_run_estimate_runs_the_recipe_on_a_sample_and_writes_nothing(tmp_path: Path) -> None:
    raw = _small_raw(tmp_path / "raw")  # two 3-s inputs
    out = tmp_path / "out"
    done = _cli_build("--src", str(raw), "--out", str(out), "--dry-run", "--estimate", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout)
    guess = said["estimate"]
    assert guess["sample_seconds"] == 2.0 and guess["workers"] == 1
    assert guess["sample_clips_kept"] >= 1  # the demo recipe keeps a clip of this footage
    # the factor is the sample's seconds over its wall (printed rounded to 10 ms: compare within that)
    wall, factor = guess["sample_wall_seconds"], guess["realtime_factor_per_worker"]
    assert 2.0 / (wall + 0.006) <= factor <= 2.0 / max(wall - 0.006, 1e-3)
    assert guess["estimated_wall_seconds"] == pytest.approx(said["video_seconds"] / factor, abs=0.06)
    assert not out.exists() and not list(tmp_path.glob("*.build"))  # a plan writes nothing
    plain = json.loads(_cli_build("--src", str(raw), "--out", str(out), "--dry-run").stdout)
    assert "estimate" not in plain  # opt-in: a recipe's model stages may call a paid API


def test_pool_workers_spread_over_the_gpus_and_no_more_start_than_the_gpus_hold(monkeypatch) -> None:
    """A recipe whose stages take 0.25 of a GPU: at most four workers a visible GPU (each loads every
    model), and the k-th worker to start sees only GPU ``k mod n`` (CUDA_VISIBLE_DEVICES), so eight
    workers on two GPUs are four on each, not eight on the first. A CPU-only recipe is not capped."""
    import multiprocessing

    from medvideocap.build import Recipe
    from medvideocap.build.engine import pool_size, visible_gpus

    def recipe(gpus: float) -> Recipe:
        return Recipe.model_validate(
            {"name": "g", "stages": [{"stage": "probe"}, {"stage": "technical", "resources": {"gpus": gpus}}]}
        )

    assert pool_size(16, recipe(0.25), ("0",)) == 4
    assert pool_size(16, recipe(0.25), ("0", "1")) == 8
    assert pool_size(3, recipe(0.25), ("0",)) == 3
    assert pool_size(16, recipe(1.0), ("0", "1")) == 2
    assert pool_size(16, recipe(0.0), ("0",)) == 16  # no stage asks for a GPU
    assert pool_size(16, recipe(0.25), ()) == 16  # no GPU here: the stages run on the CPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ("3", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == ()

    ctx = multiprocessing.get_context("spawn")
    started, seen = ctx.Value("i", 0), ctx.Queue()
    workers = [ctx.Process(target=_report_gpu, args=(("3", "5"), started, seen)) for _ in range(5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert sorted(seen.get(timeout=10) for _ in workers) == ["3", "3", "3", "5", "5"]


def _report_gpu(gpus: tuple[str, ...], started, seen) -> None:  # type: ignore[no-untyped-def]
    """A pool worker's start (``share_cores``), then the GPU it was given."""
    from medvideocap.build.engine import share_cores

    share_cores(1, gpus, started)
    seen.put(os.environ["CUDA_VISIBLE_DEVICES"])


def test_each_pool_worker_gets_its_share_of_the_cores_and_a_user_thread_setting_is_kept(
    tmp_path: Path,
) -> None:
    """What a `--workers N` pool worker runs first: decoder and OpenCV threads set to its share, and
    OMP_NUM_THREADS set unless the user set it; decoding still works with one decoder thread."""
    code = (
        "import os, sys, cv2\n"
        "from medvideocap.build.engine import share_cores\n"
        "from medvideocap.media import ffmpeg\n"
        "share_cores(1)\n"
        "frames = sum(1 for _ in ffmpeg.decoded(sys.argv[1]))\n"
        "print(cv2.getNumThreads(), os.environ['OMP_NUM_THREADS'], ffmpeg._THREADS[0], frames)\n"
    )
    clip = make_video(tmp_path / "v.mp4", seconds=1, fps=8, size=(64, 48))
    for preset, omp in ((None, "1"), ("3", "3")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if preset:
            env["OMP_NUM_THREADS"] = preset
        out = subprocess.run(
            [sys.executable, "-c", code, str(clip)], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["1", omp, "1", "8"], out.stderr
