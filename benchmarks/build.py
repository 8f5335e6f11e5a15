"""Build throughput: clips/s per stage, and the speed-up of 2 local workers over 1.

    .venv/bin/python benchmarks/build.py [--copies 8] [--recipe demo]

Builds the test raw/ folder (trip-wire videos + the two real clips + ``--copies`` extra 3-second
webm inputs) with ``--workers 1`` and ``--workers 2`` into fresh folders, checks that both datasets are
byte-identical, and prints per-stage rates (from the per-sample stage timings) and wall-clock times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures_build import make_raw, tree_bytes  # noqa: E402
from rich.console import Console  # noqa: E402

from medvideocap.build import build, load_recipe  # noqa: E402


def stage_rates(outcomes: list, labels: list[str]) -> dict[str, tuple[int, float]]:
    """Stage -> (samples that ran it, seconds spent). Timings travel with each outcome; up to the
    split stage a sample is an input (its time is shared out over its clips), after it a clip."""
    split = labels.index("split") if "split" in labels else -1
    seconds: dict[str, float] = defaultdict(float)
    units: dict[str, set] = defaultdict(set)
    for o in outcomes:
        for label, spent in o.timings.items():
            seconds[label] += spent
            units[label].add(o.input if labels.index(label) <= split else (o.input, o.index))
    return {label: (len(units[label]), seconds[label]) for label in labels if units[label]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--copies", type=int, default=8, help="Extra 3-second inputs besides the trip-wire set."
    )
    parser.add_argument("--recipe", default="demo", help="Recipe name or path.")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    labels = [s.label for s in recipe.stages]
    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = make_raw(Path(tmp) / "raw", copies=args.copies)
        walls: dict[int, float] = {}
        results = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            results[workers] = build(
                raw, Path(tmp) / f"out{workers}", recipe=recipe, workers=workers, console=quiet
            )
            walls[workers] = time.perf_counter() - t0
        same = tree_bytes(Path(tmp) / "out1") == tree_bytes(Path(tmp) / "out2")
    r1 = results[1]
    print(f"recipe {recipe.name}: {r1.inputs} inputs -> {r1.kept} clips ({r1.rejected} rejects)")
    print(f"{'stage':<16}{'samples':>8}{'seconds':>10}{'samples/s':>12}   (1 worker, in-process)")
    for label, (n, seconds) in stage_rates(r1.outcomes, labels).items():
        print(f"{label:<16}{n:>8}{seconds:>10.3f}{n / max(seconds, 1e-9):>12.1f}")
    for workers, wall in walls.items():
        print(
            f"workers={workers}: wall {wall:.2f} s, {r1.kept / wall:.2f} kept clips/s, {r1.inputs / wall:.2f} inputs/s"
        )
    print(f"speed-up 2 workers / 1 worker: {walls[1] / walls[2]:.2f}x   datasets byte-identical: {same}")


if __name__ == "__main__":
    main()
