"""Camera motion type from frame-to-frame global motion: a heuristic, and labelled as one in the record.

Between frames ``1/analysis_fps`` apart, phase correlation gives the global (camera) shift and the
radial component of dense optical flow gives zoom. Speeds are per
second, as a fraction of the frame width, so thresholds do not depend on resolution or frame rate.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from medvideocap.build.recipe import CameraMotionStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context
from medvideocap.media.ffmpeg import FrameNeed

METHOD = "heuristic: phase correlation (pan/tilt) + Farneback flow (zoom)"


def global_motion(frames: Iterable[tuple[float, np.ndarray]]) -> tuple[float, float, float]:
    """(horizontal, vertical, zoom) motion per second as fractions of the frame width (medians).

    Translation comes from phase correlation (one global shift per frame pair, robust to flat
    regions and to small objects moving in front of the camera); zoom is the median radial component
    of Farneback flow over textured pixels (flat regions carry no flow information)."""
    dxs: list[float] = []
    dys: list[float] = []
    zooms: list[float] = []
    prev: tuple[float, np.ndarray] | None = None
    for t, b in frames:  # (time, grey frame), one pair at a time: memory stays flat
        if prev is None:
            prev = (t, b)
            h, w = b.shape
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            rx, ry = xs - (w - 1) / 2.0, ys - (h - 1) / 2.0
            radius = np.sqrt(rx * rx + ry * ry) + 1e-6
            window = cv2.createHanningWindow((w, h), cv2.CV_32F)
            continue
        (t_a, a), prev = prev, (t, b)
        dt = max(float(t - t_a), 1e-3)
        (dx, dy), _response = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32), window)
        dxs.append(dx / w / dt)
        dys.append(dy / w / dt)
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # type: ignore[call-overload]
        grad = np.abs(cv2.Sobel(a, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(a, cv2.CV_32F, 0, 1))
        textured = grad > max(float(np.percentile(grad, 75)), 1.0)
        radial = ((flow[..., 0] - dx) * rx + (flow[..., 1] - dy) * ry) / radius
        zooms.append(float(np.median(radial[textured])) / w / dt if textured.any() else 0.0)
    if not dxs:
        return 0.0, 0.0, 0.0
    return float(np.median(dxs)), float(np.median(dys)), float(np.median(zooms))


def classify(dx: float, dy: float, zoom: float, cfg: CameraMotionStage) -> str:
    """Content moving left means the camera pans right, and so on."""
    if abs(zoom) >= cfg.zoom_rate and abs(zoom) >= max(abs(dx), abs(dy)):
        return "zoom in" if zoom > 0 else "zoom out"
    if max(abs(dx), abs(dy)) < cfg.static_speed:
        return "static shot"
    if abs(dx) >= abs(dy):
        return "pan right" if dx < 0 else "pan left"
    return "tilt down" if dy < 0 else "tilt up"


def needs(cfg: CameraMotionStage) -> list[FrameNeed]:
    return [FrameNeed(fps=cfg.analysis_fps, max_side=160)]


def run(sample: Sample, cfg: CameraMotionStage, ctx: Context) -> Sample | Reject:
    pairs = sample.stream(needs(cfg)[0])
    dx, dy, zoom = global_motion((t, cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)) for t, im in pairs)
    sample.camera_motion = classify(dx, dy, zoom, cfg)
    sample.scores["camera_pan_speed"] = round(dx, 6)
    sample.scores["camera_tilt_speed"] = round(dy, 6)
    sample.scores["camera_zoom_speed"] = round(zoom, 6)
    sample.extra["camera_motion_method"] = METHOD
    return sample
