"""One frame-access interface over torchcodec, decord and PyAV.

The loader asks for frames by index (or by timestamp) and gets ``uint8`` tensors ``(T, C, H, W)`` plus
the presentation time of every frame it got, whichever library decoded them. Keeping the three behind
one interface lets a user switch backend with one argument when one of them misbehaves on their
platform (decord leaks and deadlocks after fork on some systems; torchcodec needs system FFmpeg).

Decoders and file handles are cached per worker process and keyed by pid: an object created before a
``DataLoader`` forks its workers is never used after the fork, because FFmpeg contexts and file offsets
shared across a fork are the classic cause of hangs and garbage frames.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medvideocap.errors import DataError
from medvideocap.handles import PerProcessCache

Backend = Literal["torchcodec", "decord", "pyav"]
BACKENDS: tuple[str, ...] = ("torchcodec", "decord", "pyav")

VideoInput = str | Path | bytes


class DecodeError(DataError, RuntimeError):
    """A clip could not be decoded; the message names the clip and the reason."""


DATA_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, OSError, EOFError)
"""What the decode libraries raise about the *data* (torchcodec's C++ errors arrive as RuntimeError or
ValueError, PyAV's ``av.error.*`` are also ValueError/OSError, a cut-off file gives EOFError or OSError):
only these become a :class:`DecodeError`. Each decoder adds its library's own base class
(:attr:`Decoder.data_errors`). A ``TypeError``, ``AttributeError``, ``NameError`` or ``KeyError`` is a
bug in the calling code and propagates as it is, so a bug never reads as "clip skipped"."""

BUGS: tuple[type[Exception], ...] = (NotImplementedError, RecursionError)
"""RuntimeError subclasses that are never about the data."""


class TimestampToleranceError(DecodeError):
    """A frame decoded for a requested timestamp lies further from it than the tolerance allows."""


@dataclass
class Frames:
    """Decoded frames: ``data`` is ``uint8 (T, C, H, W)``, ``pts`` the seconds each frame is shown."""

    data: torch.Tensor
    pts: torch.Tensor


class Decoder:
    """Random frame access to one clip. Subclasses fill the metadata and implement ``_decode``."""

    backend: str = ""
    data_errors: tuple[type[Exception], ...] = DATA_ERRORS
    """The exceptions of this backend that mean bad data (see :data:`DATA_ERRORS`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.num_frames = 0
        self.fps = 0.0
        self.width = 0
        self.height = 0
        self.start = 0.0
        self.end = 0.0  # when the last frame stops being shown (its pts + its duration)

    @property
    def duration(self) -> float:
        if self.end > self.start:
            return self.end - self.start
        return self.num_frames / self.fps if self.fps else 0.0

    def frames_at(self, indices: Sequence[int]) -> Frames:
        """Frames at presentation-order ``indices`` (repeats and any order allowed)."""
        idx = [int(i) for i in indices]
        if not idx:
            raise DecodeError(f"{self.name}: no frame indices requested")
        bad = [i for i in idx if i < 0 or i >= self.num_frames]
        if bad:
            raise DecodeError(
                f"{self.name}: frame indices {bad[:5]} out of range, the clip has {self.num_frames} frames"
            )
        unique = sorted(set(idx))
        try:
            data, pts = self._decode(unique)
        except (DecodeError, NotImplementedError, RecursionError):  # ours, or bugs (BUGS)
            raise
        except self.data_errors as exc:  # each backend raises its own types; name the clip in one type
            raise DecodeError(f"{self.name}: {self.backend} failed to decode: {exc}") from exc
        if data.shape[0] != len(unique):
            raise DecodeError(
                f"{self.name}: {self.backend} returned {data.shape[0]} frames for {len(unique)} indices "
                "(truncated file?)"
            )
        if unique != idx:
            pos = torch.tensor([unique.index(i) for i in idx])
            data, pts = data[pos], pts[pos]
        return Frames(data=data, pts=pts)

    def frames_played_at(self, seconds: Sequence[float]) -> Frames:
        """The frames on screen at ``seconds`` (pts <= t < next pts), from the real timestamps of the
        file, so a variable-frame-rate clip gives the right frames (no ``t * average_fps``)."""
        times = [float(t) for t in seconds]
        if not times:
            raise DecodeError(f"{self.name}: no timestamps requested")
        outside = [t for t in times if not self.start - 1e-6 <= t < self.end + 1e-6]
        if outside:
            raise TimestampToleranceError(
                f"{self.name}: asked for t={outside[0]:.4f}s, the clip spans {self.start:.3f}-{self.end:.3f}s"
            )
        clamped = [min(max(t, self.start), self.end - 1e-6) for t in times]
        try:
            frames, _ = self._played(clamped)
        except (DecodeError, NotImplementedError, RecursionError):  # ours, or bugs (BUGS)
            raise
        except self.data_errors as exc:
            raise DecodeError(f"{self.name}: {self.backend} failed to decode: {exc}") from exc
        return frames

    def frames_at_times(self, seconds: Sequence[float], *, tolerance_s: float | None = None) -> Frames:
        """Frames nearest to ``seconds``; a frame further than ``tolerance_s`` from its request is an error.

        Like LeRobot's check: a request past the end of the clip must fail loudly instead of silently
        returning some other frame. The default tolerance is half the display time of the frame on
        screen at ``t`` (plus rounding slack), i.e. "the nearest frame really is that instant", which
        on a variable-frame-rate file is that frame's own period, not the average one. Frames are found by their played-at
        times (:meth:`frames_played_at`): the frame shown at ``t``, or the next one when ``t`` lies in
        the later half of its display time, which is right on variable-frame-rate files too.
        """
        times = [float(s) for s in seconds]
        if not times:
            raise DecodeError(f"{self.name}: no timestamps requested")
        inside = [min(max(t, self.start), self.end - 1e-6) for t in times]
        try:
            played, durations = self._played(inside)
            # half the display time of the frame on screen at t: the nearest frame is never further
            tolerance = [0.5 * float(d) + 1e-4 if tolerance_s is None else tolerance_s for d in durations]
            later = [
                t - float(p) > float(d) / 2 for t, p, d in zip(inside, played.pts, durations, strict=True)
            ]
            nxt = [float(p) + float(d) + 1e-6 for p, d in zip(played.pts, durations, strict=True)]
            # the next frame may start at or after the clip's end time (a last frame of zero duration)
            last = [lt and n >= self.end - 1e-6 for lt, n in zip(later, nxt, strict=True)]
            if any(later):
                pick = [
                    n if lt and not ls else t for t, n, lt, ls in zip(inside, nxt, later, last, strict=True)
                ]
                played, _ = self._played(pick)
            if any(last):
                final = self.frames_at([self.num_frames - 1])
                pos = torch.tensor([i for i, ls in enumerate(last) if ls])
                played.data[pos] = final.data[0]
                played.pts[pos] = final.pts[0]
        except (DecodeError, NotImplementedError, RecursionError):  # ours, or bugs (BUGS)
            raise
        except self.data_errors as exc:
            raise DecodeError(f"{self.name}: {self.backend} failed to decode: {exc}") from exc
        frames = played
        dist = (frames.pts - torch.tensor(times, dtype=frames.pts.dtype)).abs()
        excess = dist - torch.tensor(tolerance, dtype=dist.dtype)
        worst = int(excess.argmax())
        if float(excess[worst]) > 0:
            raise TimestampToleranceError(
                f"{self.name}: asked for t={times[worst]:.4f}s, nearest frame is at "
                f"{float(frames.pts[worst]):.4f}s ({float(dist[worst]):.4f}s away, tolerance "
                f"{tolerance[worst]:.4f}s); "
                f"the clip spans {self.start:.3f}-{self.end:.3f}s"
            )
        return frames

    def _played(self, seconds: list[float]) -> tuple[Frames, torch.Tensor]:
        """Frames shown at ``seconds`` (inside the clip) and their display durations, from the
        presentation times in ``self._starts``; torchcodec answers it natively instead."""
        starts: list[float] = self._starts  # type: ignore[attr-defined]
        idx = [min(max(bisect.bisect_right(starts, t + 1e-9) - 1, 0), self.num_frames - 1) for t in seconds]
        ends = [*starts[1:], self.end]
        return self.frames_at(idx), torch.tensor([ends[i] - starts[i] for i in idx], dtype=torch.float64)

    def close(self) -> None:  # noqa: B027 - optional hook, most decoders free on garbage collection
        """Release native resources early."""

    def _decode(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class TorchCodecDecoder(Decoder):
    """torchcodec's ``VideoDecoder`` in exact seek mode (frame index == presentation order)."""

    backend = "torchcodec"

    def __init__(self, source: VideoInput, *, name: str, threads: int = 1, transforms: Any = None) -> None:
        super().__init__(name)
        from torchcodec.decoders import VideoDecoder

        src = str(source) if isinstance(source, Path) else source
        try:
            self._dec = VideoDecoder(
                src,
                seek_mode="exact",
                num_ffmpeg_threads=threads,
                dimension_order="NCHW",
                transforms=transforms,
            )
        except BUGS:
            raise
        except self.data_errors as exc:
            raise DecodeError(f"{name}: torchcodec cannot open it: {exc}") from exc
        meta = self._dec.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0.0)
        self.width, self.height = int(meta.width or 0), int(meta.height or 0)
        self.start = float(meta.begin_stream_seconds or 0.0)
        self.end = float(meta.end_stream_seconds or 0.0)
        if self.num_frames <= 0 or self.fps <= 0:
            raise DecodeError(f"{name}: torchcodec found no decodable video frames")
        if self.end <= self.start:
            self.end = self.start + self.num_frames / self.fps

    def _decode(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._dec.get_frames_at(indices)
        return batch.data, batch.pts_seconds.to(torch.float64)

    def _played(self, seconds: list[float]) -> tuple[Frames, torch.Tensor]:
        batch = self._dec.get_frames_played_at(seconds)
        frames = Frames(data=batch.data, pts=batch.pts_seconds.to(torch.float64))
        return frames, batch.duration_seconds.to(torch.float64)


class DecordDecoder(Decoder):
    """decord's ``VideoReader``; fast random access, but keep it inside the worker that made it."""

    backend = "decord"

    def __init__(self, source: VideoInput, *, name: str, threads: int = 1) -> None:
        super().__init__(name)
        import decord
        from decord._ffi.base import DECORDError

        self.data_errors = (*DATA_ERRORS, DECORDError)
        src: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        try:
            self._vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=threads)
        except BUGS:
            raise
        except self.data_errors as exc:
            raise DecodeError(f"{name}: decord cannot open it: {exc}") from exc
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        if self.num_frames <= 0 or self.fps <= 0:
            raise DecodeError(f"{name}: decord found no decodable video frames")
        first = self._vr[0].shape  # (H, W, C)
        self.height, self.width = int(first[0]), int(first[1])
        spans = np.asarray(self._vr.get_frame_timestamp(list(range(self.num_frames))), dtype=np.float64)
        self._starts = [float(v) for v in spans[:, 0]]
        self.start = self._starts[0]
        self.end = float(spans[-1, 1]) if spans[-1, 1] > spans[-1, 0] else self._starts[-1] + 1.0 / self.fps
        self._vr.seek(0)

    def _decode(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        arr = self._vr.get_batch(indices).asnumpy()
        pts = self._vr.get_frame_timestamp(indices)[:, 0]
        return torch.from_numpy(arr).permute(0, 3, 1, 2), torch.from_numpy(np.asarray(pts, dtype=np.float64))


class PyAVDecoder(Decoder):
    """PyAV: packets are indexed once (demux only) so an index maps to an exact pts; frames are then
    reached by seeking to the previous key frame and decoding forward, reusing the open decode run
    when the next wanted frame lies ahead of it without a key frame in between."""

    backend = "pyav"

    def __init__(self, source: VideoInput, *, name: str, threads: int = 1) -> None:
        super().__init__(name)
        import av

        self.data_errors = (*DATA_ERRORS, av.FFmpegError)
        self._src: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        try:
            self._container = av.open(self._src, mode="r")
            stream = self._container.streams.video[0]
        except IndexError as exc:  # no video stream in the container
            raise DecodeError(f"{name}: PyAV cannot open it: it has no video stream") from exc
        except BUGS:
            raise
        except self.data_errors as exc:
            raise DecodeError(f"{name}: PyAV cannot open it: {exc}") from exc
        stream.thread_count = threads
        self._stream = stream
        pts: list[int] = []
        keys: list[int] = []
        durations: dict[int, int] = {}
        try:
            for packet in self._container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                durations[packet.pts] = int(packet.duration or 0)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except BUGS:
            raise
        except self.data_errors as exc:
            raise DecodeError(f"{name}: PyAV cannot read its packets: {exc}") from exc
        if not pts:
            raise DecodeError(f"{name}: PyAV found no video packets")
        self._pts = sorted(pts)
        self._keys = sorted(keys)
        self._tb = float(stream.time_base or 0)
        self.num_frames = len(self._pts)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = (
            float(rate) if rate else (self.num_frames - 1) / ((self._pts[-1] - self._pts[0]) * self._tb)
        )
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.start = self._pts[0] * self._tb
        self._starts = [p * self._tb for p in self._pts]
        # like torchcodec's end_stream_seconds_from_content: the latest pts + duration in the file
        self.end = max((p + durations.get(p, 0)) * self._tb for p in self._pts)
        self._run: Any = None
        self._last: int | None = None
        self._closed = False

    def _seek(self, target: int) -> None:
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self._run = self._container.decode(self._stream)
        self._last = None

    def _decode(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._closed:
            raise DecodeError(
                f"{self.name}: this PyAV decoder was closed (evicted from its cache); open it again"
            )
        out: list[np.ndarray] = []
        for i in indices:
            target = self._pts[i]
            last = self._last
            if (
                self._run is None
                or last is None
                or target <= last
                or bisect.bisect_right(self._keys, target) > bisect.bisect_right(self._keys, last)
            ):
                self._seek(target)
            found = None
            for frame in self._run:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    continue
                self._last = pts
                if pts >= target:
                    found = frame if pts == target else None
                    break
            if found is None:
                self._run = None
                raise DecodeError(f"{self.name}: PyAV could not decode frame {i} (pts {target}); truncated?")
            # threads=1: PyAV asks swscale for its automatic thread pool by default, and that
            # conversion hung a forked DataLoader worker (a faulthandler stack caught it here)
            out.append(found.to_ndarray(format="rgb24", threads=1))
        data = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        pts_s = torch.tensor([self._pts[i] * self._tb for i in indices], dtype=torch.float64)
        return data, pts_s

    def close(self) -> None:
        self._run = None
        self._closed = True
        self._container.close()


def even_frames(
    source: VideoInput, n: int, *, backend: str = "torchcodec", name: str | None = None
) -> Frames:
    """``n`` evenly spaced frames (:func:`medvideocap.media.frames.even_times`), each the frame nearest its
    instant by real timestamps; a clip with fewer frames than ``n`` gives each frame once."""
    from medvideocap.media.frames import even_times

    decoder = open_decoder(source, backend, name=name)
    try:
        times = even_times(decoder.start, decoder.end, n)
        frames = decoder.frames_at_times(times, tolerance_s=float("inf"))
    finally:
        decoder.close()
    keep = [i for i in range(len(times)) if i == 0 or float(frames.pts[i]) != float(frames.pts[i - 1])]
    if len(keep) < len(times):
        pos = torch.tensor(keep)
        frames = Frames(data=frames.data[pos], pts=frames.pts[pos])
    return frames


def all_frames(source: VideoInput, *, backend: str = "pyav", name: str | None = None) -> np.ndarray:
    """Every frame of a clip as ``uint8 (T, H, W, 3)``: how evaluation reads the short videos it made."""
    decoder = open_decoder(source, backend, name=name)
    try:
        frames = decoder.frames_at(range(decoder.num_frames)).data
    finally:
        decoder.close()
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def open_decoder(
    source: VideoInput,
    backend: str = "torchcodec",
    *,
    name: str | None = None,
    threads: int = 1,
    **options: Any,
) -> Decoder:
    """A decoder for a file path or the encoded bytes of a clip.

    ``threads`` is FFmpeg's per-decoder thread count; 1 is right inside DataLoader workers, where the
    parallelism comes from the workers themselves.
    """
    label = name or (str(source) if not isinstance(source, bytes) else f"<{len(source)} bytes>")
    if backend == "torchcodec":
        return TorchCodecDecoder(source, name=label, threads=threads, **options)
    if backend == "decord":
        return DecordDecoder(source, name=label, threads=threads)
    if backend in ("pyav", "av"):
        return PyAVDecoder(source, name=label, threads=threads)
    raise ValueError(f"unknown decode backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _close_decoder(decoder: Decoder) -> None:
    decoder.close()


class DecoderCache(PerProcessCache):
    """Decoders reused within one worker (a clip read twice is not re-opened)."""

    def __init__(self, maxsize: int = 4) -> None:
        super().__init__(maxsize, on_evict=_close_decoder)
