"""Evenly spaced frames of a clip, the captioner's view of a video (the paper shows GPT-4o 8 of them).

Which instants count as "evenly spaced" is the project's one rule
(:func:`medvideocap.media.frames.even_times`); the frame nearest each instant is found by its real
timestamp through :mod:`medvideocap.media.decode` (torchcodec's played-at lookup, or PyAV's packet times
where torchcodec is not installed), so variable-frame-rate clips are sampled at the right moments.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image


class FrameError(ValueError):
    """A clip that yields no frames; the message names it."""


def _backend() -> str:
    return "torchcodec" if importlib.util.find_spec("torchcodec") is not None else "pyav"


def sample_frames(video: bytes | Path, n: int = 8) -> tuple[list[Image.Image], list[float]]:
    """``n`` RGB frames at evenly spaced times and their timestamps in seconds.

    Each image also carries its timestamp in ``image.info["timestamp"]`` so a captioner handed only the
    images can still record which moments it saw. Short clips with fewer than ``n`` frames give fewer.
    """
    from medvideocap.media.decode import DecodeError, even_frames

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    name = str(video) if isinstance(video, Path) else f"<{len(video)} bytes>"
    try:
        frames = even_frames(video, n, backend=_backend(), name=name)
    except DecodeError as exc:
        raise FrameError(f"{name}: cannot decode: {exc}") from exc
    images = []
    times = [round(float(t), 4) for t in frames.pts]
    for data, t in zip(frames.data, times, strict=True):
        img = Image.fromarray(data.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
        img.info["timestamp"] = t
        images.append(img)
    if not images:
        raise FrameError(f"{name}: no decodable frames")
    return images, times
