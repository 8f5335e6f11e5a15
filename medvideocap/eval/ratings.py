"""Doctors' blind pairwise ratings, as in the MedGen paper: a sheet to fill, and its aggregation.

``write_rating_sheet`` pairs every two checkpoints on the same (prompt, seed), puts the two videos side by
side in an HTML page in random order, and copies them under neutral names (``r0007-left.mp4``) so neither
the page nor the file names say which checkpoint is which. The order, and which video is which, is
recorded in ``key.json``: keep it away from the raters. ``import_ratings`` joins a filled CSV with its key
and gives each checkpoint's win rate (a tie counts half) per category, with a percentile bootstrap
interval over the rated pairs.
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
    dest = Path(out) if out else path.parent
    atomic_write_text(dest / RESULTS_FILE, text, fsync=False)
    atomic_write_json(dest / "ratings.json", {"source": os.fspath(path), "rows": rows}, fsync=False)
    return text
