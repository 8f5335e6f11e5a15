"""Is ``medvideocap build`` as fast as its transcode? One core, one run, ratios against ffmpeg.

    taskset -c 0 .venv/bin/python benchmarks/build_speed.py [--dir DIR] [--seconds 54] [--skip-real]
        [--scaling 4]

Pins itself (and every child) to one core (``os.sched_setaffinity``: the same as ``taskset -c 0``) and,
in one run, on the same inputs:

* a generated 720x480 H.264 input of six 9-s shots from ffmpeg's lavfi sources, hard cuts at 9, 18,
  ... s, noise on the fourth shot (costly to encode: the default technical threshold keeps it) and
  40-px letterbox bars on the first (the border stage crops them): ``--seconds`` long (54 by default);
* the repository's real clips (tests/data: Big Buck Bunny 1280x720, bikes 640x272) built with the
  default recipe minus its 480-px and 6-s limits (so they yield clips at all);

it measures single-threaded ffmpeg decode (``-threads 1 -f null``) and decode + encode
(``libx264 -preset veryfast -crf 18 -threads 1``: what any curated dataset costs at least),
``medvideocap build --workers 1`` with the default recipe (wall, peak RSS, real-time factor, and the
seconds each stage spent, from the journal), and each field library called directly on the same
frames: PySceneDetect ``detect(ContentDetector(27))`` on the input, ffmpeg ``cropdetect`` over the
input at 2 fps, rapidocr on 5 frames of each span the OCR stage looked at (the stage itself stops at a
clip's first frame over its limits). The border stage's
bars are folded over the split stage's decode (``BarScan``), so its seconds are inside ``split``'s.

``--scaling N`` then builds N copies of the generated input with ``--workers 1`` on one core, and
with ``--workers 1`` and ``--workers 2`` on two cores, and prints the speed-ups over the first.

The targets (issue 23): build wall <= 1.5x decode + encode, each stage <= 1.1x its library,
``--workers 2`` >= 1.8x ``--workers 1`` on four inputs. A measurement, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SHOT = 9.0
SOURCES = (
    "testsrc2=size=720x480:rate=25",
    "mandelbrot=size=720x480:rate=25",
    "testsrc=size=720x480:rate=25",
    "testsrc2=size=720x480:rate=25,hflip,hue=h=120",
    "mandelbrot=size=720x480:rate=25:start_scale=0.5:end_scale=0.05",
    "testsrc=size=720x480:rate=25,negate",
)
NOISY, BARRED = 3, 0  # shot indices: noise (technical drops it), letterbox bars (border crops them)


def ffmpeg() -> str:
    return "ffmpeg"


def make_long(dest: Path, seconds: float) -> list[float]:
    """The generated input; returns its true cut times."""
    n = max(1, round(seconds / SHOT))
    parts, labels = [], []
    for i in range(n):
        src = SOURCES[i % len(SOURCES)]
        chain = f"{src},trim=duration={SHOT},setpts=PTS-STARTPTS,format=yuv420p"
        if i == NOISY:
            chain += ",noise=alls=40:allf=t"
        if i == BARRED:
            chain += ",scale=720:400,pad=720:480:0:40:black"
        parts.append(f"{chain},setsar=1[s{i}]")
        labels.append(f"[s{i}]")
    graph = ";".join(parts) + ";" + "".join(labels) + f"concat=n={n}:v=1:a=0"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.stem + ".part.mp4")
    subprocess.run(
        [ffmpeg(), "-y", "-v", "error", "-filter_complex", graph, "-c:v", "libx264", "-preset", "veryfast"]
        + ["-crf", "18", "-pix_fmt", "yuv420p", str(part)],
        check=True,
    )
    part.replace(dest)
    return [SHOT * k for k in range(1, n)]


def run_child(args: list[str]) -> tuple[float, float]:
    """Run ``args``; (wall seconds, peak RSS of that child in MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{args[:4]} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def ffmpeg_baselines(paths: list[Path], tmp: Path) -> dict[str, float]:
    decode = encode = 0.0
    for p in paths:
        decode += run_child([ffmpeg(), "-v", "error", "-threads", "1", "-i", str(p), "-f", "null", "-"])[0]
        out = tmp / f"{p.stem}-reencoded.mp4"
        encode += run_child(
            [ffmpeg(), "-y", "-v", "error", "-threads", "1", "-i", str(p), "-an", "-c:v", "libx264"]
            + ["-preset", "veryfast", "-crf", "18", "-threads", "1", "-filter_threads", "1", str(out)]
        )[0]
    return {"decode": decode, "decode+encode": encode}


def build_once(src: Path, out: Path, recipe: str, workers: int = 1) -> dict[str, Any]:
    """``medvideocap build --workers N`` in a child process; wall, RSS and per-stage seconds."""
    import shutil

    for old in (out, out.with_name(out.name + ".build")):
        shutil.rmtree(old, ignore_errors=True)
    cmd = [sys.executable, "-m", "medvideocap", "build", "--src", str(src), "--out", str(out)]
    wall, rss = run_child([*cmd, "--recipe", recipe, "--workers", str(workers)])
    stages: dict[str, float] = {}
    kept = rejected = 0
    spans: list[tuple[str, float, float]] = []
    for path in sorted((out.with_name(out.name + ".build") / "journal").glob("*.json")):
        entry = json.loads(path.read_text())
        for o in entry["outcomes"]:
            for label, spent in (o.get("timings") or {}).items():
                stages[label] = stages.get(label, 0.0) + float(spent)
            if o["stage"] is None:
                kept += 1
            else:
                rejected += 1
            read = "ocr" in (o.get("timings") or {})  # clips the OCR stage looked at
            if read and o.get("start") is not None and o.get("end") is not None:
                spans.append((entry["input"], float(o["start"]), float(o["end"])))
    funnel_path = out / "meta" / "funnel.json"
    funnel = json.loads(funnel_path.read_text()) if funnel_path.exists() else {}
    return {
        "wall": wall,
        "rss": rss,
        "stages": stages,
        "kept": kept,
        "rejected": rejected,
        "spans": spans,
        "funnel": funnel,
    }


def scenedetect_direct(paths: list[Path]) -> float:
    from scenedetect import ContentDetector, detect

    t0 = time.perf_counter()
    for p in paths:
        detect(str(p), ContentDetector(threshold=27.0))
    return time.perf_counter() - t0


def cropdetect_direct(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        subprocess.run(
            [ffmpeg(), "-hide_banner", "-nostats", "-threads", "1", "-i", str(p), "-map", "0:v:0", "-vf"]
            + ["fps=2,cropdetect=limit=0.094118:round=2:skip=0:reset=0", "-f", "null", "-"],
            capture_output=True,
            check=True,
        )
    return time.perf_counter() - t0


def rapidocr_direct(src: Path, spans: list[tuple[str, float, float]], frames: int = 5) -> tuple[float, int]:
    """rapidocr (the OCR stage's own settings) on ``frames`` evenly spaced frames of each span, frames
    decoded beforehand (only the library is timed)."""
    import av
    from rapidocr import RapidOCR

    from medvideocap.media.frames import even_times

    images = []
    for name, start, end in spans:
        wanted = even_times(start, end, frames)
        with av.open(str(src / name)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frame.time is not None and wanted and frame.time >= wanted[0]:
                    images.append(frame.to_ndarray(format="rgb24"))
                    wanted.pop(0)
                if not wanted:
                    break
    engine = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    engine(images[0])  # load and warm up outside the timing, as a worker does once
    t0 = time.perf_counter()
    for im in images:
        engine(im)
    return time.perf_counter() - t0, len(images)


def real_recipe(dest: Path) -> str:
    """The default recipe without the 480-px and 6-s limits (the real test clips are smaller/shorter)."""
    import yaml

    from medvideocap.build.recipe import resolve_recipe

    data = yaml.safe_load(resolve_recipe("default")[0].read_text())
    for stage in data["stages"]:
        for key in ("min_height", "min_seconds"):
            if key in stage:
                stage[key] = 1.0 if key == "min_seconds" else 0
    data["name"] = "default-unlimited"
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(dest)


def report(title: str, inputs: list[Path], src: Path, recipe: str, tmp: Path) -> None:
    from medvideocap.media.probe import probe

    seconds = sum(probe(p).duration for p in inputs)
    base = ffmpeg_baselines(inputs, tmp)
    built = build_once(src, tmp / f"out-{src.name}", recipe)
    sd = scenedetect_direct(inputs)
    cd = cropdetect_direct(inputs)
    ocr_s, ocr_n = rapidocr_direct(src, [s for s in built["spans"]], 5) if built["spans"] else (0.0, 0)
    wall = built["wall"]
    print(
        f"\n## {title}: {len(inputs)} input(s), {seconds:.1f} s of video, "
        f"{built['kept']} clips kept, {built['rejected']} rejected"
    )
    print(f"{'what':<52}{'seconds':>9}{'ratio':>9}")
    rows = [
        ("ffmpeg -threads 1 decode", base["decode"], None),
        ("ffmpeg -threads 1 decode + x264 veryfast encode", base["decode+encode"], None),
        ("medvideocap build --workers 1 (default recipe)", wall, wall / base["decode+encode"]),
    ]
    for label, value, ratio in rows:
        print(f"{label:<52}{value:>9.2f}{'' if ratio is None else f'{ratio:>8.2f}x'}")
    print(
        f"  real-time factor (input s per wall s, 1 worker): {seconds / wall:.2f}x; "
        f"peak RSS {built['rss']:.0f} MiB; stages sum {sum(built['stages'].values()):.2f} s"
    )
    direct = {"split": sd, "black_border": cd, "ocr": ocr_s}
    names = {
        "split": "PySceneDetect detect()",
        "black_border": "ffmpeg cropdetect",
        "ocr": f"rapidocr on {ocr_n} frames",
    }
    print(f"{'stage':<20}{'ours s':>9}{'library s':>11}{'ratio':>9}  library called directly")
    for label, spent in sorted(built["stages"].items(), key=lambda kv: -kv[1]):
        lib = direct.get(label)
        ratio = f"{spent / lib:>8.2f}x" if lib else f"{'-':>9}"
        print(f"{label:<20}{spent:>9.2f}{(f'{lib:.2f}' if lib else '-'):>11}{ratio}  {names.get(label, '')}")


def scaling(long: Path, copies: int, tmp: Path, cores: list[int]) -> None:
    """``--workers 2`` on two cores against ``--workers 1`` on one core (and on two: PyAV's decoder
    threads then use the second core too), on ``copies`` links of the generated input."""
    import shutil

    raw = tmp / f"raw-{copies}"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    for k in range(copies):
        os.link(long, raw / f"long-{k}.mp4")
    pinned = os.sched_getaffinity(0)
    runs = {}
    try:
        for label, workers, n in (
            ("1 worker, 1 core", 1, 1),
            ("1 worker, 2 cores", 1, 2),
            ("2 workers, 2 cores", 2, 2),
        ):
            os.sched_setaffinity(0, set(cores[:n]))
            runs[label] = build_once(raw, tmp / f"out-scaling-{workers}-{n}", "default", workers=workers)
    finally:
        os.sched_setaffinity(0, pinned)
    base = runs["1 worker, 1 core"]["wall"]
    print(f"\n## workers: {copies} copies of the generated input, cores {cores[:2]}")
    print(f"{'medvideocap build':<52}{'seconds':>9}{'speed-up':>10}")
    for label, built in runs.items():
        print(f"{label:<52}{built['wall']:>9.2f}{base / built['wall']:>9.2f}x  ({built['kept']} clips kept)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temp dir).")
    parser.add_argument("--seconds", type=float, default=54.0, help="Length of the generated input.")
    parser.add_argument("--skip-real", action="store_true", help="Leave out the real test clips.")
    parser.add_argument("--scaling", type=int, default=0, help="Also build N copies with 1 and 2 workers.")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))  # before pinning: the --scaling run uses two of them
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(
        f"pinned to core {sorted(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f} "
        "(a shared machine: compare ratios, not seconds)"
    )
    tmp = args.dir or Path(tempfile.mkdtemp(prefix="build-speed-"))
    raw = tmp / "raw-long"
    long = raw / "long.mp4"
    if not long.exists():
        make_long(long, args.seconds)
    report("generated long input", [long], raw, "default", tmp)
    if not args.skip_real:
        from videos import REAL_CLIPS, real_clip

        real = tmp / "raw-real"
        inputs = [real / n if (real / n).exists() else real_clip(n, real) for n in REAL_CLIPS]
        report("real clips (tests/data)", inputs, real, real_recipe(tmp / "default-unlimited.yaml"), tmp)
    if args.scaling:
        scaling(long, args.scaling, tmp, cores)


if __name__ == "__main__":
    main()
