"""`eval --compare` (paired bootstrap between runs) and the blind rating sheet, on real encoded videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medvideocap.cli import main
from medvideocap.eval.compare import paired_bootstrap
from medvideocap.eval.metrics import build_metrics
from medvideocap.eval.prompts import load_prompts
from medvideocap.eval.ratings import import_ratings, write_rating_sheet
from medvideocap.eval.runner import EvalError, run_eval
from medvideocap.generate import write_mp4

CATEGORIES = ["medical teaching", "clinical practice"]
N_PROMPTS = 6


def _smooth(seed: int) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    return np.stack(
        [
            np.stack([128 + 90 * np.sin((x + t + seed) / 6), 128 + 90 * np.cos(y / 5), x * 4], -1)
            for t in range(9)
        ]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two eval folders scored from existing videos: ``steady`` (smooth pans) and ``jittery`` (the same
    pans with per-frame noise), plus one folder holding both checkpoints for the rating sheet."""
    root = tmp_path_factory.mktemp("eval-compare")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"prompt {i}", "category": CATEGORIES[i % 2]}) + "\n"
            for i in range(N_PROMPTS)
        )
    )
    rng = np.random.default_rng(0)
    for i in range(N_PROMPTS):
        clean = _smooth(i)
        noisy = np.clip(clean.astype(np.int16) + rng.integers(-40, 40, clean.shape), 0, 255).astype(np.uint8)
        write_mp4(clean, root / "videos" / "steady" / f"p{i}-s0.mp4")
        write_mp4(noisy, root / "videos" / "jittery" / f"p{i}-s0.mp4")
    metrics = build_metrics(["temporal_flickering", "flow_interpolation_smoothness"], device="cpu")
    out = {"root": root, "prompts": prompts}
    for name in ("steady", "jittery"):
        out[name] = root / f"run-{name}"
        run_eval(out[name], prompts=load_prompts(prompts), metrics=metrics, videos=root / "videos" / name)
    out["both"] = root / "run-both"
    run_eval(out["both"], prompts=load_prompts(prompts), metrics=metrics, videos=root / "videos")
    return out


def test_paired_bootstrap_interval_covers_the_mean_difference_and_excludes_zero_only_when_clear() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0.4, 0.6, 200)
    mean, lo, hi = paired_bootstrap(a + 0.05, a, seed=0)
    assert mean == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    noise = rng.normal(0, 0.1, 200)
    mean, lo, hi = paired_bootstrap(a + noise, a, seed=0)
    assert lo < mean < hi and lo < 0 < hi  # zero-mean differences: no winner
    assert paired_bootstrap(a + noise, a, seed=0) == (mean, lo, hi)  # deterministic for a seed


def test_compare_names_the_winner_per_metric_with_a_paired_interval(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    res = CliRunner().invoke(
        main, ["eval", "--compare", str(runs["jittery"]), str(runs["steady"]), "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    table = (tmp_path / "compare.md").read_text()
    assert table.strip() in res.output
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    for metric in ("temporal_flickering", "flow_interpolation_smoothness", "total"):
        cells = [c.strip() for c in rows[metric].split("|")[1:-1]]
        assert cells[1] == str(N_PROMPTS)
        assert cells[4] == "steady", rows[metric]
        margin, interval = cells[5].split(" [")
        lo, hi = (float(v) for v in interval.rstrip("]").split(", "))
        assert 0 < lo <= float(margin) <= hi and cells[6] == "yes"
    header = [c.strip() for c in table.splitlines()[4].split("|")[1:-1]]
    assert header[:4] == ["metric", "prompts", "jittery", "steady"]


def test_compare_prefixes_clashing_labels_and_rejects_a_folder_without_scores(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    res = CliRunner().invoke(
        main, ["eval", "--compare", str(runs["both"]), str(runs["steady"]), "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "run-both/steady" in res.output and "run-steady/steady" in res.output
    res = CliRunner().invoke(main, ["eval", "--compare", str(tmp_path), str(runs["steady"])])
    assert res.exit_code == 1 and "no scores.parquet" in res.output


def test_rating_sheet_is_blind_randomised_and_round_trips_to_win_rates(runs: dict[str, Path]) -> None:
    res = CliRunner().invoke(
        main, ["eval", "--rating-sheet", "--out", str(runs["both"]), "--rating-seed", "3"]
    )
    assert res.exit_code == 0, res.output
    folder = runs["both"] / "ratings"
    page = (folder / "sheet.html").read_text()
    rows = list(csv.DictReader((folder / "sheet.csv").open()))
    key = json.loads((folder / "key.json").read_text())
    assert len(rows) == N_PROMPTS and key["seed"] == 3
    assert (
        "steady" not in page and "jittery" not in page and "steady" not in (folder / "sheet.csv").read_text()
    )
    sides = {key["pairs"][r["pair"]]["left"] for r in rows}
    assert sides == {"steady", "jittery"}  # left/right order is randomised, and recorded
    for r in rows:
        assert (folder / r["left"]).is_file() and r["left"] in page
        source = (
            runs["root"]
            / "videos"
            / key["pairs"][r["pair"]]["left"]
            / f"{key['pairs'][r['pair']]['prompt_id']}-s0.mp4"
        )
        assert (folder / r["left"]).read_bytes() == source.read_bytes()

    # A rater who always prefers the steady video, but calls one pair a tie and skips another.
    for n, r in enumerate(rows):
        info = key["pairs"][r["pair"]]
        r["choice"] = "" if n == 0 else "tie" if n == 1 else ("left" if info["left"] == "steady" else "right")
        r["rater"] = "dr-a"
    filled = folder / "filled.csv"
    with filled.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = CliRunner().invoke(main, ["eval", "--import-ratings", str(filled)])
    assert res.exit_code == 0, res.output
    result = json.loads((folder / "ratings.json").read_text())["rows"]
    overall = next(r for r in result if r["category"] == "all categories")
    assert (overall["a"], overall["b"]) == ("jittery", "steady")
    assert overall["ratings"] == N_PROMPTS - 1 and overall["ties"] == 1 and overall["b_wins"] == N_PROMPTS - 2
    assert overall["a_win_rate"] == pytest.approx(0.5 / (N_PROMPTS - 1))
    assert overall["ci"][0] <= overall["a_win_rate"] <= overall["ci"][1] < 0.5
    assert {r["category"] for r in result} == {*CATEGORIES, "all categories"}
    assert "dr-a" in (folder / "ratings.md").read_text()


def test_a_bad_rating_names_the_row_and_a_sheet_needs_two_checkpoints(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    write_rating_sheet(runs["both"], seed=0)
    folder = runs["both"] / "ratings"
    rows = list(csv.DictReader((folder / "sheet.csv").open()))
    rows[1]["choice"] = "the left one"
    bad = folder / "bad.csv"
    with bad.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(EvalError, match=r"bad.csv:3: choice 'the left one'; write left, right or tie"):
        import_ratings(bad)
    with pytest.raises(EvalError, match="needs two checkpoints"):
        write_rating_sheet(runs["steady"])


@pytest.mark.parametrize(("prefers", "accuracy", "tau"), [("steady", 1.0, 1.0), ("jittery", 0.0, -1.0)])
def test_imported_ratings_report_each_metrics_agreement_with_the_raters(
    runs: dict[str, Path], prefers: str, accuracy: float, tau: float
) -> None:
    """Both metrics score the steady pans above the noisy ones: they agree with a rater who prefers steady
    videos on every pair, and disagree on every pair with one who prefers the noise."""
    write_rating_sheet(runs["both"], seed=1)
    folder = runs["both"] / "ratings"
    rows = list(csv.DictReader((folder / "sheet.csv").open()))
    key = json.loads((folder / "key.json").read_text())
    for n, r in enumerate(rows):
        info = key["pairs"][r["pair"]]
        r["choice"] = "tie" if n == 0 else ("left" if info["left"] == prefers else "right")
    filled = folder / f"filled-{prefers}.csv"
    with filled.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = import_ratings(filled, resamples=200)
    agreement = {
        r["metric"]: r for r in json.loads((folder / "ratings.json").read_text())["metric_agreement"]
    }
    assert set(agreement) == {"temporal_flickering", "flow_interpolation_smoothness"}
    for row in agreement.values():
        assert row["pairs"] == N_PROMPTS - 1  # the tie is left out
        assert row["accuracy"] == accuracy and row["kendall_tau"] == tau
        assert row["accuracy_ci"] == [accuracy, accuracy]
    assert "## Agreement of each metric with the raters" in text and "temporal_flickering" in text
