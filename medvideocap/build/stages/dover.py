"""DOVER technical-quality stage (optional: the ``dover`` package from github.com/VQAssessment/DOVER).

Follows DOVER's own single-video evaluation: its config file (``dover.yml``) gives the model
arguments and the view sampling; the two heads give technical and aesthetic raw scores, which are
fused into a 0-1 score with DOVER's published fusion constants (the paper's "DOVER score", e.g.
0.705). ``technical`` stores the fused score; the raw heads go to named scores."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

from medvideocap.build.recipe import DoverStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, MissingDependencyError, hub_cached, installed, require
from medvideocap.devices import resolve_device

_MODELS: dict[str, Any] = {}
_HINT = "pip install git+https://github.com/VQAssessment/DOVER (and set 'config:' to its dover.yml)"
_MEAN = (123.675, 116.28, 103.53)
_STD = (58.395, 57.12, 57.375)


_NEEDS = {
    "dover.models": ("DOVER",),
    "dover.datasets": ("UnifiedFrameSampler", "spatial_temporal_view_decomposition"),
}


def check(cfg: DoverStage) -> None:
    """Import exactly what :func:`run` will use: a package that is merely *named* ``dover`` (the
    unrelated one on the package registry) passes ``find_spec('dover')`` and then fails mid-run."""
    require("dover", stage=cfg.label, hint=_HINT)
    for module, names in _NEEDS.items():
        try:
            found = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure means DOVER is not usable here
            raise MissingDependencyError(
                f"stage {cfg.label!r}: the installed 'dover' package is not DOVER ({module}: "
                f"{type(exc).__name__}: {exc}); the registry package named dover is an unrelated tool: {_HINT}"
            ) from None
        missing = [n for n in names if not hasattr(found, n)]
        if missing:
            raise MissingDependencyError(
                f"stage {cfg.label!r}: {module} has no {', '.join(missing)}: the installed 'dover' is "
                f"not DOVER: {_HINT}"
            )
    if cfg.config is None:
        raise MissingDependencyError(f"stage {cfg.label!r}: set 'config:' to DOVER's dover.yml ({_HINT})")


def fuse(technical: float, aesthetic: float) -> float:
    """DOVER's default score-level fusion of its two heads into [0, 1]."""
    x = (technical - 0.1107) / 0.07355 * 0.6104 + (aesthetic - 0.08285) / 0.03774 * 0.3896
    return 1.0 / (1.0 + math.exp(-x))


def _load(cfg: DoverStage) -> tuple[Any, dict[str, Any], str]:
    key = cfg.model_dump_json()
    if key not in _MODELS:
        import torch
        import yaml
        from dover.models import DOVER

        from medvideocap.build.stages.aesthetic import resolve_file

        opt = yaml.safe_load(Path(str(cfg.config)).read_text())
        device = resolve_device(cfg.device)
        model = DOVER(**opt["model"]["args"]).to(device).eval()
        model.load_state_dict(torch.load(resolve_file(cfg.weights), map_location=device, weights_only=True))
        _MODELS[key] = (model, opt["data"]["val-l1080p"]["args"], device)
    return _MODELS[key]


def _views(path: str, dopt: dict[str, Any], device: str) -> dict[str, Any]:
    import torch
    from dover.datasets import UnifiedFrameSampler, spatial_temporal_view_decomposition

    samplers = {}
    for kind, sopt in dopt["sample_types"].items():
        if "t_frag" in sopt:
            samplers[kind] = UnifiedFrameSampler(
                sopt["clip_len"] // sopt["t_frag"], sopt["t_frag"], sopt["frame_interval"], sopt["num_clips"]
            )
        else:
            samplers[kind] = UnifiedFrameSampler(sopt["clip_len"], sopt["num_clips"], sopt["frame_interval"])
    views, _ = spatial_temporal_view_decomposition(path, dopt["sample_types"], samplers)
    mean, std = torch.tensor(_MEAN), torch.tensor(_STD)
    out = {}
    for kind, v in views.items():
        clips = dopt["sample_types"][kind].get("num_clips", 1)
        v = ((v.permute(1, 2, 3, 0) - mean) / std).permute(3, 0, 1, 2)
        out[kind] = v.reshape(v.shape[0], clips, -1, *v.shape[2:]).transpose(0, 1).to(device)
    return out


def run(sample: Sample, cfg: DoverStage, ctx: Context) -> Sample | Reject:
    import torch

    model, dopt, device = _load(cfg)
    with torch.inference_mode():
        technical, aesthetic = (float(r.mean()) for r in model(_views(sample.media, dopt, device)))
    score = round(fuse(technical, aesthetic), 6)
    sample.scores.update(
        technical=score, dover_technical_raw=round(technical, 6), dover_aesthetic_raw=round(aesthetic, 6)
    )
    if cfg.min is not None and score < cfg.min:
        return Reject(cfg.label, "low_technical", f"DOVER {score:.3f} < {cfg.min:g}", dict(sample.scores))
    return sample


def facts(cfg: DoverStage) -> list[tuple[str, bool]]:
    """What the stage loads and whether it is here offline (``--dry-run``)."""
    return [
        ("DOVER package (dover.models)", installed("dover")),
        (f"weights {cfg.weights}", hub_cached(cfg.weights)),
    ]
