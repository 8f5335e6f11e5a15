"""Aesthetic stage: the LAION improved aesthetic predictor (CLIP ViT-L/14 embedding -> MLP head).

The paper scores 5 frames and drops clips whose mean is below 3.0. The CLIP model and the MLP head
load lazily, once per worker process, from Hub ids by default (``clip_model``, ``head`` as
``hf://REPO/FILE``) or local paths (the tests pass a tiny random CLIP and a hand-set head).
The head file is a plain state dict, read with ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.build.recipe import AestheticStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, hub_cached, require
from medvideocap.devices import resolve_device
from medvideocap.locations import hub_model_file
from medvideocap.media.ffmpeg import FrameNeed

_MODELS: dict[tuple[str, ...], Any] = {}
HEAD_LAYERS = (0, 2, 4, 6, 7)  # Linear layers of the LAION MLP (Dropouts sit at 1, 3, 5)


def check(cfg: AestheticStage) -> None:
    for module in ("torch", "transformers"):
        require(module, stage=cfg.label, hint="pip install 'medvideocap[train]' (torch + transformers)")


def resolve_file(spec: str) -> Path:
    """A local path, or ``hf://OWNER/NAME/FILE`` fetched (and cached) with huggingface_hub."""
    hub = hub_model_file(spec)
    if hub is not None:
        repo, filename = hub
        if not filename:
            raise ValueError(f"{spec!r}: expected hf://OWNER/NAME/FILE")
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model file {spec!r} does not exist")
    return path


def clip_model(model_id: str, device: str) -> tuple[Any, Any]:
    """CLIP model and image processor for ``model_id`` on ``device``, loaded once per process (shared
    by the aesthetic stage and the evaluation metrics)."""
    key = ("clip", model_id, device)
    if key not in _MODELS:
        from transformers import CLIPImageProcessor, CLIPModel

        model = CLIPModel.from_pretrained(model_id).to(device).eval()  # type: ignore[arg-type]
        _MODELS[key] = (model, CLIPImageProcessor.from_pretrained(model_id))
    return _MODELS[key]


def clip_embeddings(model_id: str, images: list[np.ndarray], *, device: str = "auto") -> np.ndarray:
    """L2-normalised CLIP image embeddings, one row per RGB frame."""
    import torch

    dev = resolve_device(device)
    model, processor = clip_model(model_id, dev)
    inputs = processor(images=list(images), return_tensors="pt")
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=inputs["pixel_values"].to(dev))
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy()


def load_head(path: Path) -> Any:
    """The LAION MLP, sized from the state dict (so tiny test heads use the same code)."""
    import torch
    from torch import nn

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    dims = [state[f"layers.{i}.weight"].shape for i in HEAD_LAYERS]
    layers: list[nn.Module] = []
    for pos, (out_f, in_f) in zip(HEAD_LAYERS, dims, strict=True):
        while len(layers) < pos:
            layers.append(nn.Dropout({1: 0.2, 3: 0.2, 5: 0.1}[len(layers)]))
        layers.append(nn.Linear(in_f, out_f))
    head = nn.Module()
    head.layers = nn.Sequential(*layers)
    head.load_state_dict(state)
    return head.eval()


def _head(spec: str, device: str) -> Any:
    key = ("head", spec, device)
    if key not in _MODELS:
        _MODELS[key] = load_head(resolve_file(spec)).to(device)
    return _MODELS[key]


def score_frames(cfg: AestheticStage, images: list[np.ndarray]) -> list[float]:
    """The head's rating of each frame, in one CLIP call."""
    import torch

    dev = resolve_device(cfg.device)
    emb = torch.from_numpy(clip_embeddings(cfg.clip_model, images, device=cfg.device)).to(dev)
    with torch.inference_mode():
        return [float(v) for v in _head(cfg.head, dev).layers(emb).squeeze(-1).cpu()]


def needs(cfg: AestheticStage) -> list[FrameNeed]:
    return [FrameNeed(count=cfg.frames)]


GPU_BATCH = 16  # clips (of 5 frames) per CLIP call on a GPU when the recipe does not say


def default_batch(cfg: AestheticStage) -> int:
    """16 clips per call on a GPU; one on the CPU, where batching is no faster (measured at real size,
    random weights, 2 cores: 16 clips in one call took 1.02x and 1.11x the seconds of one call per
    clip in two runs; ``benchmarks/build_models.py``)."""
    return 1 if resolve_device(cfg.device) == "cpu" else GPU_BATCH


def run(sample: Sample, cfg: AestheticStage, ctx: Context) -> Sample | Reject:
    return run_batch([sample], cfg, ctx)[0]


def run_batch(samples: list[Sample], cfg: AestheticStage, ctx: Context) -> list[Sample | Reject]:
    """Every sample's frames scored in one CLIP call (the pipeline gathers ``cfg.batch`` clips, their
    frames already decoded: a clip whose frames could not be is rejected before it waits)."""
    frames = [sample.view(needs(cfg)[0]).images for sample in samples]
    scores = score_frames(cfg, [image for images in frames for image in images])
    results: list[Sample | Reject] = []
    for sample, images in zip(samples, frames, strict=True):
        own, scores = scores[: len(images)], scores[len(images) :]
        results.append(_verdict(sample, own, cfg))
    return results


def _verdict(sample: Sample, scores: list[float], cfg: AestheticStage) -> Sample | Reject:
    mean = round(float(np.mean(scores)), 6)
    sample.scores["aesthetic"] = mean
    if cfg.min is not None and mean < cfg.min:
        return Reject(
            cfg.label,
            "low_aesthetic",
            f"aesthetic {mean:.2f} (mean of {len(scores)} frames) < {cfg.min:g}",
            dict(sample.scores),
        )
    return sample


def facts(cfg: AestheticStage) -> list[tuple[str, bool]]:
    """What the stage loads and whether it is here offline (``--dry-run``)."""
    return [
        (f"Hub model {cfg.clip_model}", hub_cached(cfg.clip_model)),
        (f"head {cfg.head}", hub_cached(cfg.head)),
    ]
