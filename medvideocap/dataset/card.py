"""The dataset card (``README.md``) of a hub-native dataset, rendered from ``cards/dataset_card.md.j2``.

The YAML header is what makes ``load_dataset(DIR_OR_REPO)`` work with no loading script: its
``configs`` map each split to its shards (the default, webdataset config) and to its metadata
parquet (the ``metadata`` config), and ``dataset_info`` declares the features of the default
config so ``datasets`` never guesses column types from the first rows. The body carries real
statistics of this build, computed from the metadata parquet, and charts saved next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from medvideocap.dataset.layout import (
    CHARTS_DIR,
    FUNNEL_PATH,
    INFO_PATH,
    README_PATH,
    REJECTS_PATH,
    split_dir,
)
from medvideocap.dataset.schema import SCHEMA_VERSION, SPLITS, Category
from medvideocap.resources import resource

TEMPLATE = "dataset_card.md.j2"
UPSTREAM_REPO = "FreedomIntelligence/MedVideoCap-55K"


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M"


def card_configs(splits: list[str]) -> list[dict[str, Any]]:
    """The ``configs`` of the card for a dataset holding ``splits``.

    Empty splits are left out: ``load_dataset`` fails on a split whose files do not exist. There is
    deliberately no second config over ``metadata/*.parquet``: ``datasets`` (checked with 5.2) picks
    one builder per repository from the first config's files, so a parquet config next to the
    webdataset one would be read with the webdataset builder and fail. The card shows how to read the
    parquet directly (``load_dataset("parquet", data_files=...)`` or polars) instead.
    """
    present = [s for s in SPLITS if s in splits]
    return [
        {
            "config_name": "default",
            "default": True,
            "data_files": [{"split": s, "path": f"{split_dir(s)}/*.tar"} for s in present],
        }
    ]


def identity(info: dict[str, Any]) -> dict[str, Any]:
    """What this dataset is, from ``meta/info.json``'s recipe: a conversion of the upstream release
    (or a re-captioning of one) is MedVideoCap-55K; a ``build`` from one's own videos is named by
    its ``--name`` (``recipe.build.name``), else by its recipe, with its source folder, and claims no
    upstream dataset as its source."""
    recipe = info.get("recipe") or {}
    if "stages" not in recipe:  # convert / recaption of the upstream release
        return {
            "title": "MedVideoCap-55K (hub-native)",
            "built": False,
            "source_datasets": [UPSTREAM_REPO],
            "recipe_name": None,
            "source": UPSTREAM_REPO,
        }
    build = recipe.get("build") or {}
    name = str(recipe.get("name") or "custom")
    return {
        "title": str(build.get("name") or f"Medical video clips built with medvideocap (recipe {name})"),
        "built": True,
        "source_datasets": None,
        "recipe_name": name,
        "source": str(build.get("source") or "local video files"),
    }


def card_data(info: dict[str, Any]) -> Any:
    """``huggingface_hub.DatasetCardData`` of the card header, built from ``meta/info.json``."""
    import datasets
    from huggingface_hub import DatasetCardData

    from medvideocap.dataset.hubnative import webdataset_features

    splits = [s for s in SPLITS if info.get("counts", {}).get(s)]
    who = identity(info)
    data = DatasetCardData(
        license="apache-2.0" if not who["built"] else "other",
        language=["en"],
        task_categories=["text-to-video"],
        size_categories=[size_category(int(info.get("total", 0)))],
        pretty_name=who["title"],
        tags=["medical", "video", "text-to-video", "video-captioning", "webdataset", "medvideocap"],
        source_datasets=who["source_datasets"],
        configs=card_configs(splits),
    )
    infos = datasets.info.DatasetInfosDict({"default": datasets.DatasetInfo(features=webdataset_features())})
    infos.to_dataset_card_data(data)
    return data


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def build_stats(root: Path, splits: list[str]) -> dict[str, Any]:
    """Markdown tables of this build: clips per split and category, durations, resolutions, scores."""
    from medvideocap.dataset.hubnative import read_metadata

    frames = [
        read_metadata(root, s).select(
            pl.lit(s).alias("split"),
            "category",
            "duration",
            "fps",
            "width",
            "height",
            pl.col("scores").struct.field("aesthetic").alias("aesthetic"),
            pl.col("scores").struct.field("technical").alias("technical"),
        )
        for s in splits
    ]
    df = pl.concat(frames) if frames else pl.DataFrame()
    if df.is_empty():
        return {
            "df": df,
            "split_table": "",
            "category_table": "",
            "duration_table": "",
            "resolution_table": "",
            "score_table": "",
            "hours": 0.0,
        }
    cats = [c.value for c in Category if c.value in set(df["category"].to_list())]
    category_rows = []
    for cat in cats:
        row: list[Any] = [cat]
        sub = df.filter(pl.col("category") == cat)
        for s in splits:
            row.append(sub.filter(pl.col("split") == s).height)
        row += [sub.height, f"{100 * sub.height / df.height:.1f}%"]
        category_rows.append(row)
    duration_rows = []
    for s in [*splits, "all"]:
        d = df if s == "all" else df.filter(pl.col("split") == s)
        dur = d["duration"]
        duration_rows.append(
            [
                s,
                d.height,
                _fmt(dur.min()),
                _fmt(dur.mean()),
                _fmt(dur.median()),
                _fmt(dur.max()),
                _fmt(dur.sum() / 3600, 3),
            ]
        )
    res = (
        df.group_by("width", "height")
        .agg(pl.len().alias("clips"), pl.col("fps").mean().alias("fps"))
        .sort(["clips", "width", "height"], descending=[True, False, False])
    )
    resolution_rows = [
        [f"{r['width']}x{r['height']}", r["clips"], _fmt(r["fps"], 1)] for r in res.iter_rows(named=True)
    ]
    score_rows = []
    for name in ("aesthetic", "technical"):
        col = df[name].drop_nulls()
        score_rows.append([name, col.len(), _fmt(col.min(), 3), _fmt(col.mean(), 3), _fmt(col.max(), 3)])
    return {
        "df": df,
        "split_table": _table(
            ["split", "clips"], [[s, df.filter(pl.col("split") == s).height] for s in splits]
        ),
        "category_table": _table(["category", *splits, "total", "share"], category_rows),
        "duration_table": _table(
            ["split", "clips", "min s", "mean s", "median s", "max s", "hours"], duration_rows
        ),
        "resolution_table": _table(["resolution", "clips", "mean fps"], resolution_rows),
        "score_table": _table(["score", "clips with it", "min", "mean", "max"], score_rows),
        "hours": float(df["duration"].sum()) / 3600,
    }


def write_charts(root: Path, df: pl.DataFrame) -> list[str]:
    """Category and duration charts as PNG under ``meta/charts/``; returns their paths relative to root.

    The PNGs carry no software/date metadata, so a rebuild of the same data gives the same bytes."""
    if df.is_empty():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = root / CHARTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []

    counts = df.group_by("category").len().sort(["len", "category"], descending=[True, False])
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.barh(counts["category"].to_list()[::-1], counts["len"].to_list()[::-1], color="#4c72b0")
    ax.set_xlabel("clips")
    ax.set_title("Clips per category")
    fig.tight_layout()
    fig.savefig(out / "categories.png", metadata={"Software": None})
    plt.close(fig)
    written.append(f"{CHARTS_DIR}/categories.png")

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.hist(df["duration"].to_list(), bins=30, color="#55a868")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Clip durations")
    fig.tight_layout()
    fig.savefig(out / "durations.png", metadata={"Software": None})
    plt.close(fig)
    written.append(f"{CHARTS_DIR}/durations.png")
    return written


def _funnel_table(path: Path) -> str:
    """The build's per-stage funnel (written by ``medvideocap build``), like the paper's table."""
    if not path.exists():
        return ""
    funnel = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        [
            st["stage"],
            st.get("unit", ""),
            st["in"],
            st["out"],
            st["dropped"],
            ", ".join(f"{r['code']} ({r['count']})" for r in st.get("top_reasons", [])) or "-",
        ]
        for st in funnel.get("stages", [])
    ]
    return _table(["stage", "unit", "in", "out", "dropped", "top reasons"], rows) if rows else ""


def render_card(root: Path | str, *, repo_id: str | None = None) -> str:
    """The card text for the dataset in ``root`` (writes its charts as a side effect)."""
    import jinja2

    root = Path(root)
    info = json.loads((root / INFO_PATH).read_text(encoding="utf-8"))
    splits = [s for s in SPLITS if info.get("counts", {}).get(s)]
    stats = build_stats(root, splits)
    charts = write_charts(root, stats.pop("df"))
    rejects_path = root / REJECTS_PATH
    reject_table = ""
    if rejects_path.exists():
        rejects = pl.read_parquet(rejects_path)
        if rejects.height:
            summary = (
                rejects.group_by("stage", "reason")
                .len()
                .sort(["len", "stage", "reason"], descending=[True, False, False])
            )
            reject_table = _table(["stage", "reason", "inputs"], [list(r) for r in summary.iter_rows()])
    funnel_table = _funnel_table(root / FUNNEL_PATH)
    template = jinja2.Template(
        resource("cards", TEMPLATE).read_text(encoding="utf-8"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return template.render(
        card_data=card_data(info).to_yaml(),
        who=identity(info),
        info=info,
        recipe_json=json.dumps(info.get("recipe", {}), indent=2, sort_keys=True),
        splits=splits,
        charts=charts,
        reject_table=reject_table,
        funnel_table=funnel_table,
        repo_id=repo_id or "OWNER/medvideocap-55k",
        upstream_repo=UPSTREAM_REPO,
        schema_version=SCHEMA_VERSION,
        metadata_files={
            s: f"hf://datasets/{repo_id or 'OWNER/medvideocap-55k'}/metadata/{s}.parquet" for s in splits
        },
        wds_split=splits[0] if splits else "train",
        wds_last=max(int(info.get("shards", {}).get(splits[0], 1)) - 1, 0) if splits else 0,
        **stats,
    )


def write_card(root: Path | str, *, repo_id: str | None = None) -> Path:
    """Render and atomically write ``root/README.md``."""
    from medvideocap.atomic import atomic_write_bytes

    root = Path(root)
    path = root / README_PATH
    atomic_write_bytes(path, render_card(root, repo_id=repo_id).encode())
    return path
