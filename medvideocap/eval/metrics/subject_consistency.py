"""``subject_consistency``: does the main subject keep its identity from frame to frame (VBench)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medvideocap.eval.metrics.base import Metric, check_video, consistency

_MODELS: dict[tuple[str, str], tuple[Any, Any]] = {}


def _dino(model_id: str, device: str) -> tuple[Any, Any]:
    key = (model_id, device)
    if key not in _MODELS:
        from transformers import ViTImageProcessor, ViTModel

        model = ViTModel.from_pretrained(model_id, add_pooling_layer=False).to(device).eval()  # type: ignore[arg-type]
        _MODELS[key] = (model, ViTImageProcessor.from_pretrained(model_id))
    return _MODELS[key]


def dino_features(model_id: str, video: np.ndarray, *, device: str) -> np.ndarray:
    """DINO CLS features ``(T, D)`` with VBench's transform: shorter side resized to the model's input size
    (224 for ViT-B/16), no crop, ImageNet normalisation; position embeddings interpolated to the shape."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    model, processor = _dino(model_id, device)
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    frames = TF.resize(frames, [int(model.config.image_size)], antialias=False).float() / 255.0
    frames = TF.normalize(frames, list(processor.image_mean), list(processor.image_std))
    with torch.inference_mode():
        out = model(pixel_values=frames.to(device), interpolate_pos_encoding=True)
    return out.last_hidden_state[:, 0].float().cpu().numpy()


class SubjectConsistency(Metric):
    name = "subject_consistency"
    definition = (
        "DINO ViT-B/16 CLS features per frame; for each frame after the first, the mean of its cosine to the "
        "first and to the previous frame (each clipped at 0); averaged over frames."
    )
    normalisation = "already in [0, 1] (cosines clipped at 0); 1 = every frame looks like the first"
    relation_to_vbench = (
        "VBench's subject_consistency: same model, rule and transform (all frames, shorter side to 224); "
        "DINO is loaded through transformers' ViTModel instead of torch.hub."
    )
    default_models = {"": "facebook/dino-vitb16"}

    def score(self, video: np.ndarray, prompt: str) -> float:
        return consistency(
            dino_features(
                self.models[""], check_video(video, min_frames=2, metric=self.name), device=self.device
            )
        )
