"""Evenly spaced frames of a clip, the captioner's view of a video (the paper shows GPT-4o 8 of them)."""

from __future__ import annotations

import io
from pathlib import Path

import av
from PIL import Image


class FrameError(ValueError):
    """A clip that yields no frames; the message names it."""


def _targets(duration: float, n: int) -> list[float]:
    # Centres of n equal slices: never the very first frame (often a fade) nor past the end.
    return [(i + 0.5) * duration / n for i in range(n)]


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def sample_frames(video: bytes | Path, n: int = 8) -> tuple[list[Image.Image], list[float]]:
    """``n`` RGB frames at evenly spaced times and their timestamps in seconds.

    Each image also carries its timestamp in ``image.info["timestamp"]`` so a captioner handed only the
    images can still record which moments it saw. Short clips with fewer than ``n`` frames give fewer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    name = str(video) if isinstance(video, Path) else f"<{len(video)} bytes>"
    src = str(video) if isinstance(video, Path) else io.BytesIO(video)
    try:
        with av.open(src, mode="r") as container:
            if not container.streams.video:
                raise FrameError(f"{name}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            duration = _duration(container, stream)
            if duration is None or duration <= 0:
                times = [
                    float(f.time) for f in container.decode(stream) if f.time is not None
                ]  # unknown length: count first, then decode again
                duration = (max(times) + 1e-3) if times else 0.0
                container.seek(0)
            targets = _targets(duration, n)
            chosen: list[tuple[float, Image.Image]] = []
            prev = None
            k = 0
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else 0.0
                while k < len(targets) and t >= targets[k]:
                    # The frame nearest the target: this one or the one before it.
                    pick = prev if prev is not None and targets[k] - prev[0] <= t - targets[k] else (t, frame)
                    if not chosen or chosen[-1][0] != pick[0]:
                        chosen.append((pick[0], pick[1].to_image()))
                    k += 1
                prev = (t, frame)
                if k == len(targets):
                    break
            if k < len(targets) and prev is not None and (not chosen or chosen[-1][0] != prev[0]):
                chosen.append((prev[0], prev[1].to_image()))
    except av.FFmpegError as exc:
        raise FrameError(f"{name}: cannot decode: {exc}") from exc
    if not chosen:
        raise FrameError(f"{name}: no decodable frames")
    images = []
    for t, img in chosen:
        img = img.convert("RGB")
        img.info["timestamp"] = round(t, 4)
        images.append(img)
    return images, [round(t, 4) for t, _ in chosen]
