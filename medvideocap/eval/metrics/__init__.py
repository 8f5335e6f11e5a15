"""The evaluation metrics, one module each, and the table that names them.

``videoscore`` (TIGER-Lab's VideoScore, a Mantis-Idefics2-8B regression model) is not built in: it does not
load through plain transformers classes, and it is not a chat model, so an OpenAI-compatible server does not
serve its scores. To add it, write ``medvideocap/eval/metrics/videoscore.py`` with a :class:`Metric` whose
``score`` calls the model (e.g. behind a small HTTP service, sending frames the way
:mod:`medvideocap.caption.openai_api` does) and maps each of its five 1-4 ratings to [0, 1] by
``(r - 1) / 3``; then add it to :data:`METRICS`.
"""

from __future__ import annotations

from medvideocap.eval.metrics.aesthetic_quality import AestheticQuality
from medvideocap.eval.metrics.background_consistency import BackgroundConsistency
from medvideocap.eval.metrics.base import Metric, MetricError
from medvideocap.eval.metrics.imaging_quality import ImagingQualityClipIQA
from medvideocap.eval.metrics.interpolation_smoothness import FlowInterpolationSmoothness
from medvideocap.eval.metrics.subject_consistency import SubjectConsistency
from medvideocap.eval.metrics.temporal_flickering import TemporalFlickering
from medvideocap.eval.metrics.text_video_alignment import TextVideoAlignment

METRICS: dict[str, type[Metric]] = {
    cls.name: cls
    for cls in (
        SubjectConsistency,
        BackgroundConsistency,
        TemporalFlickering,
        FlowInterpolationSmoothness,
        ImagingQualityClipIQA,
        AestheticQuality,
        TextVideoAlignment,
    )
}


def parse_metric_models(specs: list[str] | tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``NAME=PATH_OR_ID`` / ``NAME.ROLE=PATH_OR_ID`` pairs -> {metric: {role: model}} (role "" = main)."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        name, _, role = key.strip().partition(".")
        if not sep or not value.strip() or not name:
            raise MetricError(
                f"--metric-model {spec!r}: expected NAME=PATH_OR_ID (e.g. subject_consistency=./dino)"
            )
        if name not in METRICS:
            raise MetricError(
                f"--metric-model {spec!r}: unknown metric {name!r}; known: {', '.join(METRICS)}"
            )
        out.setdefault(name, {})[role] = value.strip()
    return out


def build_metrics(
    names: list[str], models: dict[str, dict[str, str]] | None = None, *, device: str | None = None
) -> list[Metric]:
    """The selected metrics, in the order given; an unknown name fails with the list of known ones."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        hint = (
            " (videoscore is not built in: see `medvideocap eval --help`)" if "videoscore" in unknown else ""
        )
        raise MetricError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}{hint}")
    return [METRICS[n]((models or {}).get(n), device=device) for n in names]


__all__ = ["METRICS", "Metric", "MetricError", "build_metrics", "parse_metric_models"]
