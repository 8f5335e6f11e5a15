"""`validate` catches every planted fault, names the file, and sets the exit status."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_hubnative import write_hub_native
from fixtures_upstream import FAULT_FILES, FAULTS, UNKNOWN_KEY, make_upstream_release

from medvideocap.cli import main
from medvideocap.dataset.schema import SCHEMA_VERSION, ClipRecord
from medvideocap.dataset.validate import ValidationReport, compare_media, validate
from medvideocap.media.probe import MediaInfo

if TYPE_CHECKING:
    from fixtures_s3 import S3StandIn  # the s3 fixture's type (conftest.py)


# fault -> (problem kind, text the message must contain besides the file name)
EXPECTED = {
    "truncated_mp4": ("duration_mismatch", "truncated?"),
    "record_without_video": ("record_without_video", "no member"),
    "video_without_record": ("video_without_record", "no metadata record"),
    "duration_mismatch": ("duration_mismatch", "JSON says 8.99 s, file decodes 1.00 s"),
    "non_numeric_score": ("invalid_record", "'Aesthetic Score' = 'high'"),
    "unsafe_member": ("unsafe_member_name", "escapes the archive root"),
    "unknown_key": ("unknown_key", UNKNOWN_KEY),
    "wrong_major_version": ("schema_version", "2.0"),
}


@pytest.fixture(scope="module")
def clean_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_upstream_release(tmp_path_factory.mktemp("clean"), n_clips=6)


@pytest.fixture(scope="module")
def faulty_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_upstream_release(tmp_path_factory.mktemp("faulty"), n_clips=6, faults=FAULTS)


@pytest.fixture(scope="module")
def faulty_report(faulty_release: Path) -> ValidationReport:
    return validate(faulty_release)


def test_clean_release_is_valid(clean_release: Path) -> None:
    report = validate(clean_release)
    assert report.ok and report.problems == []
    assert (report.layout, report.records, report.videos_checked) == ("upstream", 6, 6)


@pytest.mark.parametrize("fault", FAULTS)
def test_each_planted_fault_is_caught_naming_the_file(faulty_report: ValidationReport, fault: str) -> None:
    kind, text = EXPECTED[fault]
    matching = [p for p in faulty_report.problems if p.kind == kind and FAULT_FILES[fault] in p.message]
    assert matching, f"{fault}: no {kind} problem naming {FAULT_FILES[fault]} in {faulty_report.problems}"
    assert any(text in p.message for p in matching), matching
    assert all(p.severity == ("warning" if fault == "unknown_key" else "error") for p in matching)


def test_good_clips_are_not_flagged(faulty_report: ValidationReport) -> None:
    assert not [p for p in faulty_report.problems if "0000" in p.message]
    assert faulty_report.videos_checked == 6 + 3  # good clips + truncated, mismatched, unknown-key clips


def test_exit_status_and_json_report(clean_release: Path, faulty_release: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(clean_release), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True

    bad = runner.invoke(main, ["validate", str(faulty_release), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert (
        report["ok"] is False and report["errors"] == len(FAULTS) - 1 + 1
    )  # unsafe member also orphans a record
    assert report["warnings"] == 1
    assert set(report["kinds"]) == {kind for kind, _ in EXPECTED.values()}
    assert all({"severity", "kind", "where", "message"} <= set(p) for p in report["problems"])

    table = runner.invoke(main, ["validate", str(faulty_release)])
    assert table.exit_code == 1
    assert "INVALID" in table.stdout and "90004.mp4" in table.stdout


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_alone_sets_the_exit_status(tmp_path: Path, fault: str) -> None:
    root = make_upstream_release(tmp_path, n_clips=2, faults=(fault,))
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(root), "--json"])
    warning_only = fault == "unknown_key"
    assert result.exit_code == (0 if warning_only else 1), result.output
    assert EXPECTED[fault][0] in json.loads(result.stdout)["kinds"]
    if warning_only:
        assert runner.invoke(main, ["validate", str(root), "--strict"]).exit_code == 1


def test_parallel_workers_give_the_same_report(faulty_release: Path, faulty_report: ValidationReport) -> None:
    assert validate(faulty_release, workers=3) == faulty_report


def test_no_videos_checks_metadata_only(faulty_release: Path) -> None:
    report = validate(faulty_release, videos=False)
    assert report.videos_checked == 0
    assert "duration_mismatch" not in report.kinds()
    assert "invalid_record" in report.kinds()


def test_missing_path_is_reported_not_raised(tmp_path: Path) -> None:
    report = validate(tmp_path / "nothing-here")
    assert not report.ok and report.kinds() == {"format": 1}
    assert CliRunner().invoke(main, ["validate", str(tmp_path / "nothing-here")]).exit_code == 1


def test_unreachable_repo_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(**kwargs: object) -> str:
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    report = validate("owner/missing")
    assert report.kinds() == {"format": 1} and "network is unreachable" in report.problems[0].message


def test_compare_media_tolerances() -> None:
    record = ClipRecord(id="a", group="a", file_name="a.mp4", duration=8.0, fps=25.0, width=720, height=480)

    def media(**kw: object) -> MediaInfo:
        base = {"duration": 8.0, "fps": 25.0, "num_frames": 200, "width": 720, "height": 480, "codec": "h264"}
        return MediaInfo(**{**base, **kw, "bit_rate": None})  # type: ignore[arg-type]

    assert compare_media(record, media(duration=8.45), where="a") == []  # within 0.5 s
    assert compare_media(record, media(fps=25.2), where="a") == []  # within 1 %
    assert [p.kind for p in compare_media(record, media(duration=8.6), where="a")] == ["duration_mismatch"]
    long = record.model_copy(update={"duration": 20.0})
    assert compare_media(long, media(duration=20.9), where="a") == []  # within 5 % of 20 s
    assert [p.kind for p in compare_media(long, media(duration=21.1), where="a")] == ["duration_mismatch"]
    assert "longer" in compare_media(record, media(duration=9.0), where="a")[0].message
    assert [p.kind for p in compare_media(record, media(fps=30.0), where="a")] == ["fps_mismatch"]
    size = compare_media(record, media(width=640), where="a")
    assert [p.kind for p in size] == ["size_mismatch"] and "720x480" in size[0].message


# ---------------------------------------------------------------------------------------------------
# hub-native layout (written with H3's DatasetWriter from the clean upstream fixture)


@pytest.fixture(scope="module")
def hub_native(clean_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hub_native(clean_release, tmp_path_factory.mktemp("hub") / "ds")


def _tampered(hub_native: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(hub_native, root)
    return root


def test_hub_native_dataset_validates(hub_native: Path) -> None:
    report = validate(hub_native)
    assert report.ok, report.problems
    assert (report.layout, report.records, report.videos_checked) == ("hub-native", 6, 6)


def test_hub_native_metadata_disagreeing_with_video_is_caught(hub_native: Path, tmp_path: Path) -> None:
    root = _tampered(hub_native, tmp_path)
    path = root / "metadata" / "train.parquet"
    table = pl.read_parquet(path)
    table = table.with_columns(
        pl.when(pl.col("id") == "00002").then(9.0).otherwise(pl.col("duration")).alias("duration")
    )
    table = table.with_columns(
        pl.when(pl.col("id") == "00003")
        .then(pl.col("offset") + 512)
        .otherwise(pl.col("offset"))
        .alias("offset")
    )
    table.write_parquet(path)
    report = validate(root)
    assert not report.ok
    by_kind = {p.kind: p for p in report.problems}
    assert "00002.mp4" in by_kind["duration_mismatch"].message
    assert "metadata says 9.00 s" in by_kind["duration_mismatch"].message
    assert "00003" in by_kind["offset_mismatch"].message


def test_hub_native_wrong_major_version_is_a_problem(hub_native: Path, tmp_path: Path) -> None:
    root = _tampered(hub_native, tmp_path)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["schema_version"] = "2.0"
    info_path.write_text(json.dumps(info))
    result = CliRunner().invoke(main, ["validate", str(root), "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert [p["kind"] for p in problems] == ["schema_version"]
    assert "2.0" in problems[0]["message"] and SCHEMA_VERSION in problems[0]["message"]


def test_corrupt_member_and_broken_zip_are_unreadable(tmp_path: Path) -> None:
    root = make_upstream_release(tmp_path, n_clips=4)
    archive = root / "videos_1.zip"
    with zipfile.ZipFile(archive) as zf:
        member = zf.getinfo("00000.mp4")
    data = bytearray(archive.read_bytes())
    data[member.header_offset + 30 + len(member.filename) + member.file_size // 2] ^= 0xFF  # CRC now fails
    archive.write_bytes(bytes(data))
    (root / "videos_2.zip").write_bytes(b"this is not a zip archive")
    report = validate(root)
    unreadable = [p for p in report.problems if p.kind == "unreadable_member"]
    assert {p.where for p in unreadable} == {"videos_1.zip:00000.mp4", "videos_2.zip"}
    assert any("CRC" in p.message for p in unreadable)
    orphans = {p.where for p in report.problems if p.kind == "record_without_video"}
    assert orphans == {"metadata.json row 1 (00001.mp4)", "metadata.json row 3 (00003.mp4)"}
    assert report.videos_checked == 1


def test_captions_over_the_bound_are_flagged_in_a_hub_native_dataset(
    clean_release: Path, tmp_path: Path
) -> None:
    import warnings

    from medvideocap.dataset.schema import Caption
    from medvideocap.dataset.upstream import UpstreamRelease
    from medvideocap.dataset.validate import DEFAULT_MAX_CAPTION_CHARS
    from medvideocap.dataset.writer import DatasetWriter

    long_text = "x" * (DEFAULT_MAX_CAPTION_CHARS + 1)
    out = tmp_path / "ds"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with DatasetWriter(out, split_fn=lambda r: "train") as w:
            for clip in UpstreamRelease.open(clean_release).clips():
                record = clip.record
                if record.id == "00003":
                    record = record.with_caption(Caption(name="pasted", text=long_text))
                w.write(record, clip.read_bytes())
    report = validate(out)
    assert [(p.kind, p.severity) for p in report.problems] == [("caption_too_long", "error")]
    assert (
        "00003" in report.problems[0].where and f"{len(long_text)} characters" in report.problems[0].message
    )
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(out), "--json"]).exit_code == 1
    wider = runner.invoke(main, ["validate", str(out), "--json", "--max-caption-chars", str(len(long_text))])
    assert wider.exit_code == 0, wider.output


_BOMB = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)  # 9**9 "lol"s once expanded: lol4, on README line 6, is the first to pass the bound


@pytest.mark.parametrize(
    ("header", "line", "says"),
    [
        ("license: mit\nexploit: !!python/object/apply:os.system ['echo pwned']\n", 3, "python/object/apply"),
        (_BOMB, 6, "alias bomb"),
    ],
    ids=["python-tag", "alias-bomb"],
)
def test_card_header_the_hub_refuses_fails_validate_naming_the_line(
    hub_native: Path, tmp_path: Path, header: str, line: int, says: str
) -> None:
    root = _tampered(hub_native, tmp_path)
    card = root / "README.md"
    body = card.read_text().split("\n---\n", 1)[1]
    card.write_text("---\n" + header + "---\n" + body)
    report = validate(root, videos=False)
    assert [(p.kind, p.severity, p.where) for p in report.problems] == [
        ("card", "error", f"README.md line {line}")
    ]
    message = report.problems[0].message
    assert (
        message.startswith(f"README.md line {line}: ") and says in message and "medvideocap push" in message
    )
    result = CliRunner().invoke(main, ["validate", str(root), "--no-videos", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["kinds"] == {"card": 1}


def test_a_shard_path_leading_out_of_the_dataset_is_an_error_naming_the_row(
    hub_native: Path, tmp_path: Path
) -> None:
    root = _tampered(hub_native, tmp_path)
    path = root / "metadata" / "train.parquet"
    table = pl.read_parquet(path)
    shard = pl.when(pl.col("id") == "00002").then(pl.lit("../elsewhere/x.tar")).otherwise(pl.col("shard"))
    table.with_columns(shard.alias("shard")).write_parquet(path)
    row = table["id"].to_list().index("00002")
    for videos, checked in ((True, 5), (False, 0)):  # a metadata check: found without reading videos
        report = validate(root, videos=videos)
        [problem] = [p for p in report.problems if p.kind == "path_outside_root"]
        assert problem.severity == "error" and problem.where == f"metadata/train.parquet row {row} (00002)"
        assert "'../elsewhere/x.tar' leads outside" in problem.message
        assert report.videos_checked == checked and not report.ok  # the other rows' videos are checked


def test_a_dataset_in_object_storage_validates_like_the_local_folder(
    hub_native: Path, tmp_path: Path, s3: S3StandIn
) -> None:
    """``validate s3://bucket/ds`` (a real S3 API on localhost) finds what it finds in the local
    folder, each problem naming the same row, its messages naming the URL where they name a file."""
    root = _tampered(hub_native, tmp_path)
    path = root / "metadata" / "train.parquet"
    table = pl.read_parquet(path)
    table = table.with_columns(
        duration=pl.when(pl.col("id") == "00002").then(9.0).otherwise(pl.col("duration")),
        offset=pl.when(pl.col("id") == "00003").then(pl.col("offset") + 512).otherwise(pl.col("offset")),
        shard=pl.when(pl.col("id") == "00004").then(pl.lit("../x.tar")).otherwise(pl.col("shard")),
    )
    table.write_parquet(path)
    url = s3.upload(root)
    local = validate(root, workers=2)
    remote = validate(url, workers=2, storage_options=s3.storage_options)

    def seen(report: ValidationReport, where: str) -> list[tuple[str, str, str]]:
        return [(p.kind, p.where, p.message.replace(where, "ROOT")) for p in report.problems]

    assert seen(remote, url) == seen(local, str(root))
    assert {p.kind for p in remote.problems} == {"duration_mismatch", "offset_mismatch", "path_outside_root"}
    assert (remote.layout, remote.records, remote.videos_checked) == (local.layout, 6, local.videos_checked)
    assert remote.root == url and any(url in p.message for p in remote.problems)
    result = CliRunner().invoke(main, ["validate", url, "--json", *s3.cli_options()])
    assert result.exit_code == 1 and json.loads(result.stdout)["kinds"] == local.kinds()
