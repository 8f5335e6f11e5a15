"""Probe stage: real media facts of the input; non-videos and hopeless inputs leave here."""

from __future__ import annotations

from pathlib import Path

from medvideocap.build.recipe import ProbeStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context
from medvideocap.media.probe import ProbeError, probe

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
)


def run(sample: Sample, cfg: ProbeStage, ctx: Context) -> Sample | Reject:
    """Reject unreadable, empty, audio-only and non-video inputs, and ones too short or small to use.

    The extension is checked first because FFmpeg happily "decodes" some text files (its tty demuxer
    renders .txt as video), and a build must never turn a README into a clip."""
    suffix = Path(sample.input).suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        known = ", ".join(sorted(VIDEO_EXTENSIONS))
        return Reject(
            cfg.label, "not_video", f"extension {suffix or '(none)'!r} is not a video container ({known})"
        )
    try:
        info = probe(sample.path, name=sample.input, count_frames=True)
    except ProbeError as exc:
        text = str(exc)
        code = (
            "empty"
            if "empty file" in text
            else "no_video_stream"
            if "no video stream" in text
            else "unreadable"
        )
        return Reject(cfg.label, code, text)
    sample.info = info.as_dict()
    sample.input_seconds = info.duration
    if info.num_frames is not None and info.num_frames < 2:
        return Reject(cfg.label, "unreadable", f"{sample.input}: only {info.num_frames} decodable frame(s)")
    if info.duration < cfg.min_seconds:
        return Reject(cfg.label, "too_short", f"{info.duration:.2f} s < {cfg.min_seconds:g} s")
    if info.width < cfg.min_width or info.height < cfg.min_height:
        return Reject(
            cfg.label,
            "too_small",
            f"{info.width}x{info.height} below minimum {cfg.min_width}x{cfg.min_height}",
        )
    return sample
