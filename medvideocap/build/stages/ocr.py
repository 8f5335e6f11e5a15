"""OCR stage: burned-in text (subtitles, slides) counted in words; the paper drops > 20 words.

The OCR backend is optional (``pip install 'medvideocap[ocr]'``); a recipe that asks for this stage
without it fails at start-up. The reader loads once per worker process."""

from __future__ import annotations

from typing import Any

from medvideocap.build.recipe import OcrStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, require

_READERS: dict[str, Any] = {}


def check(cfg: OcrStage) -> None:
    require("easyocr", stage=cfg.label, hint="pip install 'medvideocap[ocr]' (or: pip install easyocr)")


def _reader(cfg: OcrStage) -> Any:
    key = cfg.model_dump_json()
    if key not in _READERS:
        import easyocr

        gpu = cfg.device != "cpu" and _cuda()
        _READERS[key] = easyocr.Reader(cfg.languages, gpu=gpu, verbose=False)
    return _READERS[key]


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def run(sample: Sample, cfg: OcrStage, ctx: Context) -> Sample | Reject:
    reader = _reader(cfg)
    counts = []
    for image in sample.even_frames(cfg.frames).images:
        texts = reader.readtext(image, detail=0)
        counts.append(sum(len(str(t).split()) for t in texts))
    words = float(max(counts))
    sample.scores["text_words"] = words
    if words > cfg.max_words:
        return Reject(
            cfg.label,
            "text",
            f"{words:.0f} burned-in words in one frame > {cfg.max_words}",
            dict(sample.scores),
        )
    return sample
