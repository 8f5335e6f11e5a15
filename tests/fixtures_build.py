"""A raw/ folder of small real videos made to trip each build stage (shared by the build tests and the
build benchmark). Sizes are tiny (160x120, 8 fps) so a whole build runs in seconds on two cores."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from videos import TESTDATA, ffmpeg, make_video, real_clip

SIZE = dict(fps=8, size=(160, 120))
SCENE_CUTS = (2.5, 5.0)  # where scenes.mkv changes content
SCENES = (
    "testsrc2=size=160x120:rate=8:duration=2.5[a];"
    "mandelbrot=size=160x120:rate=8,trim=duration=2.5,setsar=1[b];"
    "life=size=160x120:rate=8:mold=10:ratio=0.5:death_color=#203040:life_color=#f0c020,"
    "trim=duration=2.5,format=yuv420p,setsar=1[c];"
    "[a][b][c]concat=n=3:v=1:a=0"
)
SIDECAR = [
    {
        "file": "good.mp4",
        "title": "Interrupted suture demonstration",
        "source_id": "yt-good",
        "url": "https://example.org/good",
        "category": "Clinical Practice",
        "caption_detailed": "A moving colour test pattern with a clock, shown as a stand-in for a suture demo.",
        "caption_brief": "A moving test pattern.",
    },
    {"file": "scenes.mkv", "title": "Three scenes", "category": "medical animation", "license": "CC-BY-4.0"},
]

# input -> (stage, reject code) for every input rejected as a whole or in every clip
EXPECTED_REJECTS = {
    "audio_only.mp4": ("probe", "no_video_stream"),
    "bars.mp4": ("black_border", "black_border"),
    "blurred.mp4": ("measures", "blurry"),
    "corrupt.mp4": ("probe", "unreadable"),
    "empty.mp4": ("probe", "empty"),
    "notes.txt": ("probe", "not_video"),
    "short.mp4": ("probe", "too_short"),
    "static.mp4": ("measures", "static"),
}


def make_raw(raw: Path, *, real: bool = True, copies: int = 0) -> Path:
    """Write the trip-wire inputs (and the two real clips) into ``raw``; ``copies`` adds extra good
    inputs (for benchmarks)."""
    raw.mkdir(parents=True, exist_ok=True)
    make_video(raw / "good.mp4", seconds=3, **SIZE)
    make_video(raw / "bars.mp4", seconds=3, fps=8, size=(160, 80), vf="pad=160:120:0:20:black")
    make_video(raw / "blurred.mp4", seconds=3, vf="gblur=sigma=6", **SIZE)
    make_video(raw / "static.mp4", seconds=3, source="smptebars", **SIZE)
    make_video(raw / "short.mp4", seconds=1, **SIZE)
    make_video(raw / "scenes.mkv", seconds=7.5, source=SCENES, **SIZE)
    make_video(raw / "lecture.webm", seconds=3, codec="libvpx", **SIZE)
    make_video(raw / "ward.avi", seconds=3, codec="mpeg4", source="mandelbrot=size=160x120:rate=8", **SIZE)
    good = (raw / "good.mp4").read_bytes()
    (raw / "corrupt.mp4").write_bytes(good[: len(good) // 3])
    (raw / "notes.txt").write_text("not a video\n")
    (raw / "empty.mp4").write_bytes(b"")
    subprocess.run(
        [
            ffmpeg(),
            "-y",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:a",
            "aac",
            str(raw / "audio_only.mp4"),
        ],
        check=True,
    )
    for i in range(copies):
        make_video(raw / f"extra_{i:02d}.webm", seconds=3, codec="libvpx", **SIZE)
    if real:
        real_clip("bikes.mp4", raw)
        real_clip("bigbuckbunny.mp4", raw)
    (raw / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in SIDECAR))
    return raw


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path: two builds are equal when these are.

    Except the seconds in ``meta/funnel.json`` (per stage, and its ``time`` summary): they say how
    long the run that processed each input took, which no two runs share. Every other byte of that
    file, and of every other file, is compared."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return without_seconds(files)


def without_seconds(files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` (relative path -> bytes) with the seconds of ``meta/funnel.json`` left out, as
    :func:`tree_bytes` compares them (for a tree read from somewhere other than a local folder)."""
    files = dict(files)
    if "meta/funnel.json" in files:
        funnel = json.loads(files["meta/funnel.json"])
        funnel.pop("time", None)
        for row in funnel.get("stages", []):
            row.pop("seconds", None)
        files["meta/funnel.json"] = json.dumps(funnel, sort_keys=True).encode()
    return files


# ------------------------------------------------------------------------------------------------
# labelled real footage for the curation stages (shared by tests/test_build_stages.py and
# benchmarks/curation.py): cuts by concatenation, bars by padding, text by drawtext, degradations

BBB_SECONDS = 5.28  # tests/data/bigbuckbunny.mp4: one shot
BIKES_CUTS = (1.2, 3.04, 5.48, 7.48, 9.68)  # bikes.mp4's own hard cuts (first frame of each new shot;
# the five largest frame-difference spikes of the clip, each 2.5x any other frame change)
BIKES_SECONDS = 10.0
# big buck bunny, its mirror image (similar colours: the hard case) and bikes, back to back
CONCAT_CUTS = (BBB_SECONDS, 2 * BBB_SECONDS, *(round(2 * BBB_SECONDS + c, 2) for c in BIKES_CUTS))
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _encode(args: list[str], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg(), "-y", "-v", "error", *args, "-an", "-c:v", "libx264", "-preset", "ultrafast"]
    subprocess.run([*cmd, "-crf", "18", "-pix_fmt", "yuv420p", str(dest)], check=True, capture_output=True)
    return dest


def concat_real(dest: Path, *, size: tuple[int, int] = (320, 180), fps: int = 25) -> Path:
    """bigbuckbunny, its hflip copy and bikes at one size and rate, concatenated: cuts at CONCAT_CUTS."""
    w, h = size
    norm = f"scale={w}:{h},setsar=1,fps={fps},format=yuv420p"
    graph = f"[0:v]{norm},split[a][m];[m]hflip[b];[1:v]{norm}[c];[a][b][c]concat=n=3:v=1:a=0"
    return _encode(
        [
            "-i",
            str(TESTDATA / "bigbuckbunny.mp4"),
            "-i",
            str(TESTDATA / "bikes.mp4"),
            "-filter_complex",
            graph,
        ],
        dest,
    )


def dissolve_real(
    dest: Path, *, seconds: float = 1.0, size: tuple[int, int] = (320, 180), fps: int = 25
) -> Path:
    """bigbuckbunny dissolving into bikes over ``seconds`` (xfade), starting at BBB_SECONDS - seconds;
    bikes' own cuts follow at BBB_SECONDS - seconds + BIKES_CUTS."""
    w, h = size
    norm = f"scale={w}:{h},setsar=1,fps={fps},format=yuv420p"
    graph = (
        f"[0:v]{norm}[a];[1:v]{norm}[b];"
        f"[a][b]xfade=transition=fade:duration={seconds}:offset={BBB_SECONDS - seconds}"
    )
    return _encode(
        [
            "-i",
            str(TESTDATA / "bigbuckbunny.mp4"),
            "-i",
            str(TESTDATA / "bikes.mp4"),
            "-filter_complex",
            graph,
        ],
        dest,
    )


def letterbox_real(
    dest: Path, name: str, *, bar: int, size: tuple[int, int] = (320, 180), pillar: bool = False
) -> Path:
    """A real clip scaled to ``size`` and padded with black bars of ``bar`` px top and bottom (or
    left and right with ``pillar``)."""
    w, h = size
    pad = f"pad={w + 2 * bar}:{h}:{bar}:0:black" if pillar else f"pad={w}:{h + 2 * bar}:0:{bar}:black"
    return _encode(["-i", str(TESTDATA / name), "-vf", f"scale={w}:{h},setsar=1,{pad}"], dest)


def text_real(
    dest: Path, name: str, words: int, *, size: tuple[int, int] = (640, 360), seconds: float = 3.0
) -> Path:
    """A real clip with ``words`` distinct words burned in (white on a dark box, three lines)."""
    if not Path(FONT).is_file():
        raise RuntimeError(f"drawtext needs the font {FONT}: apt-get install -y fonts-dejavu-core")
    vocab = [
        "patient",
        "knee",
        "joint",
        "suture",
        "needle",
        "tissue",
        "artery",
        "nerve",
        "muscle",
        "bone",
        "scan",
        "valve",
    ]
    text = [f"{vocab[i % len(vocab)]}{i // len(vocab) or ''}" for i in range(words)]
    lines = [" ".join(text[i::3]) for i in range(3) if text[i::3]]
    w, h = size
    draws = [
        f"drawtext=fontfile={FONT}:text={line}:fontsize={h // 16}:fontcolor=white:box=1:boxcolor=black@0.6:"
        f"x=(w-text_w)/2:y=h-{(len(lines) - k) * (h // 12) + 8}"
        for k, line in enumerate(lines)
    ]
    return _encode(
        [
            "-i",
            str(TESTDATA / name),
            "-t",
            str(seconds),
            "-vf",
            ",".join([f"scale={w}:{h},setsar=1", *draws]),
        ],
        dest,
    )


DEGRADATIONS = {
    "blur": ["-vf", "gblur=sigma=3"],
    "noise": ["-vf", "noise=alls=40:allf=t"],
    "compression": [],
}


def degraded_real(dest: Path, name: str, kind: str, *, seconds: float = 3.0) -> Path:
    """A real clip (the source when ``kind`` is 'source') or a blurred / noisy / over-compressed copy.

    Compression is real x264 at its crudest quantiser (qp 51), nothing else changed."""
    extra = [] if kind == "source" else DEGRADATIONS[kind]
    base = ["-i", str(TESTDATA / name), "-t", str(seconds), *extra]
    if kind != "compression":
        return _encode(base, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    args = [
        ffmpeg(),
        "-y",
        "-v",
        "error",
        *base,
        "-an",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-qp",
        "48",
    ]
    subprocess.run([*args, "-pix_fmt", "yuv420p", str(dest)], check=True, capture_output=True)
    return dest
