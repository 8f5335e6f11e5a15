"""Doctors' blind pairwise ratings, as in the MedGen paper: a sheet to fill, and its aggregation.

``write_rating_sheet`` pairs every two checkpoints on the same (prompt, seed), puts the two videos side by
side in an HTML page in random order, and copies them under neutral names (``r0007-left.mp4``) so neither
the page nor the file names say which checkpoint is which. The order, and which video is which, is
recorded in ``key.json``: keep it away from the raters. ``import_ratings`` joins a filled CSV with its key
and gives each checkpoint's win rate (a tie counts half) per category, with a percentile bootstrap
interval over the rated pairs, and, for each automatic metric of the eval, how well it agrees with the
raters (:func:`metric_agreement`), so a lab sees which metrics track its clinicians.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.atomic import atomic_path, atomic_write_json, atomic_write_text
from medvideocap.eval.report import VIDEOS_FILE, markdown_table
from medvideocap.eval.runner import EvalError

RATINGS_DIR = "ratings"
SHEET_HTML = "sheet.html"
SHEET_CSV = "sheet.csv"
KEY_FILE = "key.json"
RESULTS_FILE = "ratings.md"
CSV_FIELDS = ["pair", "category", "prompt", "left", "right", "choice", "rater", "notes"]
CHOICES = {"left": "left", "l": "left", "right": "right", "r": "right", "tie": "tie", "t": "tie", "=": "tie"}
ALL = "all categories"


def write_rating_sheet(out: Path, *, seed: int = 0) -> Path:
    """``out/ratings/sheet.html`` + ``sheet.csv`` + ``key.json`` for the eval in ``out``; returns the HTML."""
    manifest_path = Path(out) / VIDEOS_FILE
    if not manifest_path.is_file():
        raise EvalError(f"{out}: no {VIDEOS_FILE}; run `medvideocap eval --checkpoint ... --out {out}` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for v in manifest:
        if (Path(out) / v["path"]).is_file():
            groups.setdefault((v["prompt_id"], int(v["seed"])), []).append(v)
    rng = np.random.default_rng(seed)
    pairs = []
    for group in sorted(groups):
        for a, b in itertools.combinations(sorted(groups[group], key=lambda v: v["checkpoint"]), 2):
            pairs.append((a, b) if rng.random() < 0.5 else (b, a))
    if not pairs:
        raise EvalError(f"{out}: a rating sheet needs two checkpoints' videos of the same prompts and seeds")
    order = rng.permutation(len(pairs))
    folder = Path(out) / RATINGS_DIR
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    key: dict[str, Any] = {"seed": seed, "pairs": {}}
    rows = []
    for n, i in enumerate(order, 1):
        left, right = pairs[i]
        pid = f"r{n:04d}"
        names = {}
        for side, v in (("left", left), ("right", right)):
            names[side] = f"videos/{pid}-{side}.mp4"
            with atomic_path(folder / names[side], fsync=False) as tmp:
                shutil.copyfile(Path(out) / v["path"], tmp)
        key["pairs"][pid] = {
            "left": left["checkpoint"],
            "right": right["checkpoint"],
            "prompt_id": left["prompt_id"],
            "seed": left["seed"],
            "category": left["category"],
        }
        rows.append(
            {
                "pair": pid,
                "category": left["category"],
                "prompt": left["prompt"],
                "left": names["left"],
                "right": names["right"],
                "choice": "",
                "rater": "",
                "notes": "",
            }
        )
    atomic_write_json(folder / KEY_FILE, key, fsync=False)
    with (
        atomic_path(folder / SHEET_CSV, fsync=False) as tmp,
        tmp.open("w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(folder / SHEET_HTML, _html(rows), fsync=False)
    return folder / SHEET_HTML


def _html(rows: list[dict[str, str]]) -> str:
    cells = "".join(
        f"<section><h2>{html.escape(r['pair'])} · {html.escape(r['category'])}</h2>"
        f"<p>{html.escape(r['prompt'])}</p><div class=pair>"
        f'<figure><video src="{html.escape(r["left"])}" controls loop muted></video><figcaption>left</figcaption></figure>'
        f'<figure><video src="{html.escape(r["right"])}" controls loop muted></video><figcaption>right</figcaption></figure>'
        "</div></section>\n"
        for r in rows
    )
    return (
        "<!doctype html><meta charset=utf-8><title>Pairwise video rating</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}.pair{display:flex;gap:1em}"
        "figure{flex:1;margin:0}video{width:100%}section{border-bottom:1px solid #ccc;padding:1em 0}</style>"
        "<h1>Which video shows the prompt better?</h1><p>For each pair, write <b>left</b>, <b>right</b> or "
        "<b>tie</b> in the <code>choice</code> column of sheet.csv (and your initials under <code>rater</code>). "
        "Judge medical accuracy first, then visual quality. The order of videos is random.</p>\n" + cells
    )


def _read_filled(path: Path, key: dict[str, Any]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"pair", "choice"} - set(reader.fieldnames or [])
        if missing:
            raise EvalError(
                f"{path}: columns {sorted(missing)} missing; expected the sheet's header {CSV_FIELDS}"
            )
        out = []
        for lineno, row in enumerate(reader, 2):
            choice = (row.get("choice") or "").strip().lower()
            if not choice:
                continue
            if choice not in CHOICES:
                raise EvalError(f"{path}:{lineno}: choice {row['choice']!r}; write left, right or tie")
            pair = (row.get("pair") or "").strip()
            if pair not in key["pairs"]:
                raise EvalError(
                    f"{path}:{lineno}: pair {pair!r} is not in {KEY_FILE} (a row from another sheet?)"
                )
            out.append({"pair": pair, "choice": CHOICES[choice], "rater": (row.get("rater") or "").strip()})
    return out


def win_rates(
    ratings: list[dict[str, str]], key: dict[str, Any], *, resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per (checkpoint pair, category) and over all categories: wins, ties and the win rate of the
    alphabetically first checkpoint (ties half) with its 95% bootstrap interval."""
    scored: dict[tuple[str, str, str], list[float]] = {}
    for r in ratings:
        info = key["pairs"][r["pair"]]
        a, b = sorted((info["left"], info["right"]))
        winner = {"left": info["left"], "right": info["right"], "tie": None}[r["choice"]]
        value = 0.5 if winner is None else float(winner == a)
        for cat in (info["category"], ALL):
            scored.setdefault((a, b, cat), []).append(value)
    rng = np.random.default_rng(seed)
    rows = []
    for (a, b, cat), values in sorted(
        scored.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] == ALL, kv[0][2])
    ):
        v = np.asarray(values)
        boot = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        rows.append(
            {
                "a": a,
                "b": b,
                "category": cat,
                "ratings": len(v),
                "a_wins": int((v == 1).sum()),
                "b_wins": int((v == 0).sum()),
                "ties": int((v == 0.5).sum()),
                "a_win_rate": float(v.mean()),
                "ci": [float(lo), float(hi)],
            }
        )
    return rows


def metric_agreement(
    ratings: list[dict[str, str]],
    key: dict[str, Any],
    scores: Any,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For each metric in ``scores`` (the eval's ``scores.parquet``), its agreement with the raters over
    the rated pairs that are not ties: ``accuracy``, the share of pairs where the metric scores the
    preferred video higher (a metric tie counts half), and Kendall's tau in the form used to judge metrics
    against human pairwise preferences, (concordant - discordant) / pairs (a metric tie is neither), in
    [-1, 1]; each with a 95% percentile bootstrap interval over pairs."""
    value = {
        (str(c), str(p), int(s), str(m)): float(v)
        for c, p, s, m, v in scores.select("checkpoint", "prompt_id", "seed", "metric", "value").iter_rows()
    }
    metrics = sorted({k[3] for k in value})
    rng = np.random.default_rng(seed)
    rows = []
    for metric in metrics:
        signs = []  # +1 the metric agrees with the rater, -1 it disagrees, 0 a metric tie
        for r in ratings:
            if r["choice"] == "tie":
                continue
            info = key["pairs"][r["pair"]]
            won, lost = (
                (info["left"], info["right"]) if r["choice"] == "left" else (info["right"], info["left"])
            )
            a = value.get((won, str(info["prompt_id"]), int(info["seed"]), metric))
            b = value.get((lost, str(info["prompt_id"]), int(info["seed"]), metric))
            if a is not None and b is not None:
                signs.append(float(np.sign(a - b)))
        if not signs:
            continue
        v = np.asarray(signs)
        boot = v[rng.integers(0, len(v), size=(resamples, len(v)))]
        acc, tau = (boot > 0).mean(axis=1) + 0.5 * (boot == 0).mean(axis=1), boot.mean(axis=1)
        rows.append(
            {
                "metric": metric,
                "pairs": len(v),
                "accuracy": float((v > 0).mean() + 0.5 * (v == 0).mean()),
                "accuracy_ci": [float(x) for x in np.quantile(acc, [0.025, 0.975])],
                "kendall_tau": float(v.mean()),
                "kendall_tau_ci": [float(x) for x in np.quantile(tau, [0.025, 0.975])],
            }
        )
    return rows


def _agreement_section(
    path: Path, ratings: list[dict[str, str]], key: dict[str, Any], resamples: int
) -> tuple[str, list[dict[str, Any]]]:
    """The agreement table, from the ``scores.parquet`` of the eval the sheet was written for."""
    import polars as pl

    from medvideocap.eval.report import SCORES_FILE

    scores_path = path.parent.parent / SCORES_FILE
    if not scores_path.is_file():
        return f"\nNo {scores_path} beside the sheet's eval folder: no metric agreement computed.\n", []
    rows = metric_agreement(ratings, key, pl.read_parquet(scores_path), resamples=resamples)
    if not rows:
        return "\nNo rated pair that is not a tie has scores: no metric agreement computed.\n", []
    table = markdown_table(
        ["metric", "pairs", "pairwise accuracy [95% CI]", "Kendall's tau [95% CI]"],
        [
            [
                r["metric"],
                r["pairs"],
                f"{r['accuracy']:.3f} [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]",
                f"{r['kendall_tau']:+.3f} [{r['kendall_tau_ci'][0]:+.3f}, {r['kendall_tau_ci'][1]:+.3f}]",
            ]
            for r in rows
        ],
    )
    return (
        "\n## Agreement of each metric with the raters\n\nOver rated pairs that are not ties: pairwise "
        "accuracy (the metric scores the preferred video higher; a metric tie counts half) and Kendall's "
        "tau ((concordant - discordant) / pairs), with percentile bootstrap intervals over pairs.\n\n"
        + table,
        rows,
    )


def import_ratings(path: Path, *, out: Path | None = None, resamples: int = 2000) -> str:
    """Aggregate a filled sheet (its ``key.json`` is read from beside it); writes ``ratings.md`` and
    ``ratings.json`` to ``out`` (default: the sheet's folder) and returns the markdown."""
    key_path = path.parent / KEY_FILE
    if not key_path.is_file():
        raise EvalError(
            f"{path}: no {KEY_FILE} beside it; put the sheet back in the folder it was written to"
        )
    key = json.loads(key_path.read_text(encoding="utf-8"))
    ratings = _read_filled(path, key)
    if not ratings:
        raise EvalError(f"{path}: no filled choices (write left, right or tie in the choice column)")
    rows = win_rates(ratings, key, resamples=resamples)
    table = markdown_table(
        ["A", "B", "category", "ratings", "A wins", "B wins", "ties", "A win rate [95% CI]"],
        [
            [
                r["a"],
                r["b"],
                r["category"],
                r["ratings"],
                r["a_wins"],
                r["b_wins"],
                r["ties"],
                f"{r['a_win_rate']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
            ]
            for r in rows
        ],
    )
    raters = sorted({r["rater"] for r in ratings if r["rater"]})
    text = (
        "# Pairwise ratings\n\n"
        f"{len(ratings)} ratings from {len(raters) or 'unnamed'} rater(s) ({', '.join(raters)}); a tie counts "
        f"half; percentile bootstrap over ratings, {resamples} resamples.\n\n" + table
    )
    section, agreement = _agreement_section(path, ratings, key, resamples)
    text += section
    dest = Path(out) if out else path.parent
    atomic_write_text(dest / RESULTS_FILE, text, fsync=False)
    atomic_write_json(
        dest / "ratings.json",
        {"source": os.fspath(path), "rows": rows, "metric_agreement": agreement},
        fsync=False,
    )
    return text
