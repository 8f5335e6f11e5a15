"""`info` and `stats` report the right counts for both layouts; `--plots` writes real PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
from click.testing import CliRunner
from fixtures_hubnative import write_hub_native
from fixtures_upstream import FAULTS, make_upstream_release

from medvideocap.cli import main
from medvideocap.dataset.info import info
from medvideocap.dataset.schema import SCHEMA_VERSION
from medvideocap.dataset.stats import stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_upstream_release(tmp_path_factory.mktemp("upstream"), n_clips=6)


@pytest.fixture(scope="module")
def hub_native(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hub_native(release, tmp_path_factory.mktemp("hub") / "ds")


def test_info_on_upstream_release(release: Path) -> None:
    summary = info(release)
    assert summary["layout"] == "upstream" and summary["clips"] == 6 and summary["records"] == 6
    assert summary["video_members"] == 6
    assert summary["splits"] == {"unsplit": 6}
    # categories cycle through the paper's five: clip 5 is teaching again
    assert summary["categories"] == {
        "medical_teaching": 2,
        "clinical_practice": 1,
        "popular_science": 1,
        "medical_animation": 1,
        "medical_imaging": 1,
    }
    assert summary["files"]["zips"] == ["videos_1.zip", "videos_2.zip"]
    assert summary["bytes"]["videos"] == sum(p.stat().st_size for p in release.glob("*.zip"))
    assert summary["hours"] == pytest.approx((1.0 + 1.5 + 2.0) * 2 / 3600, abs=1e-4)
    assert summary["notes"] == []


def test_info_counts_only_valid_records_and_says_so(tmp_path: Path) -> None:
    root = make_upstream_release(tmp_path, n_clips=4, faults=FAULTS)
    summary = info(root)
    assert summary["records"] == 4 + 7  # every fault but video_without_record adds a record
    assert summary["clips"] == 4 + 5  # minus the non-numeric score and the wrong major version
    assert any("validate" in n for n in summary["notes"])


def test_info_on_metadata_only_download(release: Path, tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_bytes((release / "metadata.json").read_bytes())
    summary = info(tmp_path)
    assert summary["clips"] == 6 and summary["video_members"] == 0
    assert any("not downloaded" in n for n in summary["notes"])


def test_info_on_hub_native(hub_native: Path) -> None:
    result = CliRunner().invoke(main, ["info", str(hub_native), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layout"] == "hub-native" and summary["schema_version"] == SCHEMA_VERSION
    assert summary["splits"] == {"train": 5, "test": 1}
    assert summary["files"]["shards"] == {"train": 1, "test": 1}
    assert summary["bytes"]["videos"] > 0
    table = CliRunner().invoke(main, ["info", str(hub_native)])
    assert table.exit_code == 0 and "hub-native" in table.stdout


def test_stats_distributions(release: Path) -> None:
    result = stats(release)
    assert result["clips"] == 6
    assert result["duration"]["min"] == 1.0 and result["duration"]["max"] == 2.0
    assert result["duration"]["p50"] == 1.5 and result["duration"]["count"] == 6
    assert result["fps"]["values"] == {"8.0": 2, "10.0": 2, "12.0": 2}
    assert result["resolution"] == {"64x48": 6}
    assert sum(c["share"] for c in result["categories"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result["categories"]["medical_teaching"]["count"] == 2
    aesthetic = result["scores"]["aesthetic"]
    assert aesthetic["count"] == 6 and aesthetic["min"] == 4.0 and aesthetic["max"] == 5.0
    assert set(result["scores"]) == {"aesthetic", "technical"}
    assert result["caption_words"]["brief"]["min"] == 8
    assert result["camera_motion"] == {"static shot": 2, "pan left": 2, "zoom in": 2}


def test_stats_on_hub_native_matches_upstream(release: Path, hub_native: Path) -> None:
    up, hub = stats(release), stats(hub_native)
    assert hub["splits"] == {"train": 5, "test": 1}
    for key in ("clips", "categories", "duration", "fps", "resolution", "scores", "caption_words"):
        assert hub[key] == up[key], key


def test_stats_cli_writes_png_plots(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["stats", str(release), "--plots", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = [Path(p) for p in json.loads(result.stdout)["plots"]]
    names = {p.name for p in written}
    assert {"categories.png", "duration.png", "resolution.png", "fps.png", "scores.png"} <= names
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0  # not a blank canvas
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temp files left behind
    table = CliRunner().invoke(main, ["stats", str(release)])
    assert table.exit_code == 0 and "medical_teaching" in table.stdout


@pytest.mark.parametrize("verb", ["info", "stats"])
def test_a_path_that_is_no_dataset_is_one_clear_error(verb: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [verb, str(tmp_path)])
    assert result.exit_code == 1
    assert "not a dataset folder" in result.output and "videos_*.zip" in result.output
    assert not isinstance(result.exception, ValueError)  # handled, no traceback


def test_stats_orders_ties_by_value_and_rounds_only_when_asked(release: Path) -> None:
    from medvideocap.dataset.stats import compute_stats, load_metadata

    frame = load_metadata(release).frame
    counts = compute_stats(frame)["categories"]
    assert list(counts) == [  # 2 teaching clips, then the four 1-clip categories by name
        "medical_teaching",
        "clinical_practice",
        "medical_animation",
        "medical_imaging",
        "popular_science",
    ]
    reversed_rows = compute_stats(frame.reverse())
    assert list(reversed_rows["categories"]) == list(counts) and reversed_rows == compute_stats(frame)
    exact = compute_stats(frame, digits=None)
    assert exact["categories"]["popular_science"]["share"] == 1 / 6  # 0.1667 in the JSON report
    assert counts["popular_science"]["share"] == 0.1667
    assert exact["by_resolution"] == [
        {"resolution": "64x48", "width": 64, "height": 48, "clips": 6, "mean_fps": 10.0}
    ]
