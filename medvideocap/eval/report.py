"""What an eval run leaves for a person: ``scores.parquet``, ``summary.json``, ``report.md``, one PNG per
metric and a contact sheet, all rebuilt from the journal (so the same journal always gives the same files).

The "VBench-style total" is the weighted mean of the metrics present, x100, with VBench's weight of 1 for
each quality dimension (and 1 for text-video alignment). VBench itself also min-max normalises each
dimension with constants fitted to its own model pool before weighting; we do not, so our totals rank
checkpoints against each other but are not on the scale of the MedGen paper's Med-VBench numbers.

A video a metric left unscored (a judge's refusal or unreadable reply, journalled by the runner) is in no
mean: ``summary.json`` counts those per checkpoint, metric and reason, and ``report.md`` lists each one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from medvideocap.atomic import atomic_write_json, atomic_write_parquet, atomic_write_text

if TYPE_CHECKING:
    from medvideocap.caption.journal import Journal
    from medvideocap.eval.items import Item

SCORES_FILE = "scores.parquet"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
CONTACT_SHEET = "contact_sheet.png"
#: Which mp4 each (checkpoint, prompt, seed) is, for the rating sheet (paths relative to the folder).
VIDEOS_FILE = "videos.json"
#: Weights of the total (VBench's quality-dimension weights; metrics missing from a run are left out).
WEIGHTS: dict[str, float] = {
    "subject_consistency": 1.0,
    "background_consistency": 1.0,
    "temporal_flickering": 1.0,
    "rife_interpolation_smoothness": 1.0,
    "flow_interpolation_smoothness": 1.0,
    "imaging_quality": 1.0,
    "imaging_quality_clipiqa": 1.0,
    "aesthetic_quality": 1.0,
    "text_video_alignment": 1.0,
    "videoscore": 1.0,
    # a judge's verdict on medical content, averaged over the videos it scored: reported beside the
    # total, not in it, so adding the judge to a run does not move its VBench-style number
    "medical_accuracy": 0.0,
}
SCHEMA = {
    "checkpoint": pl.String,
    "prompt_id": pl.String,
    "prompt": pl.String,
    "category": pl.String,
    "seed": pl.Int64,
    "metric": pl.String,
    "value": pl.Float64,
}


def scores_frame(items: Sequence[Item], metrics: Sequence[str], journal: Journal) -> pl.DataFrame:
    rows = []
    for it in items:
        for m in metrics:
            entry = journal.entries.get(f"score/{it.key}/{m}")
            if entry is None or not entry.get("ok"):
                continue
            rows.append(
                {
                    "checkpoint": it.checkpoint,
                    "prompt_id": it.prompt.id,
                    "prompt": it.prompt.prompt,
                    "category": it.prompt.category,
                    "seed": it.seed,
                    "metric": m,
                    "value": float(entry["value"]),
                }
            )
    return pl.DataFrame(rows, schema=SCHEMA).sort("checkpoint", "prompt_id", "seed", "metric")


def unscored_rows(items: Sequence[Item], metrics: Sequence[str], journal: Journal) -> list[dict[str, Any]]:
    """The (video, metric) pairs the journal holds as unscored, with the reason (in item order)."""
    rows = []
    for it in items:
        for m in metrics:
            entry = journal.entries.get(f"score/{it.key}/{m}")
            if entry is not None and not entry.get("ok") and "unscored" in entry:
                rows.append(
                    {
                        "checkpoint": it.checkpoint,
                        "prompt_id": it.prompt.id,
                        "seed": it.seed,
                        "metric": m,
                        "kind": str(entry["unscored"]),
                        "reason": str(entry.get("reason", "")),
                    }
                )
    return rows


def weighted_total(means: dict[str, float]) -> float | None:
    weights = {m: WEIGHTS.get(m, 1.0) for m in means}
    total = sum(weights.values())
    return round(100.0 * sum(weights[m] * means[m] for m in means) / total, 2) if total else None


def summarise(
    scores: pl.DataFrame, run_info: dict[str, Any], unscored: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Means per checkpoint and metric, per checkpoint x category x metric, and the weighted total; the
    ``unscored`` rows (:func:`unscored_rows`) counted per checkpoint, metric and reason, and listed."""
    out: dict[str, Any] = {
        "prompts": run_info.get("prompts"),
        "truncation": run_info.get("truncation", {}),
        "protocol": run_info.get("protocol"),
        "generation": run_info.get("generation"),
        "metrics": run_info.get("metrics", {}),
        "total_weights": {m: WEIGHTS.get(m, 1.0) for m in scores["metric"].unique().sort()},
        "checkpoints": {},
        "unscored": {"count": len(unscored), "counts": _unscored_counts(unscored), "videos": list(unscored)},
    }
    for (ckpt,), part in scores.group_by(["checkpoint"], maintain_order=True):
        means = _means(part)
        by_cat = {}
        for (cat,), sub in part.sort("category").group_by(["category"], maintain_order=True):
            by_cat[str(cat)] = {"videos": sub["prompt_id"].n_unique(), "means": _means(sub)}
        out["checkpoints"][str(ckpt)] = {
            "source": run_info.get("checkpoints", {}).get(str(ckpt)),
            "videos": part.select("prompt_id", "seed").unique().height,
            "means": means,
            "total": weighted_total(means),
            "categories": by_cat,
        }
    return out


def _unscored_counts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for r in rows:
        kinds = counts.setdefault(r["checkpoint"], {}).setdefault(r["metric"], {})
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return counts


def _means(frame: pl.DataFrame) -> dict[str, float]:
    agg = frame.group_by("metric").agg(pl.col("value").mean()).sort("metric")
    return {str(m): round(float(v), 6) for m, v in agg.iter_rows()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _truncation_note(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    parts = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    return f"Prompts longer than a model's text window (read only in part): {parts}.\n\n"


def _outside_total_note(metrics: Sequence[str]) -> str:
    outside = [m for m in metrics if WEIGHTS.get(m, 1.0) == 0.0]
    return f"\nNot in the total (weight 0): {', '.join(outside)}.\n" if outside else ""


def _unscored_section(unscored: dict[str, Any]) -> str:
    """Each video a metric gave no score, and why; the journal keeps the raw replies."""
    rows = unscored.get("videos") or []
    if not rows:
        return ""
    counts = ", ".join(
        f"{ckpt} {metric}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        for ckpt, by_metric in unscored["counts"].items()
        for metric, kinds in by_metric.items()
    )
    return (
        f"\n## Unscored\n\n{len(rows)} video scores are missing, left out of every mean above "
        f"({counts}); the raw replies are in journal.jsonl.\n\n"
        + markdown_table(
            ["checkpoint", "prompt", "seed", "metric", "reason"],
            [[r["checkpoint"], r["prompt_id"], r["seed"], r["metric"], _cell(r["reason"])] for r in rows],
        )
    )


def _cell(text: str, limit: int = 160) -> str:
    """``text`` (which quotes a judge's reply: untrusted) as one markdown table cell: one line, cut at
    ``limit``, in a code span, so no link, image or HTML in it renders."""
    flat = " ".join(text.split()).replace("`", "'").replace("|", "\\|")
    return "`" + (flat if len(flat) <= limit else flat[: limit - 3] + "...") + "`"


def render_report(summary: dict[str, Any], plots: Sequence[str], sheet: str | None) -> str:
    ckpts = summary["checkpoints"]
    metrics = sorted({m for c in ckpts.values() for m in c["means"]})
    parts = [
        "# Evaluation report\n\n",
        f"Prompt set: `{summary['prompts']}`. Every score is in [0, 1], higher is better; "
        "definitions and models are listed at the end.\n\n",
        _truncation_note(summary.get("truncation") or {}),
        "## Per checkpoint\n\n",
        markdown_table(
            ["checkpoint", "videos", *metrics, "total"],
            [
                [name, c["videos"], *(f"{c['means'].get(m, float('nan')):.4f}" for m in metrics), c["total"]]
                for name, c in ckpts.items()
            ],
        ),
        "\n**total**: weighted mean x100 of the metrics present, VBench's weight 1 each "
        "(no VBench min-max normalisation, so not on the MedGen paper's Med-VBench scale).\n",
        _outside_total_note(metrics),
        _unscored_section(summary.get("unscored") or {}),
    ]
    for name, c in ckpts.items():
        parts.append(f"\n## {name} per category\n\n")
        parts.append(
            markdown_table(
                ["category", "prompts", *metrics],
                [
                    [cat, v["videos"], *(f"{v['means'].get(m, float('nan')):.4f}" for m in metrics)]
                    for cat, v in c["categories"].items()
                ],
            )
        )
    if plots:
        parts.append("\n## Plots\n\n" + "".join(f"![{Path(p).stem}]({p})\n" for p in plots))
    if sheet:
        parts.append(
            f"\n## Contact sheet\n\n![contact sheet]({sheet})\n\nRows: for each of the first prompts "
            f"(in prompt-set order, first seed), one row per checkpoint in the order {', '.join(ckpts)}; "
            "five evenly spaced frames per row.\n"
        )
    parts.append("\n## Metrics\n\n")
    for name, info in summary["metrics"].items():
        models = ", ".join(
            f"{role} `{m['id']}` ({m['revision']})" for role, m in info.get("models", {}).items()
        )
        parts.append(
            f"- **{name}**: {info['definition']}. Normalised: {info['normalisation']}. "
            f"{info['relation_to_vbench']} Models: {models or 'none'}.\n"
        )
    return "".join(parts)


def metric_plot(scores: pl.DataFrame, metric: str, path: Path) -> Path:
    """Box plot of one metric's per-video scores, one box per checkpoint, the mean marked."""
    from medvideocap.dataset.plots import pyplot, save_figure

    plt = pyplot()
    part = scores.filter(pl.col("metric") == metric)
    names = list(dict.fromkeys(part["checkpoint"].to_list()))
    data = [part.filter(pl.col("checkpoint") == n)["value"].to_numpy() for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names) + 2), 3.6))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set_title(metric)
    ax.set_ylabel("score (higher is better)")
    return save_figure(fig, path)


def write_contact_sheet(items: Sequence[Item], path: Path, *, max_prompts: int = 6) -> Path | None:
    """The same prompts across checkpoints: first seed of the first ``max_prompts`` prompts."""
    from medvideocap.generate import contact_sheet
    from medvideocap.media.decode import all_frames

    checkpoints = list(dict.fromkeys(it.checkpoint for it in items))
    by_key = {(it.checkpoint, it.prompt.id, it.seed): it for it in items}
    first_seed = min(it.seed for it in items)
    prompt_ids = list(dict.fromkeys(it.prompt.id for it in items if it.seed == first_seed))[:max_prompts]
    videos = []
    for pid in prompt_ids:
        for ckpt in checkpoints:
            it = by_key.get((ckpt, pid, first_seed))
            if it is not None and it.path.is_file():
                videos.append(all_frames(it.path))
    if not videos:
        return None
    width = max(v.shape[2] for v in videos)
    height = max(v.shape[1] for v in videos)
    padded = [np.pad(v, ((0, 0), (0, height - v.shape[1]), (0, width - v.shape[2]), (0, 0))) for v in videos]
    return contact_sheet(padded, path)


def write_outputs(
    out: Path,
    items: Sequence[Item],
    metrics: Sequence[str],
    journal: Journal,
    run_info: dict[str, Any],
    *,
    extra: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Rebuild every output table from the journal; ``extra(summary)`` appends a section to the report
    (the protocol's comparison with a published table)."""
    scores = scores_frame(items, metrics, journal)
    atomic_write_parquet(out / SCORES_FILE, scores.to_arrow(), fsync=False)
    summary = summarise(
        scores,
        {**run_info, "metrics": {m: run_info["metrics"][m] for m in metrics}},
        unscored_rows(items, metrics, journal),
    )
    atomic_write_json(out / SUMMARY_FILE, summary, fsync=False)
    plots = []
    for m in metrics:
        if scores.filter(pl.col("metric") == m).height:
            plots.append(str(metric_plot(scores, m, out / PLOTS_DIR / f"{m}.png").relative_to(out)))
    manifest = [
        {
            "checkpoint": it.checkpoint,
            "prompt_id": it.prompt.id,
            "prompt": it.prompt.prompt,
            "category": it.prompt.category,
            "seed": it.seed,
            "path": os.path.relpath(it.path.resolve(), out.resolve()),
        }
        for it in items
    ]
    atomic_write_json(out / VIDEOS_FILE, manifest, fsync=False)
    sheet = write_contact_sheet(items, out / CONTACT_SHEET)
    text = render_report(summary, plots, CONTACT_SHEET if sheet else None)
    atomic_write_text(out / REPORT_FILE, text + (extra(summary) if extra else ""), fsync=False)
    return summary
