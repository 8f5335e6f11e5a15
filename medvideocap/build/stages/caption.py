"""Caption stage: captions from the sidecar metadata, or from a captioner backend.

With ``backend`` set the stage calls :func:`medvideocap.caption.make_captioner` (loaded once per
worker process) on frames of the cut clip; otherwise it takes the sidecar's captions for the source
video (``caption_detailed``/``detailed_caption``/``caption``, ``caption_brief``/``brief_caption``,
or a ``captions`` object of name -> text), marked ``source: sidecar``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from medvideocap.build.recipe import CaptionStage
from medvideocap.build.record import CAPTION_KEYS, to_record
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, MissingDependencyError, hub_cached
from medvideocap.dataset.schema import Caption

_CAPTIONERS: dict[str, Any] = {}


def check(cfg: CaptionStage) -> None:
    if cfg.backend is None:
        return
    try:
        from medvideocap.caption import make_captioner, sample_frames  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"stage {cfg.label!r} asks for captioner backend {cfg.backend!r} but medvideocap.caption is not "
            f"available ({exc}); pip install 'medvideocap[caption]' or drop 'backend' to use sidecar captions"
        ) from exc


def sidecar_captions(meta: dict[str, Any]) -> list[dict[str, Any]]:
    texts: dict[str, str] = {}
    if isinstance(meta.get("captions"), dict):
        texts.update({str(k): str(v) for k, v in meta["captions"].items() if v})
    for name, keys in CAPTION_KEYS.items():
        value = next((meta[k] for k in keys if meta.get(k)), None)
        if value and name not in texts:
            texts[name] = str(value)
    styles: dict[str, Literal["detailed", "brief"]] = {"detailed": "detailed", "brief": "brief"}
    return [
        Caption(name=name, text=text.strip(), style=styles.get(name, "other"), source="sidecar").model_dump(
            mode="json"
        )
        for name, text in sorted(texts.items())
        if text.strip()
    ]


def _captioner(cfg: CaptionStage) -> Any:
    key = cfg.model_dump_json()
    if key not in _CAPTIONERS:
        from medvideocap.caption import make_captioner

        _CAPTIONERS[key] = make_captioner(str(cfg.backend), **cfg.options)
    return _CAPTIONERS[key]


def run(sample: Sample, cfg: CaptionStage, ctx: Context) -> Sample | Reject:
    captions = sidecar_captions(sample.meta)
    if cfg.backend is not None:
        from medvideocap.caption import sample_frames

        frames, _times = sample_frames(Path(sample.media), cfg.frames)
        result = _captioner(cfg).caption(frames, to_record(sample), template=cfg.template)
        if not result.ok:
            return Reject(cfg.label, "captioner_failed", str(result.error), dict(sample.scores))
        by_name = {c["name"]: c for c in captions}
        by_name.update({c.name: c.model_dump(mode="json") for c in result.captions})
        captions = [by_name[n] for n in sorted(by_name)]
    sample.captions = captions
    if cfg.required and not captions:
        return Reject(
            cfg.label, "no_caption", "no sidecar caption and no captioner configured", dict(sample.scores)
        )
    return sample


def facts(cfg: CaptionStage) -> list[tuple[str, bool]]:
    """What the stage loads and whether it is here offline (``--dry-run``)."""
    if cfg.backend is None:
        return [("captions from the sidecar metadata (no model)", True)]
    model = str(cfg.options.get("model", f"{cfg.backend} default"))
    if cfg.backend == "openai":
        url = str(cfg.options.get("base_url", "https://api.openai.com/v1"))
        local = any(h in url for h in ("localhost", "127.0.0.1", "[::1]"))
        return [(f"OpenAI-compatible API {url} ({model})", local)]
    return [(f"Hub model {model}", hub_cached(model))]
