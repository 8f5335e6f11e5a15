"""Technical-quality stage: an offline, no-reference score of blur, noise and compression damage.

No maintained package ships a no-reference video-quality model with its weights (pyiqa and DOVER
download theirs; BRISQUE and NIQE need a trained regressor or a pristine-image model), so this is our
own measure, built from three classical no-reference estimators that each answer one question:

* **blur**: Crete-Roffet's perceptual blur metric (re-blur the frame with a 9-tap box filter and see
  how much of the neighbour-to-neighbour variation survives; a blurred frame loses little more);
* **noise**: Immerkaer's noise estimator, made robust to edges by taking the median response of the
  3x3 noise operator instead of its mean (sigma on the 0-255 scale);
* **blocking**: the excess of luminance steps across 8-pixel block boundaries over the steps inside
  blocks (the signature of a starved block-based encoder).

Each becomes a quality term in [0, 1] and the score is their product, averaged over ``frames`` evenly
spaced frames, so a clip loses score for whichever damage it has. It is stored as the record's
``technical`` score (higher is better, like DOVER's fused score) with ``technical_method`` naming the
measure, and the three raw estimates as named scores. Frames are scaled to at most ``max_side``
pixels first so values mean the same across resolutions. Measured on real footage (tests and
``benchmarks/curation.py``): blurred, noisy and over-compressed copies all score below their source.
"""

from __future__ import annotations

import cv2
import numpy as np

from medvideocap.build.recipe import TechnicalStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context
from medvideocap.media.ffmpeg import FrameNeed

METHOD = "nr-composite-v1: Crete-Roffet blur x Immerkaer noise (median) x 8x8 blocking, no reference"
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def blur(gray: np.ndarray) -> float:
    """Crete-Roffet blur in [0, 1]: 0 sharp, 1 as blurred as a 9-tap box filter makes it."""
    f = gray.astype(np.float32)
    values = []
    for axis in (0, 1):
        kernel = (9, 1) if axis == 0 else (1, 9)
        blurred = cv2.blur(f, kernel[::-1])
        d_f = np.abs(np.diff(f, axis=axis))
        d_b = np.abs(np.diff(blurred, axis=axis))
        v = np.maximum(0.0, d_f - d_b)
        s_f, s_v = float(d_f.sum()), float(v.sum())
        values.append((s_f - s_v) / s_f if s_f > 0 else 1.0)
    return float(max(values))


def noise(gray: np.ndarray) -> float:
    """Noise sigma (0-255 scale): the median |3x3 noise operator| response, scaled for Gaussian noise
    (the operator's output has 6 sigma spread; the median of |N(0, s)| is 0.6745 s)."""
    response = np.abs(cv2.filter2D(gray.astype(np.float32), -1, _NOISE_KERNEL)[1:-1, 1:-1])
    return float(np.median(response)) / (0.6745 * 6.0)


def blocking(gray: np.ndarray, block: int = 8) -> float:
    """Mean step across block boundaries over the mean step inside blocks, minus 1 (0: no blocking)."""
    f = gray.astype(np.float32)
    ratios = []
    for axis in (0, 1):
        d = np.abs(np.diff(f, axis=axis)).mean(axis=1 - axis)
        idx = np.arange(d.size)
        edge = d[(idx % block) == block - 1]
        inside = d[(idx % block) != block - 1]
        if edge.size and inside.size:
            ratios.append(float(edge.mean()) / max(float(inside.mean()), 1e-3))
    return max(0.0, max(ratios, default=1.0) - 1.0)


def quality(gray: np.ndarray, cfg: TechnicalStage) -> tuple[float, dict[str, float]]:
    """The score of one grey frame in [0, 1] and its three raw estimates."""
    b, n, k = blur(gray), noise(gray), blocking(gray)
    q_blur = float(np.clip((cfg.blur_bad - b) / (cfg.blur_bad - cfg.blur_good), 0.0, 1.0))
    q_noise = float(np.exp(-n / cfg.noise_scale))
    q_block = float(np.exp(-k / cfg.blocking_scale))
    return q_blur * q_noise * q_block, {"blur": b, "noise": n, "blocking": k}


def _gray(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        image = cv2.resize(
            image, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def score_frames(images: list[np.ndarray], cfg: TechnicalStage) -> tuple[float, dict[str, float]]:
    """Mean score and mean raw estimates over frames."""
    results = [quality(_gray(im, cfg.max_side), cfg) for im in images]
    raw = {k: float(np.mean([r[1][k] for r in results])) for k in ("blur", "noise", "blocking")}
    return float(np.mean([r[0] for r in results])), raw


def needs(cfg: TechnicalStage) -> list[FrameNeed]:
    """``frames`` evenly spaced frames, already at most ``max_side`` (what :func:`_gray` would make of
    full-size ones: the same OpenCV area filter, so the score does not change)."""
    return [FrameNeed(count=cfg.frames, max_side=cfg.max_side)]


def run(sample: Sample, cfg: TechnicalStage, ctx: Context) -> Sample | Reject:
    score, raw = score_frames(sample.view(needs(cfg)[0]).images, cfg)
    sample.scores["technical"] = round(score, 6)
    sample.scores.update({f"technical_{k}": round(v, 6) for k, v in raw.items()})
    sample.extra["technical_method"] = METHOD
    if cfg.min is not None and score < cfg.min:
        detail = ", ".join(f"{k} {v:.3g}" for k, v in raw.items())
        return Reject(
            cfg.label, "low_technical", f"technical {score:.3f} < {cfg.min:g} ({detail})", dict(sample.scores)
        )
    return sample
