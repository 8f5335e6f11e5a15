"""Real test videos made with the system ffmpeg (argument lists, never shell strings)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

TESTDATA = Path(__file__).resolve().parent / "data"
REAL_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4")


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("system ffmpeg is required for the tests: apt-get install -y ffmpeg")
    return exe


def make_video(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 8,
    size: tuple[int, int] = (64, 48),
    source: str = "testsrc2",
    vf: str | None = None,
    codec: str = "libx264",
    gop: int | None = None,
    audio: bool = False,
) -> Path:
    """Write a real encoded video. ``size`` is (width, height); ``source`` is a lavfi source name
    (testsrc2 moves, so frames differ) or a full lavfi graph when it contains '='."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    graph = source if "=" in source else f"{source}=size={w}x{h}:rate={fps}:duration={seconds}"
    args = [ffmpeg(), "-y", "-v", "error", "-f", "lavfi", "-i", graph]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    if vf:
        args += ["-vf", vf]
    args += ["-t", str(seconds), "-r", str(fps), "-c:v", codec]
    if codec == "libx264":
        args += ["-pix_fmt", "yuv420p", "-preset", "ultrafast"]
        if gop:
            args += ["-g", str(gop)]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    args.append(str(path))
    subprocess.run(args, check=True, capture_output=True)
    return path


def real_clip(name: str, dest_dir: Path) -> Path:
    """Copy one of the repository's real clips (``tests/data``, provenance in its README) somewhere writable."""
    src = TESTDATA / name
    if not src.exists():
        raise FileNotFoundError(f"{src} missing: the real test clips ship in tests/data/")
    dest = dest_dir / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest
