"""What flows between build stages: a :class:`Sample` in, the same sample (or clips of it) or a
:class:`Reject` out.

Samples are plain data that serialise to JSON (``to_dict``/``from_dict``), so the Ray engine can move
them between stage tasks; decoded frames are a per-process cache, never serialised.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from medvideocap.media.ffmpeg import Frames, sample_at_fps, sample_even


@dataclass
class Reject:
    """A stage's verdict that a sample leaves the build; ``code`` groups reasons in the funnel."""

    stage: str
    code: str
    detail: str
    scores: dict[str, float] = field(default_factory=dict)
    sample: Sample | None = None  # the clip it concerns when not the sample the stage was given

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass
class Sample:
    """One input video, or after the split stage one clip of it."""

    input: str  # path relative to the source folder: the stable identity of the input
    path: str  # absolute path of the input file
    key: str  # id base derived from ``input`` (unique within a build)
    meta: dict[str, Any] = field(default_factory=dict)  # sidecar metadata row
    index: int = 0  # clip index within the input
    total: int = 1  # clips (kept or rejected) this input produced; 1 before splitting
    clip: str | None = None  # path of the cut clip (None until the split stage)
    start: float | None = None
    end: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # probe facts of ``clip`` (or of the input)
    scores: dict[str, float] = field(default_factory=dict)  # Scores fields and other named scores
    camera_motion: str | None = None
    category: str | None = None
    captions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage (benchmarks)

    @property
    def clip_id(self) -> str:
        return f"{self.key}-{self.index:03d}"

    @property
    def media(self) -> str:
        """The file stages look at: the cut clip once there is one, else the input."""
        return self.clip or self.path

    def frames(self, fps: float, max_side: int | None = 256) -> Frames:
        """Decoded frames at ``fps``, cached per process for the stages that follow."""
        key = ("fps", *_stamp(self.media), fps, max_side)
        return _cached(key, lambda: sample_at_fps(self.media, fps, max_side=max_side))

    def even_frames(self, n: int, max_side: int | None = None) -> Frames:
        """``n`` evenly spread frames (cached like :meth:`frames`)."""
        key = ("even", *_stamp(self.media), n, max_side)
        return _cached(key, lambda: sample_even(self.media, n, max_side=max_side))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        return cls(**data)


def _stamp(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, st.st_size, st.st_mtime_ns


_FRAME_CACHE: dict[tuple[Any, ...], Frames] = {}


def _cached(key: tuple[Any, ...], make: Any) -> Frames:
    """A tiny per-process cache: the stages of one clip share decodes; other clips evict them."""
    if key not in _FRAME_CACHE:
        if len(_FRAME_CACHE) >= 4:
            _FRAME_CACHE.pop(next(iter(_FRAME_CACHE)))
        _FRAME_CACHE[key] = make()
    return _FRAME_CACHE[key]
