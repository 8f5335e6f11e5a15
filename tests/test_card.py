from __future__ import annotations

import glob
import json
from pathlib import Path

import polars as pl
import pytest
from fixtures_hubnative import converted

from medvideocap.dataset.card import card_configs, read_card_header, render_card, size_category
from medvideocap.dataset.hubnative import webdataset_features
from medvideocap.dataset.schema import SPLITS, Caption, ClipRecord
from medvideocap.dataset.writer import DatasetWriter


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted(tmp_path_factory.mktemp("card"))


def _resolve(root: Path, pattern: str) -> list[str]:
    return sorted(glob.glob(str(root / pattern)))


def test_card_parses_with_huggingface_hub_and_declares_the_dataset(hub: Path) -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(hub / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.task_categories == ["text-to-video"]
    assert card.data.size_categories == ["n<1K"]
    assert "medical" in card.data.tags
    assert card.data.configs == card_configs(list(SPLITS))


def test_card_configs_are_exactly_what_load_dataset_uses(hub: Path, tmp_path: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard

    (config,) = DatasetCard.load(hub / "README.md").data.configs
    builder = datasets.load_dataset_builder(str(hub))
    assert builder.config.name == config["config_name"] == "default"
    used = {split: sorted(files) for split, files in builder.config.data_files.items()}
    declared = {f["split"]: _resolve(hub, f["path"]) for f in config["data_files"]}
    assert used == declared
    assert all(declared.values())
    assert builder.info.features == webdataset_features()  # declared in the card, not inferred
    ds = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "hf"))
    info = json.loads((hub / "meta" / "info.json").read_text())
    assert {s: ds[s].num_rows for s in ds} == info["counts"]


def test_metadata_parquet_loads_as_the_card_shows(hub: Path, tmp_path: Path) -> None:
    import datasets

    files = {s: str(hub / "metadata" / f"{s}.parquet") for s in SPLITS}
    meta = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    info = json.loads((hub / "meta" / "info.json").read_text())
    assert {s: meta[s].num_rows for s in meta} == info["counts"]
    assert meta["train"].features["scores"]["aesthetic"] == datasets.Value("float64")
    assert 'load_dataset("parquet", data_files=' in (hub / "README.md").read_text()


def test_card_body_reports_this_builds_statistics_and_charts(hub: Path) -> None:
    text = (hub / "README.md").read_text()
    info = json.loads((hub / "meta" / "info.json").read_text())
    for split, n in info["counts"].items():
        assert f"| {split} | {n} |" in text
    for category, n in info["categories"].items():
        assert f"| {category} |" in text and f"| {n} | {100 * n / info['total']:.1f}% |" in text
    assert "| 64x48 | 8 |" in text
    assert info["fingerprint"] in text
    for chart in ("meta/charts/categories.png", "meta/charts/durations.png"):
        assert f"]({chart})" in text
        assert (hub / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not for clinical use" in text and "Apache-2.0" in text
    assert '"salt": "medvideocap-v1"' in text  # the curation recipe is shown


def test_render_is_deterministic_and_names_the_repo(hub: Path) -> None:
    charts = (hub / "meta" / "charts" / "durations.png").read_bytes()
    first = render_card(hub, repo_id="someone/medvideocap")
    assert render_card(hub, repo_id="someone/medvideocap") == first
    assert (hub / "meta" / "charts" / "durations.png").read_bytes() == charts
    assert 'load_dataset("someone/medvideocap"' in first


def test_empty_splits_are_not_declared_and_the_dataset_still_loads(tmp_path: Path, tiny_clip: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard

    with DatasetWriter(tmp_path / "ds", split_fn=lambda r: "train") as writer:
        for i in range(2):
            writer.write(
                ClipRecord(
                    id=f"c{i}",
                    group=f"g{i}",
                    file_name=f"c{i}.mp4",
                    duration=2.0,
                    fps=8.0,
                    width=64,
                    height=48,
                    captions=[Caption(name="detailed", text="x")] if i else [],
                ),
                tiny_clip,
            )
    card = DatasetCard.load(tmp_path / "ds" / "README.md")
    assert card.data.configs == card_configs(["train"])
    assert [f["split"] for f in card.data.configs[0]["data_files"]] == ["train"]
    ds = datasets.load_dataset(str(tmp_path / "ds"), cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"]
    # first row has no captions: declared features keep the column typed anyway
    assert [len(r["json"]["captions"]) for r in ds["train"]] == [0, 1]


@pytest.mark.parametrize(("n", "label"), [(8, "n<1K"), (55_803, "10K<n<100K"), (1000, "1K<n<10K")])
def test_size_category(n: int, label: str) -> None:
    assert size_category(n) == label


@pytest.mark.parametrize(
    ("build", "title"),
    [
        ({"name": "Knee clinic clips", "source": "raw/"}, "Knee clinic clips"),
        (None, "Medical video clips built with medvideocap (recipe default)"),
    ],
)
def test_the_card_of_a_build_says_what_it_is_not_medvideocap_55k(tmp_path: Path, build, title: str) -> None:
    from huggingface_hub import DatasetCard

    from medvideocap.build.recipe import load_recipe

    recipe = load_recipe("default").model_dump(mode="json")
    if build:
        recipe["build"] = build
    out = tmp_path / "built"
    with DatasetWriter(out, recipe=recipe):
        pass
    text = (out / "README.md").read_text()
    card = DatasetCard.load(out / "README.md")
    assert card.data.pretty_name == title and not card.data.source_datasets
    assert f"# {title}\n" in text and "MedVideoCap-55K (hub-native)" not in text
    assert "by the `default` recipe" in text and (build is None or "from raw/" in text)


def test_card_numbers_are_the_stats_modules_numbers(hub: Path) -> None:
    from medvideocap.dataset.stats import compute_stats, load_metadata

    text = (hub / "README.md").read_text()
    frame = load_metadata(hub).frame
    for name, part in [*((s, frame.filter(pl.col("split") == s)) for s in SPLITS), ("all", frame)]:
        q = compute_stats(part, digits=None)
        d = q["duration"]
        row = (
            f"| {name} | {q['clips']} | {d['min']:.2f} | {d['mean']:.2f} | {d['p50']:.2f} | {d['max']:.2f} |"
        )
        assert f"{row} {q['hours']:.3f} |" in text, row
    for r in compute_stats(frame)["by_resolution"]:
        assert f"| {r['resolution']} | {r['clips']} | {r['mean_fps']:.1f} |" in text


def test_card_charts_are_the_plots_modules_charts_written_atomically(hub: Path, tmp_path: Path) -> None:
    from medvideocap.dataset.plots import category_chart, duration_chart
    from medvideocap.dataset.stats import compute_stats, load_metadata

    frame = load_metadata(hub).frame
    counts = {k: c["count"] for k, c in compute_stats(frame)["categories"].items()}
    category_chart(counts, tmp_path / "categories.png")
    duration_chart(frame["duration"], tmp_path / "durations.png")
    for name in ("categories.png", "durations.png"):
        assert (hub / "meta" / "charts" / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert sorted(p.name for p in (hub / "meta" / "charts").iterdir()) == ["categories.png", "durations.png"]


def test_card_rounds_each_number_once(tmp_path: Path, tiny_clip: Path) -> None:
    # 2.13504 s: rounded to 4 places first (stats' JSON precision) it would read 2.1350 -> "2.13"
    with DatasetWriter(tmp_path / "ds", split_fn=lambda r: "train") as writer:
        writer.write(
            ClipRecord(
                id="c0", group="g0", file_name="c0.mp4", duration=2.13504, fps=8.0, width=64, height=48
            ),
            tiny_clip,
        )
    text = (tmp_path / "ds" / "README.md").read_text()
    assert "| train | 1 | 2.14 | 2.14 | 2.14 | 2.14 | 0.001 |" in text


def test_rendered_card_header_reads_back_through_the_strict_reader(hub: Path) -> None:
    from huggingface_hub import DatasetCard

    header = read_card_header(hub / "README.md")
    assert header == DatasetCard.load(hub / "README.md").data.to_dict()
    assert header["configs"] == card_configs(list(SPLITS))
