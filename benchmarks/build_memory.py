"""Peak memory of a build worker per stage, on 1-hour and 2-hour inputs: it must not grow with length.

    .venv/bin/python benchmarks/build_memory.py [--hours 1 2] [--fps 5] [--size 128x96]

Generates long, small inputs with ffmpeg (testsrc2 with a hard cut to a mirrored copy every 10
minutes, H.264 ultrafast), then runs each analysis stage over the *whole* input as one clip (what a
long single-shot lecture does when a recipe sets no ``max_seconds``) in a fresh process, and prints
that process's peak RSS (``ru_maxrss``) and the time it took. A last row runs the default recipe's
whole pipeline (limits lowered for the small frames, no maximum clip length) on the input in one
worker. Flat peaks from 1 h to 2 h mean the decoding streams.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("probe", "split:pyscenedetect", "split:histogram", "black_border", "ocr", "technical")
STAGES += ("measures", "camera_motion", "pipeline")


def make_input(path: Path, hours: float, fps: int, size: str) -> Path:
    """``hours`` of testsrc2 at ``size``/``fps``, cutting to a mirrored copy every 10 minutes."""
    if path.exists():
        return path
    seconds = int(hours * 3600)
    graph = (
        f"testsrc2=size={size}:rate={fps}:duration={seconds},"
        "split[a][b];[b]hflip[m];"
        "[a][m]blend=all_expr='if(lt(mod(T,1200),600),A,B)'"
    )
    args = [
        "ffmpeg",
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        graph,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
    ]
    subprocess.run([*args, "-g", str(fps * 10), "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def run_stage(stage: str, path: Path, work: Path) -> dict[str, float]:
    """Run one stage over ``path`` in this process; return peak RSS (MB) and seconds."""
    from medvideocap.build import Pipeline, load_recipe
    from medvideocap.build.recipe import Recipe
    from medvideocap.build.sample import Sample
    from medvideocap.build.stages import Context, make_stage
    from medvideocap.media.probe import probe

    t0 = time.perf_counter()
    info = probe(path, name=path.name, count_frames=True)
    sample = Sample(input=path.name, path=str(path), key="long", info=info.as_dict(), clip=str(path))
    if stage == "pipeline":
        data = load_recipe("default").model_dump(mode="json")
        for entry in data["stages"]:
            for key in ("min_height", "min_seconds"):
                if key in entry:
                    entry[key] = 0
            if entry["stage"] == "split":
                entry["max_seconds"] = None
                entry["preset"] = "ultrafast"
            if entry["stage"] == "technical":
                entry["min"] = None
        recipe = Recipe.model_validate(data)
        outcomes = Pipeline(recipe, work).run(Sample(input=path.name, path=str(path), key="long"))
        extra = {"clips": float(len(outcomes))}
    elif stage != "probe":
        kind, _, detector = stage.partition(":")
        entry: dict[str, object] = {"stage": kind}
        if detector:
            entry.update(detector=detector, min_seconds=0, preset="ultrafast")
        if kind == "black_border":
            entry["method"] = "hough"  # the in-process method (cropdetect runs in ffmpeg's process)
        recipe = Recipe.model_validate({"name": "m", "stages": [{"stage": "probe"}, entry]})
        cfg = recipe.stages[1]
        if kind == "split":
            from medvideocap.build.stages.split import detect_transitions

            extra = {"cuts": float(len(detect_transitions(path, cfg)))}  # type: ignore[arg-type]
        else:
            make_stage(cfg, Context(work=work))(sample)
            extra = {}
    else:
        extra = {}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": round(peak_kb / 1024, 1), "seconds": round(time.perf_counter() - t0, 1), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--fps", type=int, default=5)
    parser.add_argument("--size", default="128x96")
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--dir", type=Path, default=None, help="Keep the generated inputs here.")
    parser.add_argument("--_child", nargs=2, metavar=("STAGE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(run_stage(args._child[0], Path(args._child[1]), Path(work))))
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix="build-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for hours in args.hours:
        t0 = time.perf_counter()
        inputs[hours] = make_input(folder / f"long-{hours:g}h.mp4", hours, args.fps, args.size)
        print(f"input {hours:g} h: {inputs[hours]} ({time.perf_counter() - t0:.0f} s to make)", flush=True)
    results: dict[str, dict[float, dict[str, float]]] = {}
    for stage in args.stages:
        for hours, path in inputs.items():
            proc = subprocess.run(
                [sys.executable, __file__, "--_child", stage, str(path)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise SystemExit(f"{stage} on {path}: {proc.stderr[-2000:]}")
            results.setdefault(stage, {})[hours] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {stage:22s} {hours:g} h: {results[stage][hours]}", flush=True)
    hours = list(inputs)
    header = f"{'stage':22s} " + " ".join(f"{f'peak MB {h:g} h':>13s} {f's {h:g} h':>8s}" for h in hours)
    print(f"\npeak RSS of one worker per stage ({args.size} at {args.fps} fps)\n{header}")
    for stage, by_hours in results.items():
        cells = " ".join(f"{by_hours[h]['peak_mb']:13.1f} {by_hours[h]['seconds']:8.1f}" for h in hours)
        print(f"{stage:22s} {cells}")


if __name__ == "__main__":
    main()
