"""Split stage: find scene cuts, cut the kept segments out as standalone H.264 mp4 clips.

Detection decodes the input once: every frame is reduced to a small feature (a colour histogram, or
a tiny grey thumbnail for the frame-difference detector), cuts are looked for between frames
``1/analysis_fps`` apart (so slow fades still register), and each cut is then placed on the frame
pair with the largest change inside that window (so cut times are frame-accurate). The CLIP detector
follows the paper: cosine similarity of image embeddings of adjacent 1-fps frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np

from medvideocap.build.media import cut, keyframe_times
from medvideocap.build.recipe import SplitStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, require
from medvideocap.probe import probe

_THUMB = 32  # features are computed on frames scaled to this many pixels wide


def check(cfg: SplitStage) -> None:
    if cfg.detector == "clip":
        for module in ("torch", "transformers"):
            require(module, stage=cfg.label, hint="pip install 'medvideocap[train]' (torch + transformers)")


def _feature(image: np.ndarray, detector: str) -> np.ndarray:
    if detector == "histogram":
        hist = [np.bincount(image[..., c].ravel() >> 4, minlength=16) for c in range(3)]
        flat = np.concatenate(hist).astype(np.float64)
        return (flat / max(flat.sum(), 1.0)).astype(np.float32)
    return image.mean(axis=2).astype(np.uint8)  # small: one long video keeps one of these per frame


def _distance(a: np.ndarray, b: np.ndarray, detector: str) -> float:
    if detector == "histogram":
        return float(np.abs(a - b).sum() / 2.0)  # in [0, 1]
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def frame_features(path: str | Path, detector: str) -> tuple[list[np.ndarray], list[float]]:
    """A small feature per decoded frame, with its time (seconds from the first frame)."""
    feats: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        th = max(2, round(_THUMB * h / max(w, 1)))
        t0: float | None = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t0 = float(frame.time) if t0 is None else t0
            image = frame.reformat(width=_THUMB, height=th, format="rgb24").to_ndarray()
            feats.append(_feature(image, detector))
            times.append(float(frame.time) - t0)
    return feats, times


def detect_cuts(path: str | Path, cfg: SplitStage) -> list[float]:
    """Times (seconds) where a new scene starts, in increasing order."""
    if cfg.detector == "none":
        return []
    if cfg.detector == "clip":
        return _clip_cuts(path, cfg)
    feats, times = frame_features(path, cfg.detector)
    ticks: list[int] = []
    for i, t in enumerate(times):
        if not ticks or t - times[ticks[-1]] >= 1.0 / cfg.analysis_fps - 1e-6:
            ticks.append(i)
    cuts: list[float] = []
    for a, b in zip(ticks, ticks[1:], strict=False):
        if _distance(feats[a], feats[b], cfg.detector) <= cfg.threshold:
            continue
        j = max(range(a + 1, b + 1), key=lambda k: _distance(feats[k - 1], feats[k], cfg.detector))
        far_enough = not cuts or times[j] - cuts[-1] >= cfg.min_scene_seconds
        if far_enough and times[j] >= cfg.min_scene_seconds:
            cuts.append(times[j])
    return cuts


def _clip_cuts(path: str | Path, cfg: SplitStage) -> list[float]:
    from medvideocap.build.media import sample_at_fps
    from medvideocap.build.stages.aesthetic import clip_embeddings

    frames = sample_at_fps(path, cfg.analysis_fps, max_side=None)
    emb = clip_embeddings(cfg.clip_model, frames.images, device="auto")
    t0 = frames.times[0]
    cuts: list[float] = []
    for i in range(1, len(frames.images)):
        if float((emb[i - 1] * emb[i]).sum()) < cfg.threshold:
            t = frames.times[i] - t0
            if (not cuts or t - cuts[-1] >= cfg.min_scene_seconds) and t >= cfg.min_scene_seconds:
                cuts.append(t)
    return cuts


def segments(cuts: list[float], duration: float, max_seconds: float | None) -> list[tuple[float, float]]:
    """Scene spans between cuts; spans longer than ``max_seconds`` are chunked evenly."""
    bounds = [0.0, *[c for c in cuts if 0 < c < duration], duration]
    spans: list[tuple[float, float]] = []
    for s, e in zip(bounds, bounds[1:], strict=False):
        pieces = max(1, int(np.ceil((e - s) / max_seconds - 1e-9))) if max_seconds else 1
        step = (e - s) / pieces
        spans.extend((s + k * step, s + (k + 1) * step) for k in range(pieces))
    return spans


def run(sample: Sample, cfg: SplitStage, ctx: Context) -> list[Sample | Reject]:
    """One child sample per segment: a cut clip, or a reject for segments too short or too small."""
    duration = float(sample.info["duration"])
    cuts = detect_cuts(sample.path, cfg)
    spans = segments(cuts, duration, cfg.max_seconds)
    even = int(sample.info["width"]) % 2 == 0 and int(sample.info["height"]) % 2 == 0
    copy_ok = sample.info.get("codec") == "h264" and even  # stream copy keeps codec and frame size
    keys = keyframe_times(sample.path) if copy_ok else []
    fps = float(sample.info.get("fps") or 25.0)

    def on_key(t: float) -> bool:
        return any(abs(t - k) < 0.5 / fps for k in keys)

    out: list[Sample | Reject] = []
    for i, (start, end) in enumerate(spans):
        child = dataclasses.replace(
            sample,
            index=i,
            total=len(spans),
            start=round(start, 6),
            end=round(end, 6),
            scores=dict(sample.scores),
            timings={k: v / len(spans) for k, v in sample.timings.items()},
            extra={**sample.extra, "cuts": [round(c, 3) for c in cuts]},
        )
        if end - start < cfg.min_seconds:
            detail = f"segment {start:.2f}-{end:.2f} s is {end - start:.2f} s < {cfg.min_seconds:g} s"
            out.append(Reject(cfg.label, "too_short", detail, sample=child))
            continue
        copy = copy_ok and on_key(start) and (on_key(end) or end >= duration - 0.5 / fps)
        dest = ctx.work / "clips" / sample.key / f"{i:03d}.mp4"
        cut(sample.path, dest, start=start, end=end, copy=copy, crf=cfg.crf, preset=cfg.preset)
        info = probe(dest, name=f"{sample.input} clip {i}", count_frames=True)
        child.clip = str(dest)
        child.info = info.as_dict()
        child.extra["cut"] = "stream-copy" if copy else "re-encode"
        if info.width < cfg.min_width or info.height < cfg.min_height:
            detail = f"{info.width}x{info.height} below minimum {cfg.min_width}x{cfg.min_height}"
            out.append(Reject(cfg.label, "too_small", detail, sample=child))
            continue
        out.append(child)
    return out
