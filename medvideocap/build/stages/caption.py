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
from medvideocap.build.stages import Context, MissingDependencyError, bad_data, hub_cached
from medvideocap.dataset.schema import Caption
from medvideocap.errors import DataError

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


def default_batch(cfg: CaptionStage) -> int:
    """Clips per captioner call when the recipe does not say: what the backend does at once (the local
    model's ``batch_size`` clips per ``generate``, the API's ``concurrency`` requests in flight); 1
    for sidecar captions."""
    if cfg.backend is None:
        return 1
    if cfg.backend == "transformers":
        return int(cfg.options.get("batch_size", 4))
    return int(cfg.options.get("concurrency", 8))


def run(sample: Sample, cfg: CaptionStage, ctx: Context) -> Sample | Reject:
    return run_batch([sample], cfg, ctx)[0]


def run_batch(samples: list[Sample], cfg: CaptionStage, ctx: Context) -> list[Sample | Reject]:
    """Every sample's captions, the captioner's in one ``caption_batch`` call (batched generation on a
    local model, concurrent requests to an API). A clip whose file cannot be cut or read is rejected
    alone; the others are captioned."""
    results: list[Sample | Reject] = list(samples)
    if cfg.backend is not None:
        from medvideocap.caption import sample_frames

        jobs: list[tuple[int, list[Any], Any]] = []
        for i, sample in enumerate(samples):
            try:
                frames, _times = sample_frames(Path(sample.media), cfg.frames)
            except DataError as exc:
                results[i] = bad_data(cfg.label, sample, exc)
                continue
            jobs.append((i, frames, to_record(sample)))
        replies = (
            _captioner(cfg).caption_batch([(f, r) for _, f, r in jobs], template=cfg.template) if jobs else []
        )
        for (i, _, _), result in zip(jobs, replies, strict=True):
            results[i] = _with_captions(samples[i], cfg, result)
    else:
        results = [_with_captions(sample, cfg, None) for sample in samples]
    return results


def _with_captions(sample: Sample, cfg: CaptionStage, result: Any) -> Sample | Reject:
    captions = sidecar_captions(sample.meta)
    if result is not None:
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
