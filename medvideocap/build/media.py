"""Frame sampling and ffmpeg cutting shared by the build stages.

Frames are decoded with PyAV (bundled FFmpeg, deterministic) and downscaled with OpenCV; clips are cut
with the system ffmpeg through argument lists. Every encode uses bitexact muxing and single-threaded
x264, so the same cut of the same input gives the same bytes on every run, engine and worker count —
which is what lets an interrupted build resume into exactly the dataset an uninterrupted one writes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from medvideocap.atomic import atomic_path

BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-map_chapters", "-1"]


class MediaError(RuntimeError):
    """ffmpeg or the decoder failed on a file; the message names the file and ffmpeg's complaint."""


def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise MediaError("the build needs the ffmpeg executable on PATH (e.g. apt-get install -y ffmpeg)")
    return exe


@dataclass
class Frames:
    """Decoded frames (RGB uint8, H x W x 3) with their timestamps in seconds."""

    images: list[np.ndarray]
    times: list[float]

    def gray(self) -> list[np.ndarray]:
        return [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in self.images]


def _resize(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side:
        return image
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(
        image, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA
    )


def _sample_at(path: str | Path, ticks: list[float] | None, step: float, max_side: int | None) -> Frames:
    """The first frame at or after each tick (times relative to the first frame); only those are
    converted and kept, so memory stays small whatever the clip length and resolution."""
    images: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        t0: float | None = None
        pending = list(ticks) if ticks is not None else None
        next_tick = 0.0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t0 = float(frame.time) if t0 is None else t0
            t = float(frame.time) - t0
            if pending is not None:
                if not pending:
                    break
                if t + 1e-6 < pending[0]:
                    continue
                while pending and pending[0] <= t + 1e-6:
                    pending.pop(0)
            elif t + 1e-6 < next_tick:
                continue
            else:
                while next_tick <= t + 1e-6:
                    next_tick += step
            images.append(_resize(frame.to_ndarray(format="rgb24"), max_side))
            times.append(t)
    if not images:
        raise MediaError(f"{path}: no decodable video frames")
    return Frames(images, times)


def sample_at_fps(path: str | Path, fps: float, *, max_side: int | None = 256) -> Frames:
    """Frames about ``1/fps`` seconds apart, downscaled so the longer side is at most ``max_side``."""
    return _sample_at(path, None, 1.0 / fps, max_side)


def sample_even(path: str | Path, n: int, *, max_side: int | None = None) -> Frames:
    """``n`` frames spread evenly over the clip (what the aesthetic and OCR stages look at)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
    ticks = [(i + 0.5) * duration / n for i in range(n)] if duration > 0 else [0.0]
    return _sample_at(path, ticks, 0.0, max_side)


def keyframe_times(path: str | Path) -> list[float]:
    """Presentation times of the key frames (cuts there can be stream-copied)."""
    times: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base or 0)
        start = float(stream.start_time) * tb if stream.start_time else 0.0
        for packet in container.demux(stream):
            if packet.is_keyframe and packet.pts is not None:
                times.append(float(packet.pts) * tb - start)
    return sorted(times)


def run_ffmpeg(args: list[str], *, what: str) -> None:
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-y", "-v", "error", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise MediaError(f"{what}: ffmpeg failed ({proc.stderr.strip()[-400:] or f'exit {proc.returncode}'})")


def cut(
    src: str | Path,
    dest: Path,
    *,
    start: float,
    end: float,
    copy: bool,
    crop: tuple[int, int, int, int] | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> Path:
    """Write ``src[start:end]`` to ``dest`` as a video-only mp4 (atomically: tmp name + os.replace).

    ``copy`` stream-copies (only valid when ``start`` is a keyframe and the codec is H.264); otherwise
    the segment is re-encoded with single-threaded x264 to even dimensions, ``crop`` = (w, h, x, y)."""
    args = [
        "-ss",
        f"{start:.6f}",
        "-i",
        str(src),
        "-t",
        f"{end - start:.6f}",
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
    ]
    if copy:
        args += ["-c:v", "copy"]
    else:
        filters = []
        if crop:
            w, h, x, y = crop
            filters.append(f"crop={w}:{h}:{x}:{y}")
        filters.append("scale=trunc(iw/2)*2:trunc(ih/2)*2")
        args += [
            "-vf",
            ",".join(filters),
            "-filter_threads",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            preset,
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
        ]
    with atomic_path(dest, fsync=False) as tmp:
        run_ffmpeg(
            [*args, *BITEXACT, "-movflags", "+faststart", str(tmp)], what=f"{src} [{start:.2f}s-{end:.2f}s]"
        )
    return dest
