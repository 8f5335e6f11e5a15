"""``medvideocap eval --compare A/ B/``: which checkpoint wins each metric, and by how much for sure.

Runs are compared on the prompts they share, paired: a prompt's score is the mean over its seeds, and the
winner's margin over the runner-up gets a percentile bootstrap interval from resampling prompts with
replacement (the same resample for both checkpoints, so prompt difficulty cancels out). A margin whose
interval excludes 0 is marked; with 200 prompts that is the difference the MedGen paper's table can show.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from medvideocap.atomic import atomic_write_text
from medvideocap.eval.report import SCORES_FILE, WEIGHTS, markdown_table
from medvideocap.eval.runner import EvalError

COMPARE_FILE = "compare.md"
TOTAL = "total"


def load_systems(folders: Sequence[Path]) -> pl.DataFrame:
    """All scores of all folders, with a ``system`` column: the checkpoint label, prefixed by the folder's
    name where two folders hold the same label."""
    frames = []
    for folder in folders:
        path = Path(folder) / SCORES_FILE
        if not path.is_file():
            raise EvalError(f"{folder}: no {SCORES_FILE}; is it a `medvideocap eval --out` folder?")
        frames.append(pl.read_parquet(path).with_columns(pl.lit(Path(folder).name).alias("run")))
    scores = pl.concat(frames)
    pairs = scores.select("run", "checkpoint").unique(maintain_order=True)
    clash = pairs.group_by("checkpoint").len().filter(pl.col("len") > 1)["checkpoint"].to_list()
    return scores.with_columns(
        pl.when(pl.col("checkpoint").is_in(clash))
        .then(pl.col("run") + "/" + pl.col("checkpoint"))
        .otherwise(pl.col("checkpoint"))
        .alias("system")
    )


def per_prompt(scores: pl.DataFrame) -> pl.DataFrame:
    """(system, prompt_id, metric) -> mean over seeds, plus the weighted mean per prompt as metric 'total'
    (over the metrics every system has, so totals compare like with like; shown x100)."""
    means = scores.group_by("system", "prompt_id", "metric").agg(pl.col("value").mean())
    systems = means["system"].n_unique()
    shared = means.group_by("metric").agg(pl.col("system").n_unique()).filter(pl.col("system") == systems)
    weights = pl.DataFrame({"metric": shared["metric"]}).with_columns(
        pl.col("metric").replace_strict(WEIGHTS, default=1.0, return_dtype=pl.Float64).alias("w")
    )
    total = (
        means.join(weights, on="metric")
        .group_by("system", "prompt_id")
        .agg(((pl.col("value") * pl.col("w")).sum() / pl.col("w").sum()).alias("value"))
        .with_columns(pl.lit(TOTAL).alias("metric"))
        .select(means.columns)
    )
    return pl.concat([means, total])


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval over paired items."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    boot = diff[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(diff.mean()), float(lo), float(hi)


def compare_table(scores: pl.DataFrame, *, resamples: int = 2000, seed: int = 0) -> list[dict[str, object]]:
    table = per_prompt(scores)
    systems = list(dict.fromkeys(scores["system"].to_list()))
    if len(systems) < 2:
        raise EvalError(f"--compare needs at least two checkpoints in all, found {systems}")
    rows = []
    metrics = sorted(m for m in table["metric"].unique() if m != TOTAL) + [TOTAL]
    for metric in metrics:
        wide = (
            table.filter(pl.col("metric") == metric)
            .pivot(on="system", index="prompt_id", values="value")
            .drop_nulls()
            .sort("prompt_id")
        )
        if wide.height == 0 or any(s not in wide.columns for s in systems):
            continue
        means = {s: float(wide[s].mean()) for s in systems}  # type: ignore[arg-type]
        winner, runner_up = sorted(systems, key=lambda s: -means[s])[:2]
        diff, lo, hi = paired_bootstrap(
            wide[winner].to_numpy(), wide[runner_up].to_numpy(), resamples=resamples, seed=seed
        )
        rows.append(
            {
                "metric": metric,
                "prompts": wide.height,
                "means": means,
                "winner": winner,
                "runner_up": runner_up,
                "margin": diff,
                "ci": (lo, hi),
                "clear": lo > 0,
            }
        )
    return rows


def render(rows: list[dict[str, object]], systems: list[str], folders: Sequence[Path], resamples: int) -> str:
    def fmt(metric: object, v: float) -> str:
        return f"{100 * v:.2f}" if metric == TOTAL else f"{v:.4f}"

    body = [
        [
            r["metric"],
            r["prompts"],
            *(fmt(r["metric"], r["means"][s]) for s in systems),  # type: ignore[index]
            r["winner"],
            f"{fmt(r['metric'], r['margin'])} [{fmt(r['metric'], r['ci'][0])}, {fmt(r['metric'], r['ci'][1])}]",  # type: ignore[index, arg-type]
            "yes" if r["clear"] else "no",
        ]
        for r in rows
    ]
    header = ["metric", "prompts", *systems, "winner", "margin over runner-up [95% CI]", "CI excludes 0"]
    return (
        "# Comparison\n\n"
        f"Runs: {', '.join(str(f) for f in folders)}. Paired over shared prompts (mean over seeds per prompt); "
        f"percentile bootstrap over prompts, {resamples} resamples. `total` is the weighted mean x100 of the "
        "metrics every checkpoint has.\n\n" + markdown_table(header, body)
    )


def compare_runs(
    folders: Sequence[Path], *, out: Path | None = None, resamples: int = 2000, seed: int = 0
) -> str:
    """The comparison table as markdown, also written to ``out/compare.md`` (``out`` defaults to the
    current folder, never into a compared run)."""
    if len(folders) < 1:
        raise EvalError("--compare needs eval output folders: medvideocap eval --compare A/ B/")
    scores = load_systems(folders)
    rows = compare_table(scores, resamples=resamples, seed=seed)
    text = render(rows, list(dict.fromkeys(scores["system"].to_list())), folders, resamples)
    atomic_write_text(Path(out or ".") / COMPARE_FILE, text, fsync=False)
    return text
