"""Frame sampling and ffmpeg cutting shared by the build stages.

Frames are decoded with PyAV (bundled FFmpeg, deterministic) and downscaled with OpenCV; clips are cut
with the system ffmpeg through argument lists. Every encode uses bitexact muxing and single-threaded
x264, so the same cut of the same input gives the same bytes on every run, engine and worker count —
which is what lets an interrupted build resume into exactly the dataset an uninterrupted one writes.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from medvideocap.atomic import atomic_path
from medvideocap.disk import ResourceError, errno_in_text
from medvideocap.errors import DataError

BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-map_chapters", "-1"]


class MediaError(DataError, RuntimeError):
    """ffmpeg or the decoder failed on a file; the message names the file and ffmpeg's complaint.

    A :class:`~medvideocap.errors.DataError`: the build records the clip as rejected and goes on (a
    bug in our code, any other exception, stops the build with its traceback)."""


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


Tap = Callable[[float, Any], None]
_THREADS: list[int] = [0]  # decoder threads per stream; 0: FFmpeg's choice (one per core)


def set_decode_threads(count: int) -> None:
    """Decoder threads for every stream this process opens from now on (0: one per core). A build
    with N worker processes gives each ``cores // N``, so N workers do not each start a thread per
    core and fight over them."""
    _THREADS[0] = max(0, int(count))


def iter_frames(
    path: str | Path,
    *,
    fps: float | None = None,
    max_side: int | None = 256,
    size: tuple[int, int] | None = None,
    tap: Tap | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Decoded RGB frames with their times (seconds from the first frame), one at a time.

    Every frame, or with ``fps`` the first frame at or after each ``1/fps`` tick. Frames are scaled by
    the decoder (area filter) to ``size`` = (width, height), or so the longer side is at most
    ``max_side``. ``tap(time, av_frame)`` sees every decoded frame, before the ``fps`` selection and
    any conversion: how a fold over the whole input (the black-border stage's bars) rides along with
    the shot detector's decode instead of decoding the input again. A generator on purpose: an analysis
    that folds frames into running sums holds one frame, so a worker's memory does not grow with the
    length of the video."""
    step = 1.0 / fps if fps else 0.0
    next_tick = 0.0
    scaler = VideoReformatter()  # one scaler context for the pass: a new one per frame cost ~2% of it
    for t, frame in decoded(path):
        try:
            if tap is not None:
                tap(t, frame)
            if step:
                if t + 1e-6 < next_tick:
                    continue
                while next_tick <= t + 1e-6:
                    next_tick += step
            w, h = size or _scaled(frame.width, frame.height, max_side)
            if (w, h) == (frame.width, frame.height):
                image = frame.to_ndarray(format="rgb24")
            else:
                image = scaler.reformat(
                    frame, width=w, height=h, format="rgb24", interpolation="AREA"
                ).to_ndarray()
        except av.error.FFmpegError as exc:  # a frame the scaler cannot convert: data, not a bug
            raise MediaError(
                f"{path}: cannot convert its frame at {t:.2f} s ({type(exc).__name__}: {exc})"
            ) from exc
        yield t, image


def decoded(path: str | Path) -> Iterator[tuple[float, Any]]:
    """(seconds from the first frame, PyAV frame) for every frame of ``path``'s first video stream,
    decoded front to back; a damaged file is a :class:`MediaError` naming it."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = _THREADS[0]
            t0: float | None = None
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                t0 = float(frame.time) if t0 is None else t0
                yield float(frame.time) - t0, frame
    except av.error.FFmpegError as exc:  # a truncated or damaged file: data, not a bug
        raise MediaError(f"{path}: cannot decode it ({type(exc).__name__}: {exc})") from exc


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
    nearest its instant by real timestamps, found in one front-to-back decode (:func:`read_views`):
    the same frames torchcodec's played-at lookup picks, without a seek per instant."""
    need = FrameNeed(count=n, max_side=max_side)
    return read_views(path, [need])[need]


@dataclass(frozen=True)
class FrameNeed:
    """The frames one build stage reads from a clip, so that one decode can serve every stage.

    ``count`` evenly spaced frames (the project's one rule,
    :func:`~medvideocap.media.frames.even_times`, each the frame nearest its instant: converted to
    RGB at full size, then area-downscaled by OpenCV, as :func:`sample_even` gives them), or with
    ``fps`` the first frame at or after each ``1/fps`` tick (scaled by the decoder's area filter, as
    :func:`iter_frames` gives them), or every frame when neither is set. Scaled so the longer side is at
    most ``max_side``, or to ``size`` = (width, height)."""

    count: int | None = None
    fps: float | None = None
    max_side: int | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.count is not None and self.fps is not None:
            raise ValueError("FrameNeed: give count or fps, not both")
        if self.count is not None and self.count < 1:
            raise ValueError(f"FrameNeed.count must be >= 1, got {self.count}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"FrameNeed.fps must be positive, got {self.fps}")

    def frames_in(self, seconds: float, rate: float) -> int:
        """How many frames this need holds for a clip of ``seconds`` at ``rate`` frames per second."""
        if self.count is not None:
            return self.count
        per_second = min(self.fps, rate) if self.fps is not None else rate
        return int(math.ceil(max(seconds, 0.0) * per_second)) + 1

    def shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of this need's frames for a clip of ``width`` x ``height``."""
        return self.size or _scaled(width, height, self.max_side)


def read_views(
    path: str | Path,
    needs: list[FrameNeed],
    *,
    start: float = 0.0,
    end: float | None = None,
    duration: float | None = None,
    crop: tuple[int, int, int, int] | None = None,
    name: str | None = None,
) -> dict[FrameNeed, Frames]:
    """Every need's frames from ONE sequential decode of ``path`` (or of its span ``start``-``end``
    seconds, as a cut of that span would hold it: frames shown from ``start`` up to ``end``), cropped
    to ``crop`` = (w, h, x, y) first if given. Times are seconds from the span's first frame.

    Why one pass: the build's frame-reading stages (borders, OCR, technical score, measures, camera
    motion, model scores) used to open and decode each clip again, and exact seeks to a few instants
    decode from the last keyframe each time, which in a re-encoded clip is the clip's start. One
    front-to-back decode that hands each stage its selection costs one decode whatever the stages ask.
    ``duration`` (the span's length) places the evenly spaced instants; probed when not given."""
    from medvideocap.media.frames import even_times

    label = name or str(path)
    needs = list(dict.fromkeys(needs))
    span = (end - start) if end is not None else duration
    if span is None and any(n.count for n in needs):
        from medvideocap.media.probe import probe

        span = probe(path, name=label).duration
    instants = {n: list(even_times(0.0, float(span or 0.0), n.count)) for n in needs if n.count}
    ticks = {n: 0.0 for n in needs if n.fps}
    every = [n for n in needs if n.count is None and n.fps is None]
    picked: dict[FrameNeed, list[tuple[float, np.ndarray]]] = {n: [] for n in needs}
    converted: dict[tuple[int, str, tuple[int, int]], np.ndarray] = {}
    scalers: dict[tuple[int, int], VideoReformatter] = {}  # one per size: its context is reused

    def convert(frame: Any, key: int, need: FrameNeed) -> np.ndarray:
        h0, w0 = (crop[1], crop[0]) if crop else (frame.height, frame.width)
        size = need.shape(w0, h0)
        how = "even" if need.count else "rate"
        if (key, how, size) not in converted:
            if crop is None and how == "rate":
                if size == (frame.width, frame.height):
                    image = frame.to_ndarray(format="rgb24")
                else:
                    scaler = scalers.setdefault(size, VideoReformatter())
                    image = scaler.reformat(
                        frame, width=size[0], height=size[1], format="rgb24", interpolation="AREA"
                    ).to_ndarray()
            else:
                image = frame.to_ndarray(format="rgb24")
                if crop is not None:
                    w, h, x, y = crop
                    image = np.ascontiguousarray(image[y : y + h, x : x + w])
                if image.shape[1::-1] != size:
                    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            converted[(key, how, size)] = image
        return converted[(key, how, size)]

    def take(need: FrameNeed, t: float, frame: Any, key: int) -> None:
        chosen = picked[need]
        if need.count and chosen and chosen[-1][0] == t:  # two instants nearest one frame: once
            return
        chosen.append((t, convert(frame, key, need)))

    prev: tuple[float, Any, int] | None = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = _THREADS[0]
            tb = float(stream.time_base or 0)
            origin = float(stream.start_time) * tb if stream.start_time else 0.0
            if start > 0 and tb:
                container.seek(int((origin + start) / tb), stream=stream)
            t0: float | None = None
            n = 0
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                rel = float(frame.time) - origin
                if rel < start - 1e-6:
                    continue
                if end is not None and rel >= end - 1e-6:
                    break
                t0 = rel if t0 is None else t0
                t = rel - t0
                n += 1
                for need, at in instants.items():
                    while at and at[0] <= t + 1e-9:
                        instant = at.pop(0)
                        if prev is not None and instant - prev[0] <= t - instant:
                            take(need, prev[0], prev[1], prev[2])
                        else:
                            take(need, t, frame, n)
                for need in ticks:
                    if t + 1e-6 >= ticks[need]:
                        while ticks[need] <= t + 1e-6:
                            ticks[need] += 1.0 / float(need.fps or 1.0)
                        take(need, t, frame, n)
                for need in every:
                    take(need, t, frame, n)
                for key in [k for k in converted if k[0] < n - 1]:
                    del converted[key]
                prev = (t, frame, n)
    except av.error.FFmpegError as exc:
        raise MediaError(f"{label}: cannot decode it ({type(exc).__name__}: {exc})") from exc
    if prev is None:
        raise MediaError(
            f"{label}: no decodable video frames" + (f" in {start:.2f}-{end:.2f} s" if end else "")
        )
    for need, at in instants.items():
        if at:
            take(need, prev[0], prev[1], prev[2])
    return {need: Frames([im for _, im in chosen], [t for t, _ in chosen]) for need, chosen in picked.items()}


def keyframe_times(path: str | Path) -> list[float]:
    """Presentation times of the key frames (cuts there can be stream-copied)."""
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tb = float(stream.time_base or 0)
            start = float(stream.start_time) * tb if stream.start_time else 0.0
            for packet in container.demux(stream):
                if packet.is_keyframe and packet.pts is not None:
                    times.append(float(packet.pts) * tb - start)
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path}: cannot read its packets ({type(exc).__name__}: {exc})") from exc
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
_PLANAR_8BIT = {
    "yuv420p",
    "yuvj420p",
    "yuv422p",
    "yuvj422p",
    "yuv444p",
    "yuvj444p",
    "yuv440p",
    "nv12",
    "nv21",
}


def luma(frame: Any) -> np.ndarray:
    """The luma plane of a decoded PyAV frame as an (H, W) uint8 view (what ``cropdetect`` reads),
    without a conversion for the 8-bit YUV formats; other formats are converted to 8-bit grey."""
    if frame.format.name in _PLANAR_8BIT or frame.format.name == "gray":
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        return rows[: frame.height, : frame.width]
    return frame.to_ndarray(format="gray")


def crop_of_extent(x1: int, y1: int, x2: int, y2: int, width: int, height: int) -> Crop:
    """The box ``cropdetect=round=2`` prints for the bright extent ``x1..x2`` x ``y1..y2`` (first and
    last columns and rows whose mean luma exceeds the limit in some frame) of a ``width`` x
    ``height`` frame: x and y rounded up to even, width and height down to even. A frame dark
    everywhere (no extent) has no bars: the whole frame."""
    x, y = (x1 + 1) & ~1, (y1 + 1) & ~1
    w, h = x2 - x + 1, y2 - y + 1
    w, h = w - w % 2, h - h % 2
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        return Crop(width, height, 0, 0, width, height)
    return Crop(w, h, x, y, width, height)


def cropdetect(
    path: str | Path,
    *,
    limit: float = 24.0,
    fps: float = 2.0,
    start: float | None = None,
    end: float | None = None,
    name: str | None = None,
) -> Crop:
    """Letterbox/pillarbox detection by ffmpeg's own ``cropdetect`` filter.

    ``limit`` is the black level on the 0-255 scale. ``reset=0`` makes the filter grow one box over
    every sampled frame, so the final box is the area where anything bright ever appeared: a dark
    scene inside the picture does not shrink it, a bar never shows content. ``round=2`` keeps the bars
    exact (the filter rounds to 16 px by default). A clip that is dark everywhere has no bars.
    ``start``/``end`` (seconds) look at that span of ``path`` only: a clip's bars are found in its
    input before the clip is cut, so a letterboxed clip is encoded once, already cropped."""
    from medvideocap.media.probe import probe

    info = probe(path, name=name or str(path))
    graph = f"fps={fps:g},cropdetect=limit={limit / 255.0:.6f}:round=2:skip=0:reset=0"
    span = [] if start is None else ["-ss", f"{start:.6f}"]
    length = [] if end is None else ["-t", f"{end - (start or 0.0):.6f}"]
    # -ss and -t both before -i: an output -t stops the muxer, not the decoder, and the fps filter
    # reads the frame after the span to place its last tick (a bar-less next shot undid the bars)
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", *span, *length, "-i", str(path)]
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
