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


def check_stage(cfg: Any) -> None:
    """Raise :class:`MissingDependencyError` (with the pip command) if ``cfg`` cannot run here."""
    check = getattr(_module(cfg.stage), "check", None)
    if check is not None:
        check(cfg)


def require(module: str, *, stage: str, hint: str) -> None:
    """Fail start-up unless ``module`` is importable."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingDependencyError(f"stage {stage!r} needs the Python package {module!r}: {hint}")
