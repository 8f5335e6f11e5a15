"""A raw/ folder of small real videos made to trip each build stage (shared by the build tests and the
build benchmark). Sizes are tiny (160x120, 8 fps) so a whole build runs in seconds on two cores."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from videos import ffmpeg, make_video, real_clip

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
    """Every file under ``root`` by relative path: two builds are equal when these are."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
