"""What flows between build stages: a :class:`Sample` in, the same sample (or clips of it) or a
:class:`Reject` out; and the frames the stages read, decoded once per clip (:class:`FrameStore`).

Samples are plain data that serialise to JSON (``to_dict``/``from_dict``), so any engine can move
them between processes; decoded frames are never serialised. The split stage does not write its
clips: a clip is a span of its input (``start``/``end``) with a pending ``cut``, the border stage may
add a ``crop``, and the clip file is written once, cut and cropped in one encode, when the clip is
kept (:func:`write_clip`) or a stage asks for the file itself (:attr:`Sample.media`). Stages that read
frames ask :meth:`Sample.view` instead, which decodes the span straight from the input.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.media.ffmpeg import FrameNeed, Frames, cut, iter_frames, read_views
from medvideocap.media.probe import probe


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
    crop: list[int] | None = None  # (w, h, x, y) to crop when the clip is written (border stage)
    pending_cut: dict[str, Any] | None = None  # (dest, copy, crf, preset) until the clip is written
    input_seconds: float | None = None  # the input's duration (probe stage): the real-time factor
    scan: dict[str, Any] = field(default_factory=dict)  # per later stage: its fold of the split's decode

    @property
    def clip_id(self) -> str:
        return f"{self.key}-{self.index:03d}"

    @property
    def deferred(self) -> bool:
        """A clip of its input whose file is not written yet (the split stage defers every cut)."""
        return self.clip is None and self.pending_cut is not None

    @property
    def media(self) -> str:
        """The clip's file: the cut clip (written now if still pending), else the input. Stages that
        read frames use :meth:`view` instead, which never writes a file."""
        if self.deferred:
            write_clip(self)
        return self.clip or self.path

    def view(self, need: FrameNeed) -> Frames:
        """The frames ``need`` describes, from the clip being processed: out of the pipeline's
        :class:`FrameStore` (one decode per clip for every stage) or, outside a pipeline run, decoded
        for this call."""
        store = _STORE.get()
        if store is not None:
            return store.get(self, need)
        return read_frames(self, [need])[need]

    def stream(self, need: FrameNeed) -> Iterator[tuple[float, np.ndarray]]:
        """(time, frame) pairs of ``need`` (a rate): the held frames when they fit
        :data:`FRAME_BUDGET`, else decoded one at a time (an hour-long input analysed without a split
        stage: memory stays flat whatever its length)."""
        if not self.deferred and need.count is None and not fitting(self, [need]):
            yield from iter_frames(
                self.clip or self.path, fps=need.fps, max_side=need.max_side, size=need.size
            )
            return
        frames = self.view(need)
        yield from zip(frames.times, frames.images, strict=True)

    def frames(self, fps: float, max_side: int | None = 256) -> Frames:
        """Frames about ``1/fps`` seconds apart (:meth:`view` of ``FrameNeed(fps=...)``)."""
        return self.view(FrameNeed(fps=fps, max_side=max_side))

    def even_frames(self, n: int, max_side: int | None = None) -> Frames:
        """``n`` evenly spread frames (:meth:`view` of ``FrameNeed(count=n)``)."""
        return self.view(FrameNeed(count=n, max_side=max_side))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        return cls(**data)


def source_key(sample: Sample) -> tuple[Any, ...]:
    """What identifies the pixels a sample's frames come from (file, span, crop)."""
    if sample.deferred:
        return (sample.path, sample.start, sample.end, tuple(sample.crop or ()))
    return (sample.clip or sample.path, None, None, ())


def read_frames(sample: Sample, needs: list[FrameNeed]) -> dict[FrameNeed, Frames]:
    """``needs`` from one decode of the sample's clip: its span of the input while the cut is pending
    (cropped as the clip will be), else its file."""
    if sample.deferred:
        assert sample.start is not None and sample.end is not None
        crop = tuple(sample.crop) if sample.crop else None
        return read_views(
            sample.path,
            needs,
            start=sample.start,
            end=sample.end,
            crop=crop,  # type: ignore[arg-type]
            name=f"{sample.input} clip {sample.index} ({sample.start:.2f}-{sample.end:.2f} s)",
        )
    duration = sample.info.get("duration")
    return read_views(
        sample.clip or sample.path, needs, duration=float(duration) if duration else None, name=sample.input
    )


def write_clip(sample: Sample) -> None:
    """Write a deferred clip: its span of the input, cropped if the border stage said so, in one
    ffmpeg call (stream copy when the split stage found the span on keyframes and nothing is
    cropped); then its real media facts. Seconds spent go to ``timings['encode']``."""
    plan = sample.pending_cut
    if plan is None or sample.start is None or sample.end is None:
        raise ValueError(f"{sample.clip_id}: no pending cut to write")
    t0 = time.perf_counter()
    copy = bool(plan["copy"]) and not sample.crop
    dest = Path(plan["dest"])
    crop = tuple(sample.crop) if sample.crop else None
    cut(
        sample.path,
        dest,
        start=sample.start,
        end=sample.end,
        copy=copy,
        crop=crop,  # type: ignore[arg-type]
        crf=int(plan["crf"]),
        preset=str(plan["preset"]),
    )
    sample.clip = str(dest)
    sample.pending_cut = None
    sample.info = probe(dest, name=f"{sample.input} clip {sample.index}", count_frames=True).as_dict()
    sample.extra["cut"] = "stream-copy" if copy else "re-encode"
    sample.timings["encode"] = round(sample.timings.get("encode", 0.0) + time.perf_counter() - t0, 6)


def fitting(sample: Sample, needs: list[FrameNeed], budget: int = 0) -> list[FrameNeed]:
    """The first of ``needs`` whose decoded frames, together, stay within ``budget`` bytes
    (:data:`FRAME_BUDGET` by default) for this sample's clip; [] when its size is unknown."""
    info = sample.info
    width, height = (
        (sample.crop[0], sample.crop[1]) if sample.crop else (info.get("width"), info.get("height"))
    )
    seconds = (
        (sample.end - sample.start)
        if sample.start is not None and sample.end is not None
        else info.get("duration")
    )
    if not (width and height and seconds):
        return []
    rate = float(info.get("fps") or 30.0)
    chosen, total = [], 0
    for need in needs:
        w, h = need.shape(int(width), int(height))
        size = need.frames_in(float(seconds), rate) * w * h * 3
        if total + size <= (budget or FRAME_BUDGET):
            chosen.append(need)
            total += size
    return chosen


_STORE: ContextVar[FrameStore | None] = ContextVar("medvideocap_frame_store", default=None)
FRAME_BUDGET = 256 << 20  # bytes of decoded frames one worker holds for the clip in hand, at most


class FrameStore:
    """The frames of the clip in hand, decoded once for every stage that declared what it reads.

    Lives for one :meth:`~medvideocap.build.pipeline.Pipeline.run_many` (``with FrameStore(needs):``).
    It keeps the clip in hand plus the clips the pipeline holds (:meth:`hold`) while they wait for a
    batched stage (:func:`~medvideocap.build.stages.batcher`): asking for another clip's frames drops
    every clip not held, so memory depends on the clip length and the batch, never on the input's.
    The first request for a clip decodes, in one pass, the asked need plus every declared need whose
    frames fit :data:`FRAME_BUDGET` (a need that does not fit, e.g. every frame of a long unsplit
    input, is decoded on its own when asked). The decode time is added to the sample's
    ``timings['decode']`` (the pipeline keeps it out of the stage that happened to ask first)."""

    def __init__(self, needs: list[FrameNeed], *, budget: int = FRAME_BUDGET) -> None:
        self.needs = list(dict.fromkeys(needs))
        self.budget = budget
        self._views: dict[tuple[Any, ...], dict[FrameNeed, Frames]] = {}
        self._held: dict[int, tuple[Any, ...]] = {}  # id(sample) -> its key, while it waits for a batch
        self._token: Any = None

    def __enter__(self) -> FrameStore:
        self._token = _STORE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _STORE.reset(self._token)
        self._views = {}
        self._held = {}

    def _entry(self, key: tuple[Any, ...]) -> dict[FrameNeed, Frames]:
        if key not in self._views:  # a new clip: drop the frames of every clip nobody holds
            held = set(self._held.values())
            self._views = {k: v for k, v in self._views.items() if k in held}
            self._views[key] = {}
        return self._views[key]

    def get(self, sample: Sample, need: FrameNeed) -> Frames:
        views = self._entry(source_key(sample))
        if need not in views:
            self._decode(sample, views, need)
        return views[need]

    def _decode(self, sample: Sample, views: dict[FrameNeed, Frames], need: FrameNeed) -> None:
        rest = [n for n in self.needs if n != need and n not in views]
        wanted = [need, *fitting(sample, rest, self.budget)]
        t0 = time.perf_counter()
        views.update(read_frames(sample, wanted))
        spent = time.perf_counter() - t0
        sample.timings["decode"] = round(sample.timings.get("decode", 0.0) + spent, 6)

    def hold(self, sample: Sample, needs: list[FrameNeed]) -> None:
        """Keep ``sample``'s frames until :meth:`release`, while it waits for a batched stage and then
        goes through the stages after it; ``needs`` (the batched stage's) are decoded now if not yet."""
        key = source_key(sample)
        views = self._entry(key)
        self._held[id(sample)] = key
        for need in needs:
            if need not in views:
                self._decode(sample, views, need)

    def release(self, sample: Sample) -> None:
        """``sample`` left the pipeline (kept or rejected): its frames may go."""
        key = self._held.pop(id(sample), None)
        if key is not None and key not in self._held.values():
            self._views.pop(key, None)

    def held_bytes(self) -> int:
        """Bytes of decoded frames kept for held clips."""
        keys = set(self._held.values())
        return sum(
            sum(int(image.nbytes) for image in frames.images)
            for key in keys
            for frames in self._views.get(key, {}).values()
        )
