"""Media facts of a video file (duration, fps, frame count, size, rotation, codec, bit rate) via PyAV.

PyAV bundles its own FFmpeg, so probing works without system FFmpeg and on any seekable binary file
object (a zip member, a tar member, bytes), which is how the upstream reader and the builder use it.

Rotation. Phones store portrait video as landscape frames plus a display matrix. PyAV 18 exposes the
matrix only on decoded frames (``VideoFrame.rotation``), so the probe decodes the first frame; a
stream whose first frame does not decode is not a usable video anyway. ``rotation`` follows the
display matrix (ffprobe's ``rotation``), counterclockwise, normalised to 0/90/180/270."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av

from medvideocap.errors import DataError


class ProbeError(DataError, ValueError):
    """The input is not a decodable video; the message names it and says why."""


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    fps: float
    num_frames: int | None
    width: int
    height: int
    codec: str
    bit_rate: int | None
    has_audio: bool = False
    rotation: int = 0
    """Display rotation, degrees counterclockwise (0, 90, 180, 270); ``width``/``height`` are stored size."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of the upright picture."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


def probe(
    src: str | Path | bytes | IO[bytes], *, name: str | None = None, count_frames: bool = False
) -> MediaInfo:
    """Probe ``src``; ``name`` is used in error messages (defaults to the path).

    ``count_frames=True`` demuxes every packet: exact frame count and real duration even when the
    container header lies (e.g. a truncated file), at the cost of reading the whole stream.
    """
    label = name or (str(src) if isinstance(src, str | Path) else "<bytes>")
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    if isinstance(src, str | Path) and Path(src).exists() and Path(src).stat().st_size == 0:
        raise ProbeError(f"{label}: empty file (0 bytes)")
    try:
        container = av.open(src if not isinstance(src, Path) else str(src), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{label}: not a readable media file ({exc.__class__.__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            kinds = sorted({str(s.type) for s in container.streams})
            raise ProbeError(f"{label}: no video stream (streams: {', '.join(kinds) or 'none'})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1  # one frame is decoded (for the rotation): thread start-up would cost more
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ProbeError(f"{label}: video stream has no frame rate")
        fps = float(rate)
        tb = stream.time_base or Fraction(1, 1_000_000)
        duration = float(stream.duration * tb) if stream.duration else None
        if duration is None and container.duration:
            duration = container.duration / av.time_base
        num_frames: int | None = stream.frames or None
        rotation: int | None = None
        n, last_end = 0, 0.0
        try:
            # One pass: decode packets until the first frame gives the rotation, and (count_frames)
            # keep demuxing to the end without decoding.
            for packet in container.demux(stream):
                if rotation is None:
                    rotation = _first_rotation(packet.decode())
                    if rotation is not None and not count_frames:
                        break
                if packet.size == 0 or packet.pts is None:
                    continue
                n += 1
                end = float((packet.pts + (packet.duration or 0)) * tb)
                last_end = max(last_end, end)
            if rotation is None:  # a decoder with delay (B-frames) holds frames until it is flushed
                rotation = _first_rotation(ctx.decode(None))
        except av.error.FFmpegError as exc:
            if rotation is None:
                raise ProbeError(f"{label}: its first frame does not decode ({exc})") from exc
            raise ProbeError(f"{label}: stream breaks off after {n} packets ({exc})") from exc
        if rotation is None:
            raise ProbeError(f"{label}: no video frame decodes")
        if count_frames:
            start = float(stream.start_time * tb) if stream.start_time else 0.0
            num_frames = n
            duration = max(last_end - start, 0.0) if last_end else n / fps
        if not duration or duration <= 0:
            if num_frames:
                duration = num_frames / fps
            else:
                raise ProbeError(f"{label}: video stream has no duration")
        if not ctx.width or not ctx.height:
            raise ProbeError(f"{label}: video stream has no frame size")
        return MediaInfo(
            duration=round(duration, 6),
            fps=round(fps, 6),
            num_frames=num_frames,
            width=int(ctx.width),
            height=int(ctx.height),
            codec=str(ctx.name),
            bit_rate=int(stream.bit_rate or container.bit_rate or 0) or None,
            has_audio=bool(container.streams.audio),
            rotation=rotation,
        )


def _first_rotation(frames: Any) -> int | None:
    """Display rotation of the first of ``frames`` (None when there is none yet)."""
    for frame in frames:
        return int(round(frame.rotation)) % 360
    return None
