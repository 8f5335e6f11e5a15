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

from collections.abc import Iterable

import cv2
import numpy as np

from medvideocap.build.recipe import BlackBorderStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, installed
from medvideocap.build.workdir import clip_path
from medvideocap.media.ffmpeg import FrameNeed, cropdetect, cut
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


def needs(cfg: BlackBorderStage) -> list[FrameNeed]:
    """hough/luminance read full-size frames at 2 fps; cropdetect lets ffmpeg's filter decode."""
    return [] if cfg.method == "cropdetect" else [FrameNeed(fps=_FPS)]


def run(sample: Sample, cfg: BlackBorderStage, ctx: Context) -> Sample | Reject:
    """Measure the bars; above ``max_fraction`` reject, or crop: a clip whose cut is still pending
    (the split stage defers it) gets the crop in that one encode; a clip already written is cut again
    from its source, cropped."""
    if cfg.method == "cropdetect":
        if sample.deferred:
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
