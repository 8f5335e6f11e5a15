"""medvideocap.dataset.layout: the one table of hub-native paths, and layout detection on real folders.

The writer writes where these names say and the readers read from there; these tests pin both ends
to the same table, so a path that changes in one place changes everywhere or fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_loader import clip_bytes, clip_record

from medvideocap.dataset import layout
from medvideocap.dataset.hubnative import HubNativeDataset
from medvideocap.dataset.layout import (
    FORMAT,
    HUB_NATIVE,
    INFO_PATH,
    METADATA_GLOB,
    README_PATH,
    REJECTS_PATH,
    SHARDS_GLOB,
    UPSTREAM,
    LayoutError,
    detect,
    metadata_path,
    resolve,
    shard_path,
    split_dir,
)
from medvideocap.dataset.writer import DatasetWriter
from medvideocap.loading.streaming import list_shards


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-split dataset (card included) written by the writer, with one reject."""
    root = tmp_path_factory.mktemp("layout") / "ds"
    with DatasetWriter(root, shard_bytes=10_000) as writer:
        for i, split in enumerate(["train", "train", "test"]):
            rec = clip_record(f"c{i}", seconds=1.0, fps=8, size=(64, 48), split=split)
            writer.write(rec, clip_bytes(1.0, 8, (64, 48)))
        writer.reject("raw/x.mp4", "probe", "unreadable")
    return root


def test_path_helpers_spell_the_published_layout() -> None:
    assert INFO_PATH == "meta/info.json" and REJECTS_PATH == "meta/rejects.parquet"
    assert README_PATH == "README.md" and layout.FUNNEL_PATH == "meta/funnel.json"
    assert metadata_path("validation") == "metadata/validation.parquet"
    assert split_dir("test") == "data/test"
    assert shard_path("train", 0) == "data/train/shard-00000.tar"
    assert shard_path("train", 123456) == "data/train/shard-123456.tar"


def test_the_writer_writes_every_file_where_the_layout_says(written: Path) -> None:
    files = {p.relative_to(written).as_posix() for p in written.rglob("*") if p.is_file()}
    assert {INFO_PATH, REJECTS_PATH, README_PATH, metadata_path("train"), metadata_path("test")} <= files
    shards = {f for f in files if f.startswith("data/")}
    assert shards and all(Path(f).match(SHARDS_GLOB) for f in shards)
    assert shard_path("train", 0) in shards and shard_path("test", 0) in shards
    assert {f for f in files if Path(f).match(METADATA_GLOB)} == {
        metadata_path("train"),
        metadata_path("test"),
    }
    info = json.loads((written / INFO_PATH).read_text())
    assert info["format"] == FORMAT == "medvideocap/hub-native"
    assert not (written / layout.PROGRESS_DIR).exists()  # resume state is gone once the dataset is closed


def test_the_readers_find_what_the_writer_wrote(written: Path) -> None:
    ds = HubNativeDataset(written)
    assert ds.splits == ["train", "test"]
    assert [ds.location.relative(p) for p in ds.shards("test")] == [shard_path("test", 0)]
    assert list_shards(written, "test") == [str(written / shard_path("test", 0))]
    assert ds.metadata("train")["shard"].to_list()[0] == shard_path("train", 0)


def test_detect_tells_the_layouts_apart(written: Path, tmp_path: Path) -> None:
    assert detect(written) == HUB_NATIVE
    assert resolve(written) == (HUB_NATIVE, written)
    no_info = tmp_path / "no-info"  # shards + metadata parquet are hub-native even without info.json
    for rel in (shard_path("train", 0), metadata_path("train")):
        (no_info / rel).parent.mkdir(parents=True, exist_ok=True)
        (no_info / rel).write_bytes((written / rel).read_bytes())
    assert detect(no_info) == HUB_NATIVE
    (no_info / shard_path("train", 0)).unlink()
    assert detect(no_info) is None
    upstream_meta = tmp_path / "upstream-meta"
    upstream_meta.mkdir()
    (upstream_meta / "MedVideoCap-55K.json").write_text("[]")
    assert detect(upstream_meta, videos=False) == UPSTREAM
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match=r"meta/info\.json.*data/<split>/shard-\*\.tar"):
        resolve(tmp_path / "empty")


def test_reading_the_format_does_not_import_the_writer() -> None:
    """The hub-native reader takes FORMAT from the layout, so writer -> card -> hubnative -> writer
    is no longer an import cycle."""
    code = "import sys, medvideocap.dataset.hubnative; print('medvideocap.dataset.writer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_card_names_its_charts_and_shards_through_the_layout(written: Path) -> None:
    from huggingface_hub import DatasetCard

    for chart in (layout.CATEGORY_CHART_PATH, layout.DURATION_CHART_PATH):
        assert chart.startswith(f"{layout.CHARTS_DIR}/") and (written / chart).is_file()
        assert f"]({chart})" in (written / README_PATH).read_text()
    (config,) = DatasetCard.load(written / README_PATH).data.configs
    assert {f["split"]: f["path"] for f in config["data_files"]} == {
        s: layout.split_shards_glob(s) for s in ("train", "test")
    }
    assert layout.split_shards_glob("test") == "data/test/shard-*.tar"


def test_an_unfinished_shard_is_named_as_the_layout_says(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds", shard_bytes=10**9)
    try:
        writer.write(clip_record("c0", seconds=1.0, fps=8, size=(64, 48)), clip_bytes(1.0, 8, (64, 48)))
        folder = tmp_path / "ds" / split_dir("train")
        assert [p.name for p in folder.glob(layout.PARTIAL_SHARD_GLOB)] == [".shard-00000.tar.partial"]
        assert not list(folder.glob(layout.SHARD_GLOB))  # never taken for a finished shard
    finally:
        writer.abort()
