"""Distributions over a dataset's metadata, computed with polars (no video is opened).

The same table serves both layouts: upstream records are mapped to schema rows first, hub-native
metadata parquet already is one. Knowing the distributions before training decides the frame spec and
buckets (how many clips are long enough for 81 frames at 16 fps? which resolutions dominate?).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from medvideocap.dataset.layout import HUB_NATIVE, local_folder, locate
from medvideocap.dataset.schema import SCORE_NAMES, UnknownFieldsWarning, arrow_schema
from medvideocap.locations import Location

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
UNSPLIT = "unsplit"


@dataclass
class MetadataTable:
    """The metadata of a dataset as one polars frame (schema columns + caption word counts)."""

    source: str
    layout: str
    root: Location
    frame: pl.DataFrame
    notes: list[str] = field(default_factory=list)
    upstream: Any = None
    """The :class:`~medvideocap.dataset.upstream.UpstreamRelease` read, for the upstream layout."""


def load_metadata(
    path_or_repo: str | Path | Location,
    *,
    revision: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> MetadataTable:
    """Read the metadata of either layout without touching (or downloading) any video; a URL
    (``s3://bucket/ds``) is read in place with ``storage_options``."""
    kind, root = locate(path_or_repo, revision, videos=False, storage_options=storage_options)
    notes: list[str] = []
    release = None
    if kind == HUB_NATIVE:
        from medvideocap.dataset.hubnative import HubNativeDataset

        ds = HubNativeDataset(root)
        names = arrow_schema().names
        parts = [ds.metadata(s).select(names) for s in ds.splits]
        # one chunk: polars 2.1 panics in ``pl.format`` over a multi-chunk frame filtered by a mask
        frame = pl.concat(parts, how="vertical_relaxed", rechunk=True) if parts else _empty()
    else:
        from medvideocap.dataset.upstream import UpstreamRelease

        release = UpstreamRelease.from_folder(
            local_folder(root, reader="reading an upstream release"), require_videos=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnknownFieldsWarning)
            rows = [r.to_json_dict() for r in release.records()]  # from_pylist keeps the schema's columns
        read = pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow_schema())) if rows else _empty()
        assert isinstance(read, pl.DataFrame)
        frame = read.with_columns(pl.col("split").fill_null(UNSPLIT))
        skipped = release.num_rows - len(rows)
        if skipped:
            notes.append(f"{skipped} of {release.num_rows} records do not fit the schema (see `validate`)")
    return MetadataTable(str(path_or_repo), kind, root, _with_caption_columns(frame), notes, release)


def _empty() -> pl.DataFrame:
    frame = pl.from_arrow(arrow_schema().empty_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _with_caption_columns(frame: pl.DataFrame) -> pl.DataFrame:
    def words(name: str) -> pl.Expr:
        text = (
            pl.col("captions")
            .list.eval(pl.element().filter(pl.element().struct.field("name") == name).struct.field("text"))
            .list.first()
        )
        return text.str.split(" ").list.len().alias(f"caption_{name}_words")

    return frame.with_columns(words("detailed"), words("brief"))


def _round(value: float, digits: int | None) -> float:
    return value if digits is None else round(value, digits)


def _quantiles(series: pl.Series, digits: int | None) -> dict[str, float | int | None]:
    values = series.drop_nulls()
    out: dict[str, float | int | None] = {"count": values.len()}
    if values.len() == 0:
        return out
    out["mean"] = _round(float(values.mean()), digits)  # type: ignore[arg-type]
    for q in QUANTILES:
        label = {0.0: "min", 1.0: "max"}.get(q, f"p{round(q * 100)}")
        out[label] = _round(float(values.quantile(q, interpolation="linear")), digits)  # type: ignore[arg-type]
    return out


def _counts(frame: pl.DataFrame, column: str | pl.Expr, name: str) -> dict[str, int]:
    """Value counts, most frequent first and ties by value: a total order, so the same rows always
    give the same report, chart and card bytes (polars leaves the order of ties open)."""
    expr = pl.col(column) if isinstance(column, str) else column
    counted = frame.select(expr.alias(name)).to_series().value_counts(name="n")
    ordered = counted.sort(["n", pl.col(name).cast(pl.String)], descending=[True, False], nulls_last=True)
    return {str(k): int(v) for k, v in ordered.iter_rows()}


def _by_resolution(frame: pl.DataFrame, digits: int | None) -> list[dict[str, Any]]:
    """Clips and mean fps per (width, height), most clips first, ties by width then height: the
    order is total, so two runs over the same rows list them the same way (the card is byte-stable)."""
    table = (
        frame.group_by("width", "height")
        .agg(pl.len().alias("clips"), pl.col("fps").mean().alias("mean_fps"))
        .sort(["clips", "width", "height"], descending=[True, False, False])
    )
    return [
        {
            "resolution": f"{r['width']}x{r['height']}",
            "width": r["width"],
            "height": r["height"],
            "clips": r["clips"],
            "mean_fps": None if r["mean_fps"] is None else _round(float(r["mean_fps"]), digits),
        }
        for r in table.iter_rows(named=True)
    ]


def compute_stats(frame: pl.DataFrame, *, digits: int | None = 4) -> dict[str, Any]:
    """Counts per split/category/camera motion/resolution/fps and quantiles of durations, scores and
    caption lengths; JSON-serialisable.

    Floats are rounded to ``digits`` for the JSON report; ``digits=None`` keeps them exact, for a
    caller that formats them itself (the dataset card): rounding twice (to 4, then to 2 places)
    would move a value like 2.13504 from 2.14 to 2.13."""
    n = frame.height
    categories = _counts(frame, "category", "category")
    stats: dict[str, Any] = {
        "clips": n,
        "hours": _round(float(frame["duration"].sum()) / 3600, digits) if n else 0.0,
        "splits": _counts(frame, "split", "split"),
        "categories": {k: {"count": v, "share": _round(v / n, digits)} for k, v in categories.items()},
        "camera_motion": _counts(frame, pl.col("camera_motion").fill_null("unknown"), "camera_motion"),
        "duration": _quantiles(frame["duration"], digits),
        "fps": {
            "values": _counts(frame, pl.col("fps").round(3).cast(pl.String), "fps"),
            **_quantiles(frame["fps"], digits),
        },
        "resolution": _counts(frame, pl.format("{}x{}", pl.col("width"), pl.col("height")), "resolution"),
        "by_resolution": _by_resolution(frame, digits),
        "scores": {},
        "caption_words": {
            "detailed": _quantiles(frame["caption_detailed_words"], digits),
            "brief": _quantiles(frame["caption_brief_words"], digits),
        },
    }
    for name in SCORE_NAMES:
        series = frame["scores"].struct.field(name)
        if series.drop_nulls().len():
            stats["scores"][name] = _quantiles(series, digits)
    others = frame.select(pl.col("scores").struct.field("other").explode()).to_series().struct.unnest()
    if "name" in others.columns:
        for (name,), group in others.drop_nulls().group_by(["name"]):
            stats["scores"][str(name)] = _quantiles(group["value"], digits)
    return stats


def stats(
    path_or_repo: str | Path,
    *,
    revision: str | None = None,
    plots: Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Statistics of a dataset's metadata; with ``plots``, PNG charts are written there too."""
    table = load_metadata(path_or_repo, revision=revision, storage_options=storage_options)
    summary = compute_stats(table.frame)
    result = {"source": table.source, "layout": table.layout, "notes": table.notes, **summary}
    if plots is not None:
        from medvideocap.dataset.plots import write_plots

        written = write_plots(table.frame, Path(plots), summary, title=table.source)
        result["plots"] = [str(p) for p in written]
    return result
