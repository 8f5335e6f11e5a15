"""Built-in measures that need no model weights, stored for every clip and optionally thresholded.

* sharpness: variance of the Laplacian of the grey frame (blur flattens edges), mean over frames;
* motion: mean absolute difference of consecutive grey frames on the 0-255 scale (0 = a still);
* temporal consistency: mean correlation of consecutive frames in [0, 1] (1 = no change; jumps,
  flicker and noise pull it down).
Frames are downscaled to ``max_side`` first so thresholds mean the same across resolutions.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from medvideocap.build.recipe import MeasuresStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context
from medvideocap.media.ffmpeg import FrameNeed


def sharpness(gray: list[np.ndarray]) -> float:
    return float(np.mean([cv2.Laplacian(g, cv2.CV_64F).var() for g in gray]))


def motion(gray: list[np.ndarray]) -> float:
    if len(gray) < 2:
        return 0.0
    return float(
        np.mean(
            [
                np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
                for a, b in zip(gray, gray[1:], strict=False)
            ]
        )
    )


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    norm = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return max(0.0, float((x * y).sum()) / norm)


def temporal_consistency(images: list[np.ndarray]) -> float:
    if len(images) < 2:
        return 1.0
    small = [cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in images]
    return float(np.mean([_correlation(a, b) for a, b in zip(small, small[1:], strict=False)]))


def streamed(frames: Iterable[tuple[float, np.ndarray]]) -> dict[str, float]:
    """The three measures folded over a stream of RGB frames (one frame held at a time)."""
    sharp, moves, corr = [], [], []
    prev_gray: np.ndarray | None = None
    prev_small: np.ndarray | None = None
    for _, image in frames:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
        sharp.append(float(cv2.Laplacian(gray, cv2.CV_64F).var()))
        if prev_gray is not None and prev_small is not None:
            moves.append(float(np.abs(gray.astype(np.int16) - prev_gray.astype(np.int16)).mean()))
            corr.append(_correlation(prev_small, small))
        prev_gray, prev_small = gray, small
    return {
        "sharpness": float(np.mean(sharp)) if sharp else 0.0,
        "motion": float(np.mean(moves)) if moves else 0.0,
        "temporal_consistency": float(np.mean(corr)) if corr else 1.0,
    }


def needs(cfg: MeasuresStage) -> list[FrameNeed]:
    return [FrameNeed(fps=cfg.analysis_fps, max_side=cfg.max_side)]


def run(sample: Sample, cfg: MeasuresStage, ctx: Context) -> Sample | Reject:
    values = streamed(sample.stream(needs(cfg)[0]))
    sample.scores.update({k: round(v, 6) for k, v in values.items()})
    checks = [
        ("sharpness", cfg.min_sharpness, None, "blurry"),
        ("motion", cfg.min_motion, None, "static"),
        ("motion", None, cfg.max_motion, "too_much_motion"),
        ("temporal_consistency", cfg.min_temporal_consistency, None, "inconsistent"),
    ]
    for name, low, high, code in checks:
        value = sample.scores[name]
        if low is not None and value < low:
            return Reject(cfg.label, code, f"{name} {value:.3g} < {low:g}", dict(sample.scores))
        if high is not None and value > high:
            return Reject(cfg.label, code, f"{name} {value:.3g} > {high:g}", dict(sample.scores))
    return sample
