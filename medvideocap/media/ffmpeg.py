"""Frame sampling and ffmpeg cutting shared by the build stages.

Frames are decoded with PyAV (bundled FFmpeg, deterministic) and downscaled with OpenCV; clips are cut
with the system ffmpeg through argument lists. Every encode uses bitexact muxing and single-threaded
x264, so the same cut of the same input gives the same bytes on every run, engine and worker count —
which is what lets an interrupted build resume into exactly the dataset an uninterrupted one writes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from medvideocap.atomic import atomic_path
from medvideocap.disk import ResourceError, errno_in_text

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


def _scaled(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, round(width * scale)), max(2, round(height * scale))


def iter_frames(
    path: str | Path,
    *,
    fps: float | None = None,
    max_side: int | None = 256,
    size: tuple[int, int] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Decoded RGB frames with their times (seconds from the first frame), one at a time.

    Every frame, or with ``fps`` the first frame at or after each ``1/fps`` tick. Frames are scaled by
    the decoder (area filter) to ``size`` = (width, height), or so the longer side is at most
    ``max_side``. A generator on purpose: an analysis that folds frames into running sums holds one
    frame, so a worker's memory does not grow with the length of the video."""
    step = 1.0 / fps if fps else 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0: float | None = None
        next_tick = 0.0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t0 = float(frame.time) if t0 is None else t0
            t = float(frame.time) - t0
            if step:
                if t + 1e-6 < next_tick:
                    continue
                while next_tick <= t + 1e-6:
                    next_tick += step
            w, h = size or _scaled(frame.width, frame.height, max_side)
            if (w, h) == (frame.width, frame.height):
                image = frame.to_ndarray(format="rgb24")
            else:
                image = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
            yield t, image


def _collect(frames: Iterator[tuple[float, np.ndarray]], path: str | Path) -> Frames:
    times: list[float] = []
    images: list[np.ndarray] = []
    for t, image in frames:
        times.append(t)
        images.append(image)
    if not images:
        raise MediaError(f"{path}: no decodable video frames")
    return Frames(images, times)


def sample_at_fps(path: str | Path, fps: float, *, max_side: int | None = 256) -> Frames:
    """Frames about ``1/fps`` seconds apart, downscaled so the longer side is at most ``max_side``.

    Holds them all: for clips (seconds long); long inputs are analysed with :func:`iter_frames`."""
    return _collect(iter_frames(path, fps=fps, max_side=max_side), path)


def sample_even(path: str | Path, n: int, *, max_side: int | None = None) -> Frames:
    """``n`` frames spread evenly over the clip (what the aesthetic and OCR stages look at), at the
    instants of the project's one rule (:func:`medvideocap.media.frames.even_times`), each the frame
    nearest its instant by real timestamps (torchcodec's played-at lookup), so variable-frame-rate
    files are sampled right too."""
    from medvideocap.media.decode import DecodeError, even_frames

    try:
        frames = even_frames(Path(path), n, backend="torchcodec", name=str(path))
    except DecodeError as exc:
        raise MediaError(str(exc)) from exc
    images = [_resize(f.permute(1, 2, 0).contiguous().numpy(), max_side) for f in frames.data]
    return Frames(images, [float(t) for t in frames.pts])


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


def run_ffmpeg(args: list[str], *, what: str, output: Path | None = None) -> None:
    """Run ffmpeg on ``args``; :class:`MediaError` naming ``what`` when it fails.

    A full disk, a used-up quota or a read-only folder is a
    :class:`~medvideocap.disk.ResourceError` naming ``output``, even when ffmpeg exits 0: ffmpeg 5
    reports a trailer it could not write for lack of space and still exits 0, leaving a cut-off file."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-y", "-v", "error", *args], capture_output=True, text=True
    )
    code = errno_in_text(proc.stderr)
    if code is not None:
        raise ResourceError.at(code, output or what)
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
            [*args, *BITEXACT, "-movflags", "+faststart", str(tmp)],
            what=f"{src} [{start:.2f}s-{end:.2f}s]",
            output=dest,
        )
    return dest


@dataclass(frozen=True)
class Crop:
    """The picture area ffmpeg's ``cropdetect`` found inside a frame of ``width`` x ``height``."""

    w: int
    h: int
    x: int
    y: int
    width: int
    height: int

    @property
    def bars(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) bar sizes in pixels."""
        return self.y, self.height - self.y - self.h, self.x, self.width - self.x - self.w

    @property
    def fraction(self) -> float:
        """Share of the frame outside the picture area."""
        return 1.0 - (self.w * self.h) / float(self.width * self.height)


_CROP = re.compile(r"crop=(-?\d+):(-?\d+):(-?\d+):(-?\d+)")


def cropdetect(path: str | Path, *, limit: float = 24.0, fps: float = 2.0) -> Crop:
    """Letterbox/pillarbox detection by ffmpeg's own ``cropdetect`` filter.

    ``limit`` is the black level on the 0-255 scale. ``reset=0`` makes the filter grow one box over
    every sampled frame, so the final box is the area where anything bright ever appeared: a dark
    scene inside the picture does not shrink it, a bar never shows content. ``round=2`` keeps the bars
    exact (the filter rounds to 16 px by default). A clip that is dark everywhere has no bars."""
    from medvideocap.media.probe import probe

    info = probe(path, name=str(path))
    graph = f"fps={fps:g},cropdetect=limit={limit / 255.0:.6f}:round=2:skip=0:reset=0"
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", "-i", str(path)]
        + ["-map", "0:v:0", "-vf", graph, "-f", "null", "-"],
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0:
        raise MediaError(f"{path}: ffmpeg cropdetect failed ({proc.stderr.strip()[-400:]})")
    found = _CROP.findall(proc.stderr)
    whole = Crop(info.width, info.height, 0, 0, info.width, info.height)
    if not found:
        return whole
    w, h, x, y = (int(v) for v in found[-1])
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > info.width or y + h > info.height:
        return whole
    return Crop(w, h, x, y, info.width, info.height)
