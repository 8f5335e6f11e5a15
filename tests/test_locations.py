"""medvideocap.locations: the one table from a URL scheme to its filesystem, and reading a dataset in
object storage (a real S3 API: moto's server on localhost) exactly as a local folder is read."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner
from fixtures_loader import make_hub_native

from medvideocap.cli import main
from medvideocap.dataset.layout import HUB_NATIVE, LayoutError, locate, shard_path
from medvideocap.locations import (
    SCHEMES,
    Location,
    LocationError,
    MissingBackendError,
    parse_storage_options,
    resolve,
)
from medvideocap.paths import OutsideRootError

if TYPE_CHECKING:
    from fixtures_s3 import S3StandIn  # the s3 fixture's type (conftest.py)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub-native dataset of 4 clips in 2+ shards."""
    return make_hub_native(tmp_path_factory.mktemp("loc") / "ds", 4, shard_bytes=25_000)


@pytest.fixture(scope="module")
def bucket(s3: S3StandIn, folder: Path) -> str:
    """``folder`` uploaded to a fresh bucket: its ``s3://`` URL."""
    return s3.upload(folder)


@pytest.mark.parametrize(
    ("source", "scheme", "root", "url"),
    [
        ("s3://bucket/ds/", "s3", "bucket/ds", "s3://bucket/ds"),
        ("gs://bucket/ds", "gs", "bucket/ds", "gs://bucket/ds"),
        ("az://container/ds", "az", "container/ds", "az://container/ds"),
        ("abfs://container/ds", "abfs", "container/ds", "abfs://container/ds"),
        ("https://example.org/ds", "https", "example.org/ds", "https://example.org/ds"),
        ("hf://datasets/org/name@v1", "hf", "datasets/org/name@v1", "hf://datasets/org/name@v1"),
        ("file:///data/ds", "file", "/data/ds", "/data/ds"),
        ("/data/ds", "file", "/data/ds", "/data/ds"),
    ],
)
def test_each_scheme_resolves_through_the_table(source: str, scheme: str, root: str, url: str) -> None:
    location = resolve(source)
    assert (location.scheme, location.root, location.url, location.repo_id) == (scheme, root, url, None)
    assert scheme in SCHEMES
    assert (location.local == Path(root)) == (scheme == "file")


def test_a_bare_repo_id_is_a_hub_location_at_its_revision(tmp_path: Path) -> None:
    location = resolve("org/name", revision="refs/pr/1")
    assert location.scheme == "hf" and location.repo_id == "org/name" and location.revision == "refs/pr/1"
    assert location.url == "hf://datasets/org/name@refs%2Fpr%2F1"  # as HfFileSystem spells a revision
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert resolve(tmp_path / "org" / "name").local == tmp_path / "org" / "name"  # a Path is always local


def test_an_unknown_scheme_names_the_url_and_the_schemes_there_are() -> None:
    with pytest.raises(LocationError, match=r"ftp://host/ds: unknown scheme ftp://.*s3://.*gs://"):
        resolve("ftp://host/ds")


@pytest.mark.parametrize(
    ("url", "package", "extra"), [("gs://b/ds", "gcsfs", "gcs"), ("az://c/ds", "adlfs", "azure")]
)
def test_a_missing_backend_names_the_url_and_what_to_install(
    url: str, package: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # not installed, whatever this machine has
    registry = importlib.import_module("fsspec.registry")
    for protocol in ("gs", "gcs", "az", "abfs"):
        monkeypatch.delitem(registry._registry, protocol, raising=False)
    location = resolve(url)
    with pytest.raises(MissingBackendError) as caught:
        location.exists(location.url)
    message = str(caught.value)
    assert url in message and f"pip install 'medvideocap[{extra}]'" in message and package in message
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ValueError)


def test_every_extra_the_table_names_installs_its_package() -> None:
    import tomllib

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for scheme in SCHEMES.values():
        if scheme.extra is not None:
            assert any(req.startswith(scheme.package) for req in extras[scheme.extra]), scheme


def test_storage_options_are_key_value_pairs_read_as_json_or_text() -> None:
    options = parse_storage_options(
        [
            "endpoint_url=http://localhost:9000",
            "anon=true",
            "max_concurrency=8",
            'client_kwargs={"region_name": "eu"}',
        ]
    )
    assert options == {
        "endpoint_url": "http://localhost:9000",
        "anon": True,
        "max_concurrency": 8,
        "client_kwargs": {"region_name": "eu"},
    }
    with pytest.raises(LocationError, match="'endpoint_url': expected KEY=VALUE"):
        parse_storage_options(["endpoint_url"])


@pytest.mark.parametrize("shard", ["../other/shard-00000.tar", "/etc/passwd", "data/../../x.tar", ""])
def test_a_path_read_from_a_row_must_stay_inside_the_root(shard: str) -> None:
    location = resolve("s3://bucket/ds")
    assert (
        location.join("data/train/./shard-00000.tar", where="row 1")
        == "s3://bucket/ds/data/train/shard-00000.tar"
    )
    with pytest.raises(
        OutsideRootError, match=r"metadata/train.parquet row 3: shard .* leads outside s3://bucket/ds"
    ):
        location.join(shard, where="metadata/train.parquet row 3", what="shard")


def test_listing_and_reads_in_s3_are_those_of_the_local_folder(
    s3: S3StandIn, folder: Path, bucket: str
) -> None:
    local, remote = resolve(folder), resolve(bucket, storage_options=s3.storage_options)
    assert remote.local is None
    rel = [local.relative(p) for p in local.glob("data/*/shard-*.tar")]
    assert [remote.relative(p) for p in remote.glob("data/*/shard-*.tar")] == rel and len(rel) >= 2
    assert list(remote.sizes("data/*/shard-*.tar").values()) == list(
        local.sizes("data/*/shard-*.tar").values()
    )
    shard = shard_path("train", 0)
    assert remote.is_file(remote.path(shard)) and not remote.is_file(remote.path("data/train"))
    assert remote.read_bytes(remote.path("meta/info.json")) == (folder / "meta/info.json").read_bytes()
    with remote.open(remote.path(shard), block_size=4096) as fh:
        assert fh.read() == (folder / shard).read_bytes()
    s3.requests.clear()
    assert remote.pread(remote.path(shard), 1000, 3000) == local.pread(local.path(shard), 1000, 3000)
    assert s3.requests == [s3.requests[0]] and s3.requests[0].range == "bytes=1000-3999"
    assert s3.requests[0].status == 206  # one ranged GET, not the shard


def test_a_read_past_the_end_of_an_object_is_a_short_read_as_on_disk(
    s3: S3StandIn, folder: Path, bucket: str
) -> None:
    from medvideocap.handles import ShortReadError

    shard = shard_path("train", 0)
    size = (folder / shard).stat().st_size
    for location in (resolve(folder), resolve(bucket, storage_options=s3.storage_options)):
        with pytest.raises(ShortReadError, match=f"wanted 100 bytes at offset {size - 10}, got 10"):
            location.pread(location.path(shard), size - 10, 100)
        with pytest.raises(ShortReadError, match="got 0"):
            location.pread(location.path(shard), size + 10, 100)


def _pread(location: Location, path: str) -> bytes:
    return location.pread(path, 512, 1024)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_location_used_in_the_parent_reads_in_a_forked_or_spawned_worker(
    s3: S3StandIn, bucket: str, context: str
) -> None:
    """fsspec's S3 filesystem refuses to run in a forked child; the location makes a new one there."""
    location = resolve(bucket, storage_options=s3.storage_options)
    path = location.path(shard_path("train", 0))
    expected = _pread(location, path)  # the parent's filesystem and event loop now exist
    with multiprocessing.get_context(context).Pool(1) as pool:
        assert pool.apply(_pread, (location, path)) == expected


def test_a_dataset_in_s3_is_located_as_a_local_folder_is(s3: S3StandIn, folder: Path, bucket: str) -> None:
    kind, location = locate(bucket, storage_options=s3.storage_options)
    assert (kind, location.url) == (HUB_NATIVE, bucket)
    with pytest.raises(LayoutError, match="s3://.*/nothing: no such folder$"):
        locate(f"{bucket}/nothing", storage_options=s3.storage_options)


@pytest.mark.parametrize("verb", ["info", "stats"])
def test_info_and_stats_of_a_dataset_in_s3_equal_the_local_ones(
    s3: S3StandIn, folder: Path, bucket: str, verb: str
) -> None:
    runner = CliRunner()
    local = runner.invoke(main, [verb, str(folder), "--json"])
    remote = runner.invoke(main, [verb, bucket, "--json", *s3.cli_options()])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert (b["source"], b.get("root", bucket)) == (bucket, bucket)
    assert {k: v for k, v in a.items() if k not in ("source", "root")} == {
        k: v for k, v in b.items() if k not in ("source", "root")
    }
    assert a["clips"] == 4


def test_a_storage_option_without_a_value_is_one_clear_error(bucket: str) -> None:
    result = CliRunner().invoke(main, ["info", bucket, "--storage-option", "endpoint_url"])
    assert result.exit_code != 0 and "expected KEY=VALUE" in result.output
    assert not isinstance(result.exception, ValueError)  # handled, no traceback


def test_a_local_location_closes_its_descriptors_when_it_goes(folder: Path) -> None:
    """``validate`` and ``load`` read members through a location that keeps descriptors open per
    process; dropping the location must not leak them (a long session validates many datasets)."""
    import gc
    import os

    def shards_open() -> int:  # descriptors on this dataset's files only: other threads open sockets
        fds = Path("/proc/self/fd")
        targets = []
        for fd in fds.iterdir():
            try:
                targets.append(os.readlink(fd))
            except OSError:  # closed meanwhile
                continue
        return sum(t.startswith(str(folder.resolve())) for t in targets)

    location = resolve(folder)
    shards = location.glob("data/*/shard-*.tar")
    for shard in shards:
        location.pread(shard, 0, 512)
    assert shards_open() == len(shards) >= 2
    del location
    gc.collect()
    assert shards_open() == 0


def test_a_hub_model_file_spec_is_taken_apart_in_one_place() -> None:
    from medvideocap.locations import LocationError, hub_model_file

    assert hub_model_file("hf://chaofengc/IQA-PyTorch-Weights/musiq_spaq.pth") == (
        "chaofengc/IQA-PyTorch-Weights",
        "musiq_spaq.pth",
    )
    assert hub_model_file("hf://owner/name/sub/dir/w.pt") == ("owner/name", "sub/dir/w.pt")
    assert hub_model_file("hf://owner/name") == ("owner/name", "")
    assert hub_model_file("owner/name") is None and hub_model_file("/weights/head.pth") is None
    assert hub_model_file("s3://bucket/w.pt") is None
    with pytest.raises(LocationError, match="OWNER/NAME/FILE"):
        hub_model_file("hf://owner-only")
