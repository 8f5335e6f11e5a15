"""PNG charts of a dataset's metadata (categories, durations, resolutions, fps, scores, caption lengths).

matplotlib runs with the Agg backend (no display needed, safe on servers and in CI). Each chart is
written under a temporary name and renamed, so an interrupted run never leaves a half-written PNG.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from medvideocap.atomic import atomic_path
from medvideocap.dataset.stats import SCORE_NAMES


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (no display needed); every chart of the package draws through it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: object, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    plt = pyplot()
    try:
        with atomic_path(path, fsync=False) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
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


def write_plots(frame: pl.DataFrame, out: Path, *, title: str = "") -> list[Path]:
    """Write the charts for ``frame`` (a :func:`medvideocap.dataset.stats.load_metadata` frame) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""

    def counts(expr: pl.Expr) -> dict[str, int]:
        series = frame.select(expr.alias("v")).to_series().value_counts(sort=True)
        return {str(k): int(v) for k, v in series.iter_rows()}

    written: list[Path | None] = [
        _bar(
            out,
            "categories.png",
            counts(pl.col("category")),
            title=f"{prefix}clips per category",
            xlabel="category",
        ),
        _bar(
            out,
            "resolution.png",
            counts(pl.format("{}x{}", pl.col("width"), pl.col("height"))),
            title=f"{prefix}resolutions",
            xlabel="width x height",
        ),
        _bar(
            out,
            "fps.png",
            counts(pl.col("fps").round(2).cast(pl.String)),
            title=f"{prefix}frame rates",
            xlabel="fps",
        ),
        _hist(
            out,
            "duration.png",
            {"duration": frame["duration"]},
            title=f"{prefix}clip durations",
            xlabel="seconds",
        ),
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
