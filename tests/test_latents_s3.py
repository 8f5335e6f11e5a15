"""A latent cache in object storage, against moto's real S3 server (``fixtures_s3.py``): ``encode-latents``
writes ``s3://``, the trainer reads ``latents=s3://...`` as it reads a folder, a SIGKILLed encode resumes to
exactly the rows of an uninterrupted local run, half-written objects stay invisible, each row is one
ranged GET, and a missing bucket or refused credentials are one line naming the URL and no secret."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures_latents import (
    encode_cli,
    make_tiny_model_dir,
    tiny_config,
    write_hub_native,
    write_random_cache,
)
from fixtures_s3 import S3StandIn
from fixtures_train import tiny_pipeline_dir, tiny_train_config

from medvideocap.latents import CacheStorageError, LatentCache, LatentCacheError, finished_ids, load_latents
from medvideocap.latents.encode import encode_latents
from medvideocap.locations import resolve

__all__ = ["tiny_pipeline_dir"]  # a fixture, imported for pytest

SECRET = "s3cr3t-never-printed-7f1d"


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Object-store outputs are locked by local files: keep this test's out of the user's cache folder."""
    monkeypatch.setenv("MEDVIDEOCAP_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("hubnative") / "ds"
    return root, write_hub_native(root, 6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset: Any, tiny_model_dir: Path) -> Path:
    """An uninterrupted run into a local folder: the yardstick."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    encode_latents(dataset[0], out, config=tiny_config(tiny_model_dir))
    return out


def new_bucket(s3: S3StandIn) -> str:
    import fsspec

    bucket = f"latents-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **s3.storage_options).mkdir(bucket)
    return bucket


def keys(s3: S3StandIn, url: str) -> list[str]:
    """Every key under ``url``, listed afresh."""
    location = resolve(url, storage_options=s3.storage_options)
    location.fs.invalidate_cache()
    return sorted(f"s3://{k}" for k in location.fs.find(location.root))


def rows_of(shards: list[str], read: Any) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for shard in shards:
        with read(shard) as fh:
            for row in pq.read_table(fh).to_pylist():
                assert row["id"] not in rows, f"{row['id']} written twice ({shard})"
                rows[row["id"]] = row
    return rows


def local_rows(cache: Path) -> dict[str, dict[str, Any]]:
    return rows_of(sorted(str(p) for p in (cache / "train").glob("rank-*-shard-*.parquet")), open_binary)


def open_binary(path: str) -> Any:
    return open(path, "rb")  # noqa: SIM115 - closed by rows_of's with


def s3_rows(s3: S3StandIn, url: str) -> dict[str, dict[str, Any]]:
    location = resolve(url, storage_options=s3.storage_options)
    shards = [k for k in keys(s3, url) if k.rpartition("/")[2].startswith("rank-") and k.endswith(".parquet")]
    return rows_of(shards, location.open)


def assert_same_rows(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    assert sorted(a) == sorted(b)
    for cid in a:
        assert a[cid] == b[cid], f"{cid}: rows differ"


@pytest.fixture(scope="module")
def s3_cache(s3: S3StandIn, dataset: Any, tiny_model_dir: Path) -> str:
    url = f"s3://{new_bucket(s3)}/latents"
    (report,) = encode_latents(
        dataset[0], url, config=tiny_config(tiny_model_dir), storage_options=s3.storage_options
    )
    assert report.encoded == 6 and report.dropped == 0, report
    return url


def test_encode_latents_to_s3_writes_the_rows_a_local_run_writes_and_publishes_only_whole_shards(
    s3: S3StandIn, s3_cache: str, reference: Path
) -> None:
    assert_same_rows(s3_rows(s3, s3_cache), local_rows(reference))
    names = [k.removeprefix(s3_cache + "/") for k in keys(s3, s3_cache)]
    assert names == [
        "manifest.json",
        "meta/empty-prompt.safetensors",
        "train/rank-0-shard-00000.parquet",
        "train/rank-0-shard-00001.parquet",
        "train/rank-0-shard-00002.parquet",
    ]  # no temporary key left behind, no lock object: the lock is a local file
    cache = LatentCache(s3_cache, storage_options=s3.storage_options)
    assert cache.manifest == LatentCache(reference).manifest
    assert finished_ids(resolve(s3_cache, storage_options=s3.storage_options), "train") == set(cache.ids)


def test_train_reads_latents_from_s3_as_from_a_local_folder(
    s3: S3StandIn,
    tiny_model_dir: Path,
    tiny_pipeline_dir: Path,
    dataset: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``train latents=s3://...`` with credentials and endpoint from the environment, as a user sets them;
    the losses equal those of the same cache read from a local folder."""
    import s3fs

    from medvideocap.latents.encode import EncodeConfig
    from medvideocap.media.frames import FrameSpec
    from medvideocap.train import train

    spec = FrameSpec(num_frames=5, fps=8.0, position="center", height=32, width=32)
    config = EncodeConfig(vae=str(tiny_pipeline_dir), frames=spec, max_length=64, device="cpu")
    url = f"s3://{new_bucket(s3)}/latents"
    encode_latents(dataset[0], url, config=config, storage_options=s3.storage_options)
    encode_latents(dataset[0], tmp_path / "local", config=config)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.storage_options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.storage_options["secret"])
    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem made before the variables were set
    opts = {"max_steps": 2, "batch_size": 2, "caption_dropout": 0.5, "caption_dropout_embeds": "empty"}
    remote = train(tiny_train_config(tmp_path / "a", tiny_pipeline_dir, url, **opts))  # type: ignore[arg-type]
    local = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, tmp_path / "local", **opts))
    assert remote.steps == [1, 2] and len(remote.losses) == 2
    np.testing.assert_allclose(remote.losses, local.losses, rtol=1e-6, atol=1e-7)


def _encode_args(root: Path, url: str, model: Path, s3: S3StandIn) -> list[str]:
    return [*encode_cli(root, url, model, *s3.cli_options()), "--no-progress"]


def test_sigkill_during_an_s3_encode_then_rerun_gives_exactly_the_rows_of_an_uninterrupted_local_run(
    s3: S3StandIn, dataset: Any, reference: Path, tiny_model_dir: Path
) -> None:
    root, _ = dataset
    url = f"s3://{new_bucket(s3)}/latents"
    location = resolve(url, storage_options=s3.storage_options)
    proc = subprocess.Popen(
        _encode_args(root, url, tiny_model_dir, s3), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            location.fs.invalidate_cache()
            if location.fs.glob(f"{location.root}/train/rank-0-shard-*.parquet"):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate()  # till its decode workers have gone too (they hold the lock while they live)
    before = s3_rows(s3, url)
    assert 0 < len(before) < 6  # killed midway: some shards whole, never a half one (it would not parse)
    config = tiny_config(tiny_model_dir, num_workers=0)  # what the command line said, decoding inline
    (rerun,) = encode_latents(root, url, config=config, storage_options=s3.storage_options)
    assert (rerun.skipped_done, rerun.encoded) == (len(before), 6 - len(before))
    assert_same_rows(s3_rows(s3, url), local_rows(reference))
    assert not [k for k in keys(s3, url) if ".tmp-" in k]  # what the kill left was cleaned up


def test_a_shard_being_uploaded_is_invisible_until_whole_and_a_killed_upload_is_cleaned_up(
    s3: S3StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is stopped after its temporary key is fully uploaded and before the copy onto the
    shard's name (where a SIGKILL between the two would leave it): readers see only finished shards."""
    import s3fs

    from medvideocap.latents.format import ShardWriter

    url = f"s3://{new_bucket(s3)}/latents"
    location = resolve(url, storage_options=s3.storage_options)
    write_random_cache(location, [(4, 2, 4, 6)] * 3, rows_per_shard=3)  # type: ignore[arg-type]
    (first,) = LatentCache(location).files
    published, release = threading.Event(), threading.Event()
    real_mv = s3fs.S3FileSystem.mv

    def stalled_mv(self: Any, path1: str, path2: str, **kw: Any) -> Any:
        published.set()
        release.wait(60)
        return real_mv(self, path1, path2, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "mv", stalled_mv)
    writer = ShardWriter(location, "train", 0, rows_per_shard=100)
    rows = pq.read_table(location.open(str(first))).to_pylist()
    for row in rows:
        writer.add({**row, "id": row["id"] + "-new"})
    flushing = threading.Thread(target=writer.flush)
    flushing.start()
    try:
        assert published.wait(60)
        temporary = [k for k in keys(s3, url) if ".tmp-" in k]
        assert len(temporary) == 1 and temporary[0].endswith(".parquet"), keys(s3, url)
        assert location.size(temporary[0]) > 0  # the whole file is in the store, under a hidden name
        cache = LatentCache(url, storage_options=s3.storage_options)
        assert cache.files == [first] and len(cache) == 3  # the reader sees only the finished shard
        assert finished_ids(location, "train") == {"r000", "r001", "r002"}
    finally:
        release.set()
        flushing.join(60)
    assert len(LatentCache(url, storage_options=s3.storage_options)) == 6
    monkeypatch.undo()
    # what a kill between upload and copy leaves: a temporary key, removed by the rank's next writer
    stale = location.path("train/.rank-0-shard-00002.parquet.tmp-elsewhere-1.parquet")
    location.fs.pipe_file(stale, b"PAR1 half")
    ShardWriter(location, "train", 0)
    assert not [k for k in keys(s3, url) if ".tmp-" in k]


def test_each_row_is_one_ranged_get_and_reads_the_values_a_local_cache_holds(
    s3: S3StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("medvideocap.latents.format.ROW_GROUP_BYTES", 1)  # one row per group, as real rows
    shapes = [(4, 2, 4, 6), (4, 3, 4, 6)] * 3
    local = write_random_cache(tmp_path / "local", shapes)
    url = f"s3://{new_bucket(s3)}/latents"
    write_random_cache(resolve(url, storage_options=s3.storage_options), shapes)  # type: ignore[arg-type]
    remote, here = LatentCache(url, storage_options=s3.storage_options), LatentCache(local)
    assert remote.ids == here.ids
    for i in range(len(remote)):
        before = len(s3.requests)
        got, want = remote.raw(i), here.raw(i)
        asked = [r for r in s3.requests[before:] if r.method in ("GET", "HEAD")]
        assert [(r.method, r.status) for r in asked] == [("GET", 206)], asked  # one ranged GET, no listing
        assert asked[0].range is not None
        assert got["owned"] and here.raw(i)["owned"]
        for name in ("latent", "logvar", "text"):
            np.testing.assert_array_equal(got[name], want[name])
        got["latent"] += 1  # memory of its own: the trainer normalises it in place
    items = load_latents(url, storage_options=s3.storage_options, posterior="mode")
    np.testing.assert_array_equal(
        items[3]["latents"].numpy(), load_latents(local, posterior="mode")[3]["latents"]
    )


@pytest.fixture
def refused_credentials() -> Iterator[None]:
    """moto checks every request's signature while this is active: its test key is then unknown."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from medvideocap.cli import main

    return CliRunner().invoke(main, list(args))


def test_a_missing_bucket_is_one_error_naming_the_url_before_any_model_loads(
    s3: S3StandIn, dataset: Any, tmp_path: Path
) -> None:
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/latents"
    options = ["--storage-option", f"endpoint_url={s3.endpoint}", "--storage-option", "key=testing"]
    options += ["--storage-option", f"secret={SECRET}"]
    res = _cli("encode-latents", str(dataset[0]), "--out", url, *options, "--vae", str(tmp_path / "no-model"))
    assert res.exit_code == 1, res.output
    (line,) = res.output.strip().splitlines()  # one line, no traceback; the model was never looked for
    assert line.startswith(f"Error: {url}: cannot write the latent cache: the bucket s3://"), line
    assert "does not exist" in line
    assert SECRET not in res.output
    with pytest.raises(
        CacheStorageError, match=r"s3://no-such-bucket-\w+/latents: cannot read the latent cache"
    ):
        load_latents(url, storage_options={**s3.storage_options, "secret": SECRET})


def test_refused_credentials_are_one_error_naming_the_url_and_never_the_secret(
    s3: S3StandIn, s3_cache: str, dataset: Any, tmp_path: Path, refused_credentials: None
) -> None:
    options = {**s3.storage_options, "secret": SECRET}
    with pytest.raises(CacheStorageError) as caught:
        load_latents(s3_cache, storage_options=options)
    message = str(caught.value)
    assert message.startswith(f"{s3_cache}: cannot read the latent cache: access denied"), message
    assert "credentials" in message and SECRET not in message and "\n" not in message
    flags = ["--storage-option", f"endpoint_url={s3.endpoint}", "--storage-option", "key=testing"]
    flags += ["--storage-option", f"secret={SECRET}"]
    res = _cli("encode-latents", str(dataset[0]), "--out", f"{s3_cache}-2", *flags, "--vae", str(tmp_path))
    assert res.exit_code == 1 and "access denied" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and SECRET not in res.output


def test_a_drop_log_in_s3_is_republished_whole_and_a_resume_skips_what_it_names(
    s3: S3StandIn, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from medvideocap.latents import read_dropped
    from medvideocap.latents.dropped import dropped_path

    root = tmp_path / "ds"
    ids = write_hub_native(root, 3, short_ids=(1,))  # clip001 is too short for the frame spec: dropped
    url = f"s3://{new_bucket(s3)}/latents"
    location = resolve(url, storage_options=s3.storage_options)
    config = tiny_config(tiny_model_dir, num_workers=0)
    (first,) = encode_latents(root, url, config=config, storage_options=s3.storage_options)
    assert (first.encoded, first.dropped) == (2, 1)
    log = dropped_path(location, "train", 0)
    assert log == f"{url}/meta/dropped-train-rank-0.jsonl" and location.is_file(str(log))
    [row] = read_dropped(log, location=location)
    assert row["id"] == ids[1] and row["reason"]
    assert finished_ids(location, "train") == set(ids)
    (again,) = encode_latents(root, url, config=config, storage_options=s3.storage_options)
    assert (again.skipped_done, again.encoded, again.dropped) == (3, 0, 0)
    location.fs.pipe_file(str(log), location.read_bytes(str(log)) + b"not json\n{}\n")
    with pytest.raises(LatentCacheError, match=rf"{url}/meta/dropped-train-rank-0.jsonl:2: not a JSON line"):
        finished_ids(location, "train")
