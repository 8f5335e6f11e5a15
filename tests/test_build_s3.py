"""``build --src s3://... --out s3://...`` against moto's real S3 server (``fixtures_s3.py``).

A build killed with SIGKILL while processing or while publishing shards resumes into the bytes a local
build of the same files writes; a reader of the bucket never sees half a shard; a missing bucket, refused
credentials and an object-store ``--work`` are one line naming the URL, never the secret.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fixtures_build import SCENES, SIZE, tree_bytes
from fixtures_s3 import S3StandIn
from videos import make_video

from medvideocap.atomic import TEMP_GLOB
from medvideocap.build import build
from medvideocap.build.recipe import resolve_recipe
from medvideocap.build.workdir import journal_dir

SHARD_BYTES = 120_000  # about one clip per shard: several shards to publish, one at a time


class GatedS3(S3StandIn):
    """moto's S3 that holds the request copying an upload onto the key ending in ``hold`` until
    :attr:`release` is set: a build can be killed at exactly that point of publishing."""

    def __init__(self, hold: str) -> None:
        self.hold = hold
        self.reached = threading.Event()
        self.release = threading.Event()
        super().__init__()

    def _logged(self, app: Any) -> Any:
        logged = super()._logged(app)

        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            copy = environ["REQUEST_METHOD"] == "PUT" and "HTTP_X_AMZ_COPY_SOURCE" in environ
            if copy and environ.get("PATH_INFO", "").endswith(self.hold):
                self.reached.set()
                self.release.wait(120)
            return logged(environ, start_response)

        return wsgi


@pytest.fixture
def gated() -> Iterator[GatedS3]:
    server = GatedS3(hold="/shard-00001.tar").start()
    yield server
    server.release.set()
    server.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A raw/ folder (named ``raw`` like the bucket prefix: the card names it) and a recipe file: the
    demo recipe with small shards."""
    root = tmp_path_factory.mktemp("s3build")
    raw = root / "raw"
    make_video(raw / "good.mp4", seconds=3, **SIZE)
    make_video(raw / "scenes.mkv", seconds=7.5, source=SCENES, **SIZE)
    make_video(raw / "lecture.webm", seconds=3, codec="libvpx", **SIZE)
    make_video(raw / "ward.avi", seconds=3, codec="mpeg4", source="mandelbrot=size=160x120:rate=8", **SIZE)
    make_video(raw / "sub" / "negated.mp4", seconds=3, vf="negate", **SIZE)
    (raw / "corrupt.mp4").write_bytes((raw / "good.mp4").read_bytes()[:2000])  # its reason names a file
    (raw / "notes.txt").write_text("not a video\n")
    (raw / "metadata.jsonl").write_text('{"file": "good.mp4", "title": "A test pattern"}\n')
    demo = resolve_recipe("demo")[0].read_text()
    assert "shard_bytes: 5000000" in demo
    recipe = root / "small-shards.yaml"
    recipe.write_text(demo.replace("shard_bytes: 5000000", f"shard_bytes: {SHARD_BYTES}"))
    return raw, recipe


@pytest.fixture(scope="module")
def local(inputs: tuple[Path, Path]) -> dict[str, bytes]:
    """The local build every object-store build must equal, byte for byte."""
    raw, recipe = inputs
    out = raw.parent / "local"
    result = build(raw, out, recipe=recipe, workers=1)
    assert result.kept >= 5
    assert len(list((out / "data").rglob("shard-*.tar"))) >= 3
    return tree_bytes(out)


def _bucket(server: S3StandIn) -> tuple[Any, str]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **server.storage_options)
    bucket = f"b{time.monotonic_ns()}"
    fs.mkdir(bucket)
    return fs, bucket


def _upload(fs: Any, raw: Path, url: str) -> None:
    for path in sorted(raw.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{url}/{path.relative_to(raw).as_posix()}")


def _download(fs: Any, url: str, dest: Path) -> dict[str, bytes]:
    fs.invalidate_cache()
    for key in fs.find(url):
        rel = key.removeprefix(url.removeprefix("s3://") + "/")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(fs.cat_file(key))
    return tree_bytes(dest)


def _cli(server: S3StandIn, *args: str) -> list[str]:
    return [sys.executable, "-m", "medvideocap", "build", *args, *server.cli_options()]


def _complete_tar(data: bytes) -> bool:
    import io

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
    except tarfile.TarError:
        return False
    return bool(members) and data.endswith(b"\0" * 1024)


@pytest.mark.parametrize("kill_at", ["processing", "publishing"])
def test_a_killed_s3_build_resumes_into_the_local_builds_bytes(
    gated: GatedS3, inputs: tuple[Path, Path], local: dict[str, bytes], tmp_path: Path, kill_at: str
) -> None:
    raw, recipe = inputs
    fs, bucket = _bucket(gated)
    _upload(fs, raw, f"s3://{bucket}/raw")
    work = tmp_path / "work"
    args = ["--src", f"s3://{bucket}/raw", "--out", f"s3://{bucket}/ds", "--work", str(work)]
    args += ["--recipe", str(recipe), "--workers", "1"]
    if kill_at == "processing":
        gated.release.set()  # nothing held: killed once two inputs are journaled
    proc = subprocess.Popen(
        _cli(gated, *args), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if kill_at == "publishing" and gated.reached.is_set():
                break
            if kill_at == "processing" and len(list(journal_dir(work).glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"build ended before it was killed: {proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # What a reader of the bucket sees now (the held copy still held): whole shards, the local
        # build's own bytes, and no card.
        fs.invalidate_cache()
        visible = sorted(fs.find(f"{bucket}/ds"))
        shards = [k for k in visible if fnmatch(k.rsplit("/", 1)[-1], "shard-*.tar")]
        for key in shards:
            data = fs.cat_file(key)
            assert _complete_tar(data) and data == local[key.split("/ds/", 1)[1]], key
        if kill_at == "publishing":
            assert [k.rsplit("/", 1)[-1] for k in shards] == ["shard-00000.tar"]
            assert any(fnmatch(k.rsplit("/", 1)[-1], TEMP_GLOB) for k in visible), visible  # the held upload
            assert not any(k.endswith("README.md") for k in visible)
        else:
            assert not visible
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        gated.release.set()

    again = subprocess.run(_cli(gated, *args), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming:" in again.stderr
    published = _download(fs, f"s3://{bucket}/ds", tmp_path / "published")
    assert published == local
    assert not (work / "output").exists()  # the staging copy goes once published (no --keep-work)


def test_an_s3_output_rerun_changes_nothing_and_a_changed_input_rebuilds_it(
    s3: S3StandIn, inputs: tuple[Path, Path], local: dict[str, bytes], tmp_path: Path
) -> None:
    """A finished object-store build rerun from an empty staging folder (the default, published and
    dropped) reads the store back and writes the same bytes; a replaced input in the bucket is
    processed again and the output written anew, equal to a local build of the new files."""
    raw, recipe = inputs
    fs, bucket = _bucket(s3)
    _upload(fs, raw, f"s3://{bucket}/raw")
    src, out, work = f"s3://{bucket}/raw", f"s3://{bucket}/ds", tmp_path / "work"
    options = s3.storage_options
    first = build(src, out, recipe=recipe, workers=1, work=work, storage_options=options)
    again = build(src, out, recipe=recipe, workers=1, work=work, storage_options=options)
    assert again.resumed == first.inputs and again.kept == first.kept and again.out == out
    assert _download(fs, out, tmp_path / "again") == local

    changed = tmp_path / "raw"
    shutil.copytree(raw, changed)
    make_video(changed / "good.mp4", seconds=4, **SIZE)
    fs.put_file(str(changed / "good.mp4"), f"{src}/good.mp4")
    rebuilt = build(src, out, recipe=recipe, workers=1, work=work, storage_options=options)
    assert rebuilt.changed == 1 and rebuilt.resumed == first.inputs - 1
    fresh = build(changed, tmp_path / "fresh", recipe=recipe, workers=1)
    assert fresh.kept == rebuilt.kept
    assert _download(fs, out, tmp_path / "rebuilt") == tree_bytes(tmp_path / "fresh")


def test_a_missing_bucket_is_one_line_naming_the_url(
    s3: S3StandIn, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, _ = inputs
    fs, bucket = _bucket(s3)
    _upload(fs, raw, f"s3://{bucket}/raw")
    for args, url in (
        (["--src", f"s3://{bucket}-gone/raw", "--out", str(tmp_path / "out")], f"s3://{bucket}-gone/raw"),
        (["--src", f"s3://{bucket}/raw", "--out", f"s3://{bucket}-gone/ds"], f"s3://{bucket}-gone/ds"),
    ):
        done = subprocess.run(
            _cli(s3, *args, "--recipe", "demo"), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1, done.stderr
        assert url in done.stderr and "does not exist" in done.stderr
        assert "Traceback" not in done.stderr and s3.storage_options["secret"] not in done.stderr


def test_refused_credentials_are_one_line_naming_the_url_never_the_secret(
    s3: S3StandIn, inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import settings

    raw, _ = inputs
    fs, bucket = _bucket(s3)
    _upload(fs, raw, f"s3://{bucket}/raw")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks keys
    secret = "s3cr3t-never-printed-0123456789"
    cmd = [sys.executable, "-m", "medvideocap", "build", "--src", f"s3://{bucket}/raw"]
    cmd += [
        "--out",
        str(tmp_path / "out"),
        "--recipe",
        "demo",
        "--storage-option",
        f"endpoint_url={s3.endpoint}",
    ]
    cmd += ["--storage-option", "key=AKIAWRONGWRONGWRONG", "--storage-option", f"secret={secret}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"s3://{bucket}/raw" in done.stderr and "refused these credentials" in done.stderr
    assert "Traceback" not in done.stderr and secret not in done.stderr + done.stdout


def test_an_object_store_work_dir_is_refused_saying_why(s3: S3StandIn, inputs: tuple[Path, Path]) -> None:
    raw, _ = inputs
    args = [
        "--src",
        str(raw),
        "--out",
        "s3://somewhere/ds",
        "--work",
        "s3://somewhere/ds.build",
        "--recipe",
        "demo",
    ]
    done = subprocess.run(_cli(s3, *args), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "s3://somewhere/ds.build" in done.stderr and "local folder" in done.stderr


def _record(i: int) -> Any:
    from medvideocap.dataset.schema import Caption, Category, ClipRecord

    return ClipRecord(
        id=f"clip{i:03d}",
        group=f"video{i}",
        file_name=f"clip{i:03d}.mp4",
        split="train",
        duration=2.0,
        fps=8.0,
        width=160,
        height=120,
        category=Category.clinical_practice,
        captions=[Caption(name="detailed", text=f"A detailed caption of clip {i}.", style="detailed")],
    )


def test_the_dataset_writer_resumes_an_s3_output_from_a_fresh_staging_folder(
    s3: S3StandIn, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """``DatasetWriter(s3://...)`` as ``convert`` uses it (a temporary staging folder of its own): a
    writer that stops after two shards leaves them published, and a new writer on another staging
    folder reads them back from the store and finishes the same bytes a local writer writes."""
    from medvideocap.dataset.writer import DatasetWriter

    raw, _ = inputs
    videos = [raw / "good.mp4", raw / "lecture.webm", raw / "ward.avi", raw / "sub" / "negated.mp4"]
    with DatasetWriter(tmp_path / "local", shard_bytes=SHARD_BYTES) as writer:
        for i, video in enumerate(videos):
            writer.write(_record(i), video)
    fs, bucket = _bucket(s3)
    url = f"s3://{bucket}/ds"
    first = DatasetWriter(url, shard_bytes=SHARD_BYTES, storage_options=s3.storage_options)
    for i, video in enumerate(videos):
        first.write(_record(i), video)
    first.abort()  # as a crash would: its open shard is never published, its staging folder is gone
    assert not first.out.exists()
    fs.invalidate_cache()
    shards = sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*.tar"))
    assert len(shards) >= 3
    assert sorted(k.split("/ds/", 1)[1] for k in fs.find(url)) == shards[:-1]  # finished ones only

    again = DatasetWriter(url, shard_bytes=SHARD_BYTES, storage_options=s3.storage_options)
    assert 0 < again.resumed < len(videos) and again.has("clip000") and not again.has("clip003")
    with again:
        for i, video in enumerate(videos):
            if not again.has(f"clip{i:03d}"):
                again.write(_record(i), video)
    assert _download(fs, url, tmp_path / "published") == tree_bytes(tmp_path / "local")
