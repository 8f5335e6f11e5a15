"""PNG charts of a dataset's metadata (categories, durations, resolutions, fps, scores, caption lengths).

matplotlib runs with the Agg backend (no display needed, safe on servers and in CI). Each chart is
written under a temporary name and renamed, so an interrupted run never leaves a half-written PNG.
This module owns every chart of a dataset: ``stats --plots`` writes :func:`write_plots`'s set, and the
dataset card embeds :func:`category_chart` and :func:`duration_chart`, the same drawings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from medvideocap.atomic import atomic_path
from medvideocap.dataset.schema import SCORE_NAMES


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (no display needed); every chart of the package draws through it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: object, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically and close it.

    A PNG carries no ``Software`` entry (matplotlib's version), so the same data gives the same bytes
    on any install: a rebuilt dataset, whose card embeds charts, compares byte for byte."""
    plt = pyplot()
    metadata = {"Software": None} if path.suffix.lower() == ".png" else None
    try:
        with atomic_path(path, fsync=False) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata=metadata)  # type: ignore[attr-defined]
    finally:
        plt.close(fig)
    return path


def _bar(out: Path, name: str, counts: dict[str, int], *, title: str, xlabel: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(counts)[:20]
    ax.bar(labels, [counts[k] for k in labels], color="#3a7ca5")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    ax.tick_params(axis="x", labelrotation=30)
    return save_figure(fig, out / name)


def _hist(out: Path, name: str, series: dict[str, pl.Series], *, title: str, xlabel: str) -> Path | None:
    present = {k: s.drop_nulls().to_numpy() for k, s in series.items() if s.drop_nulls().len()}
    if not present:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), squeeze=False)
    for ax, (label, values) in zip(axes[0], present.items(), strict=True):
        ax.hist(values, bins=min(40, max(5, len(values) // 4)), color="#81a4cd", edgecolor="#1d3557")
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("clips")
    fig.suptitle(title)
    return save_figure(fig, out / name)


def category_chart(categories: Mapping[str, int], path: Path, *, title: str = "") -> Path:
    """Bar chart of clips per category (``category -> clips``, in the order given)."""
    prefix = f"{title}: " if title else ""
    return _bar(
        path.parent, path.name, dict(categories), title=f"{prefix}clips per category", xlabel="category"
    )


def duration_chart(durations: pl.Series, path: Path, *, title: str = "") -> Path | None:
    """Histogram of clip durations (seconds); None (nothing written) when there is none."""
    prefix = f"{title}: " if title else ""
    return _hist(
        path.parent, path.name, {"duration": durations}, title=f"{prefix}clip durations", xlabel="seconds"
    )


def write_plots(frame: pl.DataFrame, out: Path, summary: Mapping[str, Any], *, title: str = "") -> list[Path]:
    """Write the charts of ``frame`` (a :func:`medvideocap.dataset.stats.load_metadata` frame) into
    ``out``. Bars show the counts of ``summary`` (:func:`medvideocap.dataset.stats.compute_stats` of
    that frame), so a chart and the numbers printed beside it never disagree; histograms need the
    values themselves and read them from ``frame``."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""
    categories = {name: int(c["count"]) for name, c in summary["categories"].items()}
    written: list[Path | None] = [
        category_chart(categories, out / "categories.png", title=title),
        _bar(
            out,
            "resolution.png",
            dict(summary["resolution"]),
            title=f"{prefix}resolutions",
            xlabel="width x height",
        ),
        _bar(
            out,
            "fps.png",
            dict(summary["fps"]["values"]),
            title=f"{prefix}frame rates",
            xlabel="fps",
        ),
        duration_chart(frame["duration"], out / "duration.png", title=title),
        _hist(
            out,
            "scores.png",
            {name: frame["scores"].struct.field(name) for name in SCORE_NAMES},
            title=f"{prefix}curation scores",
            xlabel="score",
        ),
        _hist(
            out,
            "caption_words.png",
            {"detailed": frame["caption_detailed_words"], "brief": frame["caption_brief_words"]},
            title=f"{prefix}caption lengths",
            xlabel="words",
        ),
    ]
    return [p for p in written if p is not None]
