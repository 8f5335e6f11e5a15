"""End-to-end builds from a raw/ folder made to trip each stage, plus the real clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures_build import EXPECTED_REJECTS, SCENE_CUTS, make_raw, tree_bytes

from medvideocap.build import build
from medvideocap.probe import probe
from medvideocap.schema import ClipRecord


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


def test_a_killed_build_resumes_into_the_same_bytes(raw: Path, reference, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "medvideocap",
        "build",
        "--src",
        str(raw),
        "--out",
        str(out),
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
