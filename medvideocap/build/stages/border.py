"""Black-border stage: letterbox/pillarbox bars, found by ffmpeg's ``cropdetect`` (the default) or
with Canny edges + Hough lines (the paper's method).

``method: cropdetect`` asks ffmpeg's own filter for the area where anything brighter than
``luminance`` ever appears (measured on real letterboxed clips: it finds 44 and 60 px bars exactly,
where the Hough method missed them). With the other methods a bar is a run of rows (or columns) at the frame edge that stay darker than ``luminance`` in every
sampled frame. With ``method: hough`` (the paper's approach) a bar only counts when a long straight
edge (Canny + probabilistic Hough transform on the time-averaged frame) runs along its inner edge,
so a dark scene or a vignette is not mistaken for a bar. ``black_border`` stores the bar area as a
fraction of the frame; above ``max_fraction`` the clip is rejected or cropped, as the recipe says.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from medvideocap.build.recipe import BlackBorderStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, installed
from medvideocap.build.workdir import clip_path
from medvideocap.media.ffmpeg import Crop, FrameNeed, crop_of_extent, cropdetect, cut, luma
from medvideocap.media.probe import probe

_FPS = 2.0
_TOLERANCE = 3  # pixels between a bar's inner edge and the Hough line that confirms it


def _dark_run(values: np.ndarray, threshold: float) -> int:
    """Length of the leading run of entries below ``threshold``."""
    above = np.nonzero(values >= threshold)[0]
    return int(above[0]) if above.size else len(values)


def _lines(mean: np.ndarray) -> tuple[list[int], list[int]]:
    """y of long horizontal lines and x of long vertical lines in the time-averaged frame."""
    h, w = mean.shape
    edges = cv2.Canny(mean, 30, 90)
    found = cv2.HoughLinesP(
        edges,
        1,
        np.pi / 180,
        threshold=max(10, min(h, w) // 4),
        minLineLength=int(0.5 * min(h, w)),
        maxLineGap=8,
    )
    ys: list[int] = []
    xs: list[int] = []
    for x1, y1, x2, y2 in [] if found is None else found.reshape(-1, 4):
        if abs(int(y1) - int(y2)) <= 1 and abs(int(x2) - int(x1)) >= 0.5 * w:
            ys.append((int(y1) + int(y2)) // 2)
        elif abs(int(x1) - int(x2)) <= 1 and abs(int(y2) - int(y1)) >= 0.5 * h:
            xs.append((int(x1) + int(x2)) // 2)
    return ys, xs


def find_borders(gray: Iterable[np.ndarray], cfg: BlackBorderStage) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) bar sizes in pixels, folded over the frames one at a time."""
    rows = cols = total = None
    count = 0
    for g in gray:
        f = g.astype(np.float32)
        r, c = f.max(axis=1), f.max(axis=0)  # brightest value each row / column reaches
        rows = r if rows is None else np.maximum(rows, r)
        cols = c if cols is None else np.maximum(cols, c)
        total = f if total is None else total + f
        count += 1
    if rows is None or cols is None or total is None:
        return 0, 0, 0, 0
    top, bottom = _dark_run(rows, cfg.luminance), _dark_run(rows[::-1], cfg.luminance)
    left, right = _dark_run(cols, cfg.luminance), _dark_run(cols[::-1], cfg.luminance)
    h, w = total.shape
    if top >= h or left >= w:  # the whole frame is dark: no bars, just a dark clip
        return 0, 0, 0, 0
    if cfg.method == "hough":
        ys, xs = _lines((total / count).astype(np.uint8))

        def confirmed(edge: int, lines: list[int]) -> bool:
            return any(abs(edge - v) <= _TOLERANCE for v in lines)

        top = top if top and confirmed(top, ys) else 0
        bottom = bottom if bottom and confirmed(h - bottom, ys) else 0
        left = left if left and confirmed(left, xs) else 0
        right = right if right and confirmed(w - right, xs) else 0
    return top, bottom, left, right


class BarScan:
    """``cropdetect``'s measure folded over the input's one front-to-back decode (the split stage's,
    see :func:`scanner`), so the bars of every clip are known without decoding the input again.

    At 2 frames a second (the first frame at or after each tick of the input's clock, as the
    ``fps=2`` filter before ``cropdetect`` samples a span) it keeps, per sampled frame, the first and
    last row and column whose mean luma exceeds ``luminance`` (the integer mean, as the filter's
    ``checkline`` takes it): four numbers a tick, so an hour of input holds 7,200 of them. A clip's
    bars are the union of its ticks' extents with the filter's ``round=2`` rounding
    (:func:`~medvideocap.media.ffmpeg.crop_of_extent`): the box ``cropdetect=reset=0`` prints on
    the same span. A rotated input (display matrix) is left to ``cropdetect``: the ffmpeg CLI rotates
    frames before its filters and crops, this decoder does not."""

    def __init__(self, cfg: BlackBorderStage) -> None:
        self.limit = float(f"{cfg.luminance / 255.0:.6f}") * 255.0  # what cropdetect() asks the filter
        self.ticks: list[tuple[float, int, int, int, int]] = []  # (time, y1, y2, x1, x2); y1 -1: dark
        self.size: tuple[int, int] | None = None
        self.rotated = False
        self._next = 0.0

    def __call__(self, t: float, frame: object) -> None:
        if self.rotated or t + 1e-6 < self._next:
            return
        while self._next <= t + 1e-6:
            self._next += 1.0 / _FPS
        if self.size is None:
            self.size = (int(frame.width), int(frame.height))  # type: ignore[attr-defined]
            self.rotated = int(round(getattr(frame, "rotation", 0) or 0)) % 360 != 0
            if self.rotated:
                return
        y = luma(frame)
        h, w = y.shape
        rows = np.flatnonzero(y.sum(axis=1, dtype=np.uint32) // w > self.limit)
        cols = np.flatnonzero(y.sum(axis=0, dtype=np.uint32) // h > self.limit)
        if rows.size and cols.size:
            self.ticks.append((t, int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])))
        else:
            self.ticks.append((t, -1, -1, -1, -1))

    def summary(self, start: float, end: float) -> dict[str, Any] | None:
        """What ``cropdetect`` finds on ``start``-``end`` s, as ``Crop`` fields; None when no sampled
        frame lies in the span (or the input is rotated): the stage runs ``cropdetect`` itself."""
        lo = bisect.bisect_left(self.ticks, (start - 1e-6,))  # ticks are in time order
        hi = bisect.bisect_left(self.ticks, (end - 1e-6,))
        inside = self.ticks[lo:hi]
        if self.rotated or self.size is None or not inside:
            return None
        width, height = self.size
        lit = [k for k in inside if k[1] >= 0]
        if not lit:
            found = crop_of_extent(width - 1, height - 1, 0, 0, width, height)
        else:
            found = crop_of_extent(
                min(k[3] for k in lit),
                min(k[1] for k in lit),
                max(k[4] for k in lit),
                max(k[2] for k in lit),
                width,
                height,
            )
        return {"w": found.w, "h": found.h, "x": found.x, "y": found.y, "width": width, "height": height}


def scanner(cfg: BlackBorderStage) -> BarScan | None:
    """The fold this stage asks of the split stage's decode (``cropdetect`` only; the hough and
    luminance methods read their frames per clip)."""
    return BarScan(cfg) if cfg.method == "cropdetect" else None


def needs(cfg: BlackBorderStage) -> list[FrameNeed]:
    """hough/luminance read full-size frames at 2 fps; cropdetect lets ffmpeg's filter decode."""
    return [] if cfg.method == "cropdetect" else [FrameNeed(fps=_FPS)]


def run(sample: Sample, cfg: BlackBorderStage, ctx: Context) -> Sample | Reject:
    """Measure the bars; above ``max_fraction`` reject, or crop: a clip whose cut is still pending
    (the split stage defers it) gets the crop in that one encode; a clip already written is cut again
    from its source, cropped."""
    scanned = sample.scan.get(cfg.label) if sample.deferred else None
    if cfg.method == "cropdetect":
        if scanned is not None:  # measured during the split stage's decode of the input
            found = Crop(**scanned)
        elif sample.deferred:
            found = cropdetect(
                sample.path,
                limit=cfg.luminance,
                fps=_FPS,
                start=sample.start,
                end=sample.end,
                name=f"{sample.input} clip {sample.index}",
            )
        else:
            found = cropdetect(sample.media, limit=cfg.luminance, fps=_FPS)
        top, bottom, left, right = found.bars
        h, w = found.height, found.width
    else:
        grey = (cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for _, im in sample.stream(needs(cfg)[0]))
        top, bottom, left, right = find_borders(grey, cfg)
        h, w = int(sample.info["height"]), int(sample.info["width"])
    sample.extra["black_border_method"] = cfg.method
    sample.scan.pop(cfg.label, None)
    inner = max(0, h - top - bottom) * max(0, w - left - right)
    fraction = round(1.0 - inner / float(h * w), 6)
    sample.scores["black_border"] = fraction
    if fraction <= cfg.max_fraction:
        return sample
    bars = f"bars top {top}, bottom {bottom}, left {left}, right {right} px"
    if cfg.action == "reject":
        return Reject(
            cfg.label,
            "black_border",
            f"{fraction:.0%} of the frame is border ({bars}) > {cfg.max_fraction:.0%}",
            dict(sample.scores),
        )
    x, y = left + (left % 2), top + (top % 2)
    cw, ch = (w - x - right) // 2 * 2, (h - y - bottom) // 2 * 2
    sample.extra["cropped"] = {"width": cw, "height": ch, "x": x, "y": y}
    if ch < cfg.min_height:
        return Reject(
            cfg.label,
            "too_small",
            f"{cw}x{ch} after cropping {bars} is below the minimum height {cfg.min_height}",
            dict(sample.scores),
        )
    if sample.deferred and sample.pending_cut is not None:
        # not written yet: the crop rides along with the cut (one encode, with this stage's quality)
        sample.crop = [cw, ch, x, y]
        sample.pending_cut = {**sample.pending_cut, "crf": cfg.crf, "preset": cfg.preset}
        sample.info = {**sample.info, "width": cw, "height": ch}
        return sample
    dest = clip_path(ctx.work, sample.key, f"{sample.index:03d}-crop")
    cut(
        sample.media,
        dest,
        start=0.0,
        end=float(sample.info["duration"]) + 1.0,
        copy=False,
        crop=(cw, ch, x, y),
        crf=cfg.crf,
        preset=cfg.preset,
    )
    sample.clip = str(dest)
    sample.info = probe(dest, name=f"{sample.input} clip {sample.index}", count_frames=True).as_dict()
    return sample


def facts(cfg: BlackBorderStage) -> list[tuple[str, bool]]:
    """What the stage loads and whether it is here offline (``--dry-run``)."""
    import shutil

    if cfg.method == "cropdetect":
        return [("ffmpeg cropdetect filter", shutil.which("ffmpeg") is not None)]
    return [(f"built-in {cfg.method} (opencv)", installed("cv2"))]
