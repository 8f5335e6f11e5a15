"""The upstream release read where it lies: a release served by a real web server (ranged reads,
``tests/fixtures_http.py``) and by moto's real S3 server (``tests/fixtures_s3.py``), against the same
release read from a local folder.

The served release has six archives, one of them over 200 MB (random padding members and a clip past
the 200 MB mark, ``fixtures_upstream.make_large_release``), so "reads a few ranged requests, not the
archives" is measured by the server's own count of the bytes it sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_http import HttpStandIn
from fixtures_hubnative import FRACTIONS, SHARD_BYTES, tree_files
from fixtures_upstream import make_large_release, make_upstream_release

from medvideocap.dataset.convert import convert
from medvideocap.dataset.upstream import UpstreamRelease
from medvideocap.dataset.validate import validate

CLIPS = 24  # six archives of four clips


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpStandIn, Path]]:
    """The large release in ``<tmp>/release``, served over HTTP for the session: (server, folder)."""
    top = tmp_path_factory.mktemp("served")
    release = make_large_release(top / "release")
    server = HttpStandIn(top).start()
    yield server, release
    server.stop()


@pytest.fixture
def server(served: tuple[HttpStandIn, Path]) -> HttpStandIn:
    served[0].reset()
    return served[0]


def archive_bytes(release: Path) -> int:
    return sum(p.stat().st_size for p in release.glob("videos_*.zip"))


@pytest.fixture(scope="session")
def local_conversion(served: tuple[HttpStandIn, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole release converted from the local folder: what every remote conversion must equal."""
    out = tmp_path_factory.mktemp("local") / "hub"
    convert(served[1], out, shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False)
    return out


def same_conversion(a: Path, b: Path) -> None:
    """Every file byte-identical, but ``meta/info.json`` and the card, which name the source (a folder
    name or the URL) in the recipe: there, everything but that name (and the fingerprint over it)."""
    import json

    files_a, files_b = tree_files(a), tree_files(b)
    assert sorted(files_a) == sorted(files_b)
    differ = sorted(f for f in files_a if files_a[f] != files_b[f])
    assert set(differ) <= {"meta/info.json", "README.md"}, differ
    info_a, info_b = (json.loads((x / "meta" / "info.json").read_text()) for x in (a, b))
    for info in (info_a, info_b):
        info.pop("fingerprint", None)
        info["recipe"]["upstream"].pop("source")
    assert info_a == info_b


def member_offsets(release: Path) -> dict[str, tuple[str, int]]:
    """clip id -> (archive name, offset of its local header), from the local archives."""
    found = {}
    for zip_path in release.glob("videos_*.zip"):
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".mp4"):
                    found[Path(info.filename).stem] = (zip_path.name, info.header_offset)
    return found


def ranges(server: HttpStandIn, archive: str) -> list[tuple[int, int]]:
    """(first, last) byte of every ranged GET of ``archive`` answered so far."""
    found = []
    for method, path, asked, status in server.requests():
        if method == "GET" and path.endswith(f"/{archive}") and asked and status == 206:
            first, _, last = asked.removeprefix("bytes=").partition("-")
            found.append((int(first), int(last)))
    return found


# ---------------------------------------------------------------------------------------------------
# reading


def test_members_read_remotely_are_the_local_bytes(
    server: HttpStandIn, served: tuple[HttpStandIn, Path]
) -> None:
    release_dir = served[1]
    remote = UpstreamRelease.open(server.url("release"))
    local = UpstreamRelease.open(release_dir)
    assert [c.record for c in remote.clips()] == [c.record for c in local.clips()]
    assert len(remote) == CLIPS and remote.problems == local.problems == []
    assert remote.metadata_sha256 == local.metadata_sha256
    by_id = {c.record.id: c for c in local.clips()}
    past_200mb = [c for c in remote.clips() if c.remote is not None and c.remote.header_offset > 200_000_000]
    assert past_200mb, "the fixture puts clips behind the padding"
    for clip in remote.clips():
        assert clip.read_bytes() == by_id[clip.record.id].read_bytes()
        with clip.open() as stream:
            assert stream.read() == by_id[clip.record.id].read_bytes()
    assert server.sent() < 0.01 * archive_bytes(release_dir)


def test_load_first_clip_reads_under_one_percent(
    server: HttpStandIn, served: tuple[HttpStandIn, Path]
) -> None:
    import medvideocap
    from medvideocap.media.frames import FrameSpec

    frames = FrameSpec(num_frames=5, fps=None, height=16, width=16, position="start")
    item = medvideocap.load(server.url("release"), split=None, frames=frames)[0]
    sent = server.sent()
    assert item["id"] == "00000" and item["video"].ndim == 4
    assert 0 < sent < 0.01 * archive_bytes(served[1])
    local_item = medvideocap.load(served[1], split=None, frames=frames)[0]
    assert (item["video"] == local_item["video"]).all() and item["record"] == local_item["record"]


def test_validate_sample_reads_under_two_percent(
    server: HttpStandIn, served: tuple[HttpStandIn, Path]
) -> None:
    report = validate(server.url("release"), sample=3)
    assert report.ok, report.problems
    assert report.layout == "upstream" and report.records == CLIPS
    assert report.videos_checked == report.sampled == 3
    sent = server.sent()
    assert 0 < sent < 0.02 * archive_bytes(served[1])
    # the reader's own count: the bodies of its ranged reads and the metadata (the server also sent
    # the folder's index pages)
    assert 0 < report.bytes_read <= sent and report.read_requests > 0


def test_validate_cli_prints_bytes_read(server: HttpStandIn) -> None:
    from click.testing import CliRunner

    from medvideocap.cli import main

    result = CliRunner().invoke(main, ["validate", server.url("release"), "--sample", "2"])
    assert result.exit_code == 0, result.output
    assert "(a sample of 2)" in result.output
    assert "read from the source:" in result.output and "requests" in result.output


def test_a_web_server_that_lists_nothing(served: tuple[HttpStandIn, Path]) -> None:
    """Archives are found as videos_1.zip, videos_2.zip, ... until one is missing; the metadata file
    must be named."""
    top = served[1].parent
    quiet = HttpStandIn(top, listing=False).start()
    try:
        with pytest.raises(ValueError, match="no \\*.json metadata file found.*metadata=NAME"):
            UpstreamRelease.open(quiet.url("release"))
        release = UpstreamRelease.open(quiet.url("release"), metadata="metadata.json")
        assert [z.name for z in release.zips] == [f"videos_{k}.zip" for k in range(1, 7)]
        assert len(release) == CLIPS and release.problems == []
        assert quiet.sent() < 0.01 * archive_bytes(served[1])
    finally:
        quiet.stop()


def test_a_damaged_remote_archive_says_it_needs_the_whole_file(tmp_path: Path) -> None:
    release = make_upstream_release(tmp_path / "release", n_clips=4)
    whole = (release / "videos_2.zip").read_bytes()
    (release / "videos_2.zip").write_bytes(whole[: len(whole) * 2 // 3])  # central directory gone
    server = HttpStandIn(tmp_path).start()
    try:
        remote = UpstreamRelease.open(server.url("release"))
        clips = list(remote.clips())
    finally:
        server.stop()
    (damaged,) = [p for p in remote.problems if p.kind == "damaged_archive"]
    assert damaged.where == "videos_2.zip" and "needs the whole archive" in damaged.message
    assert "download it" in damaged.message
    assert [c.record.id for c in clips] == ["00000", "00002"]  # videos_1.zip's clips are intact
    # the same archive on disk is recovered from its local headers, as before
    local = UpstreamRelease.open(release)
    assert [c.record.id for c in local.clips()] == ["00000", "00001", "00002"]
    assert any(p.kind == "damaged_archive" and "recovered" in p.message for p in local.problems)


def test_an_unreachable_release_is_one_clear_error(tmp_path: Path) -> None:
    server = HttpStandIn(tmp_path).start()
    url = server.url("nothing-here")
    server.stop()
    report = validate(url)
    assert not report.ok and report.problems[0].kind == "format"
    assert url.rstrip("/") in report.problems[0].message or "nothing-here" in report.problems[0].message


# ---------------------------------------------------------------------------------------------------
# convert


def test_convert_limit_matches_a_local_conversion(
    server: HttpStandIn, served: tuple[HttpStandIn, Path], tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = dict(shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False, limit=5)
    remote = convert(server.url("release"), tmp_path / "remote", **kwargs)
    sent = server.sent()
    local = convert(served[1], tmp_path / "local", **kwargs)
    assert remote.total == local.total == 5 and remote.written == 5
    assert remote.transfer is not None and 0 < remote.transfer.bytes <= sent
    assert local.transfer is None
    assert sent < 0.01 * archive_bytes(served[1])
    same_conversion(tmp_path / "local", tmp_path / "remote")


def test_convert_archives_subset(
    server: HttpStandIn, served: tuple[HttpStandIn, Path], tmp_path: Path
) -> None:
    summary = convert(
        server.url("release"),
        tmp_path / "two",
        shard_bytes=SHARD_BYTES,
        fractions=FRACTIONS,
        progress=False,
        archives=["videos_2.zip", "videos_6.zip"],
    )
    assert summary.total == 8 and summary.rejects == []  # records of other archives are not drops
    # no member of another archive was read: their requests are the few of their listing only
    offsets = member_offsets(served[1])
    for clip_id, (archive, offset) in offsets.items():
        if archive not in ("videos_2.zip", "videos_6.zip"):
            assert not any(first <= offset <= last for first, last in ranges(server, archive)), clip_id
    with pytest.raises(ValueError, match="no archive named \\['videos_9.zip'\\]"):
        convert(server.url("release"), tmp_path / "bad", progress=False, archives=["videos_9.zip"])


def test_full_remote_convert_equals_the_local_one(
    server: HttpStandIn, served: tuple[HttpStandIn, Path], local_conversion: Path, tmp_path: Path
) -> None:
    summary = convert(
        server.url("release"),
        tmp_path / "remote",
        shard_bytes=SHARD_BYTES,
        fractions=FRACTIONS,
        progress=False,
    )
    assert summary.total == CLIPS and summary.transfer is not None
    assert server.sent() < 0.01 * archive_bytes(served[1])  # the padding is never read
    same_conversion(local_conversion, tmp_path / "remote")


def _finished_ids(out: Path) -> set[str]:
    ids = set()
    for shard in out.glob("data/*/shard-*.tar"):
        with tarfile.open(shard) as tar:
            ids |= {Path(m.name).stem.split(".")[0] for m in tar.getmembers()}
    return ids


def test_sigkill_during_a_remote_convert_then_rerun_equals_the_local_one(
    server: HttpStandIn, served: tuple[HttpStandIn, Path], local_conversion: Path, tmp_path: Path
) -> None:
    """Killed once the first archive's clips are done (the first ranged read of a clip of
    videos_2.zip), rerun: the local conversion's bytes, and the rerun reads no clip that a finished
    shard already holds."""
    out = tmp_path / "killed"
    url = server.url("release")
    offsets = member_offsets(served[1])
    second = sorted(offset for archive, offset in offsets.values() if archive == "videos_2.zip")
    args = [sys.executable, "-m", "medvideocap", "convert", url, "--out", str(out)]
    args += ["--shard-size", str(SHARD_BYTES), "--fractions", ",".join(map(str, FRACTIONS)), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(first <= second[0] <= last for first, last in ranges(server, "videos_2.zip")):
        assert proc.poll() is None, "convert exited before reading the second archive"
        assert time.monotonic() < deadline, "convert did not reach the second archive within 120 s"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    if (out / "meta" / "info.json").exists():
        pytest.fail("convert finished before the kill landed")
    finished = _finished_ids(out)
    assert finished, "no shard was finished before the kill"

    server.reset()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "read from the source:" in rerun.stdout
    for clip_id in finished:
        archive, offset = offsets[clip_id]
        assert not any(first <= offset <= last for first, last in ranges(server, archive)), clip_id
    same_conversion(local_conversion, out)


# ---------------------------------------------------------------------------------------------------
# object storage


def test_listing_and_one_member_read_on_s3(s3: Any, tmp_path: Path) -> None:
    release_dir = make_upstream_release(tmp_path / "release", n_clips=6)
    url = s3.upload(release_dir, prefix="upstream")
    s3.requests.clear()
    remote = UpstreamRelease.open(url, storage_options=s3.storage_options)
    local = UpstreamRelease.open(release_dir)
    assert [c.record for c in remote.clips()] == [c.record for c in local.clips()]
    zip_gets = s3.gets(".zip")
    assert zip_gets and all(r.range is not None and r.status == 206 for r in zip_gets)

    s3.requests.clear()
    clip = remote.get("00003")
    assert clip.read_bytes() == local.get("00003").read_bytes()
    (get,) = s3.gets(".zip")  # one ranged GET for one clip
    assert get.range is not None and get.path.endswith("/videos_2.zip")
    size = (release_dir / "videos_2.zip").stat().st_size
    first, _, last = get.range.removeprefix("bytes=").partition("-")
    assert int(last) - int(first) + 1 < size


def test_convert_from_s3_to_s3_equals_the_local_one(s3: Any, tmp_path: Path) -> None:
    """Both ends in object storage (the writer stages shards locally and publishes them)."""
    import fsspec

    release_dir = make_upstream_release(tmp_path / "release", n_clips=6)
    src = s3.upload(release_dir, prefix="upstream")
    out = src.rsplit("/", 1)[0] + "/hub"
    kwargs: dict[str, Any] = dict(shard_bytes=SHARD_BYTES, fractions=FRACTIONS, progress=False)
    remote = convert(src, out, storage_options=s3.storage_options, **kwargs)
    local = convert(release_dir, tmp_path / "local", **kwargs)
    assert remote.total == local.total == 6 and remote.transfer is not None
    fs = fsspec.filesystem("s3", **s3.storage_options)
    fs.invalidate_cache()
    fetched = tmp_path / "fetched"
    for key in fs.find(out.removeprefix("s3://")):
        target = fetched / key.removeprefix(out.removeprefix("s3://") + "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(key))
    same_conversion(tmp_path / "local", fetched)


def test_a_repo_id_is_read_where_it_lies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: the Hub's filesystem is stood in for by fsspec's own over a folder laid out as the Hub
    names a dataset repo (``datasets/OWNER/NAME``); the test is that nothing is downloaded (a
    snapshot_download call fails it) and the clips are read by ranged reads through that filesystem."""
    import huggingface_hub
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    release_dir = make_upstream_release(tmp_path / "release", n_clips=4)
    (tmp_path / "hub" / "datasets" / "owner").mkdir(parents=True)
    (tmp_path / "hub" / "datasets" / "owner" / "medvideocap-55k").symlink_to(release_dir)
    reads: list[tuple[str, int | None, int | None]] = []

    class HubStandIn(DirFileSystem):
        def __init__(self, **options: Any) -> None:
            super().__init__(path=str(tmp_path / "hub"), fs=LocalFileSystem())

        def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any) -> Any:
            reads.append((path, start, end))
            return super().cat_file(path, start=start, end=end, **kw)

    def no_download(**kwargs: Any) -> str:
        raise AssertionError(f"snapshot_download called: {kwargs}")

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", HubStandIn)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    remote = UpstreamRelease.open("owner/medvideocap-55k")
    local = UpstreamRelease.open(release_dir)
    assert remote.root == "hf://datasets/owner/medvideocap-55k"
    assert [(c.record, c.read_bytes()) for c in remote.clips()] == [
        (c.record, c.read_bytes()) for c in local.clips()
    ]
    zip_reads = [r for r in reads if r[0].endswith(".zip")]
    assert zip_reads and all(start is not None and end is not None for _, start, end in zip_reads)
