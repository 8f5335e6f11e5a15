"""Build stages: plain functions ``(sample, config, context) -> Sample | Reject | list[...]``.

:func:`make_stage` binds a recipe entry to its function; :func:`check_stage` runs at start-up so a
stage whose optional dependency is missing fails before any work is done, with the install hint.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvideocap.build.sample import Reject, Sample
from medvideocap.disk import stops_the_run
from medvideocap.errors import DataError
from medvideocap.media.ffmpeg import FrameNeed

log = logging.getLogger(__name__)

StageResult = Sample | Reject | list[Sample | Reject]
StageFn = Callable[[Sample], StageResult]
BatchFn = Callable[[list[Sample]], list[StageResult]]


class MissingDependencyError(RuntimeError):
    """A recipe asks for a stage whose optional dependency is not installed."""


@dataclass(frozen=True)
class Context:
    """What stages need besides the sample: where to put cut clips, and the configs of the stages
    after the split stage that fold the input's frames during its decode (:func:`scanner`)."""

    work: Path
    scanned: tuple[Any, ...] = ()


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


def batcher(cfg: Any, ctx: Context) -> BatchFn | None:
    """The stage over several clips at once (its module's ``run_batch(samples, cfg, ctx)``, one
    result per sample, in order) when :func:`batch_size` is above 1; None otherwise. The pipeline
    parks clips that reach such a stage, with their decoded frames, and runs them together: one model
    call for many clips, which is what keeps a GPU busy."""
    run_batch = getattr(_module(cfg.stage), "run_batch", None)
    if run_batch is None or batch_size(cfg) <= 1:
        return None
    return functools.partial(run_batch, cfg=cfg, ctx=ctx)


def batch_size(cfg: Any) -> int:
    """Clips per call of a batched stage: the recipe's ``batch:``, else its module's default for the
    device it will run on (``default_batch(cfg)``), else 1."""
    if getattr(cfg, "batch", None):
        return int(cfg.batch)
    default = getattr(_module(cfg.stage), "default_batch", None)
    return int(default(cfg)) if default is not None else 1


def bad_data(label: str, sample: Sample, exc: DataError) -> Reject:
    """The reject of a clip whose data failed in stage ``label`` (a truncated file, a failed cut); a
    full disk, a used-up quota or a read-only work dir stops the run instead (no verdict on the video)."""
    if stops_the_run(exc):
        raise exc
    log.warning("%s clip %d: stage %s: %s", sample.input, sample.index, label, exc)
    return Reject(label, "error", f"{type(exc).__name__}: {exc}", dict(sample.scores))


def frame_needs(cfg: Any) -> list[FrameNeed]:
    """The frames a stage reads from each clip (its module's ``needs(cfg)``; [] when it reads none),
    so the pipeline can decode them once per clip for every stage together."""
    needs = getattr(_module(cfg.stage), "needs", None)
    return list(needs(cfg)) if needs is not None else []


def scanner(cfg: Any) -> Callable[[float, Any], None] | None:
    """A fold of the stage over the whole input, fed every frame of the split stage's one decode
    (its module's ``scanner(cfg)``): a callable ``(time, av_frame)`` with ``summary(start, end)``,
    which the split stage stores on each clip (``Sample.scan[label]``) for the stage to read instead
    of decoding the clip's span again. None when the stage reads its frames per clip."""
    make = getattr(_module(cfg.stage), "scanner", None)
    return make(cfg) if make is not None else None


def scanning(stages: list[Any]) -> tuple[Any, ...]:
    """The configs after the first split stage whose modules fold the split's decode."""
    kinds = [cfg.stage for cfg in stages]
    if "split" not in kinds:
        return ()
    later = stages[kinds.index("split") + 1 :]
    return tuple(cfg for cfg in later if scanner(cfg) is not None)


def check_stage(cfg: Any) -> None:
    """Raise :class:`MissingDependencyError` (with the pip command) if ``cfg`` cannot run here."""
    check = getattr(_module(cfg.stage), "check", None)
    if check is not None:
        check(cfg)


def require(module: str, *, stage: str, hint: str) -> None:
    """Fail start-up unless ``module`` is importable."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingDependencyError(f"stage {stage!r} needs the Python package {module!r}: {hint}")


def hub_cached(spec: str) -> bool:
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


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def bundled(module: str, pattern: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(p).rglob(pattern)) for p in spec.submodule_search_locations)


def loads(cfg: Any) -> list[dict[str, Any]]:
    """What one stage will load and whether each piece is available offline here (``--dry-run``): its
    module's ``facts(cfg)``, a list of (what, available offline); a module without one loads nothing
    beyond the built-in libraries."""
    facts = getattr(_module(cfg.stage), "facts", None)
    items = facts(cfg) if facts is not None else [("built-in (numpy / opencv / PyAV, no weights)", True)]
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
