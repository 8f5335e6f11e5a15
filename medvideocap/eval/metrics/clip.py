"""CLIP image and text features for the CLIP-based metrics, through the model cache the build's aesthetic
stage owns (:mod:`medvideocap.build.stages.aesthetic`), so a model two metrics share loads once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medvideocap.build.stages import aesthetic


def image_features(model_id: str, video: np.ndarray, *, device: str) -> np.ndarray:
    """L2-normalised CLIP image embeddings ``(T, D)``, one per frame (CLIP's own resize and centre crop)."""
    return aesthetic.clip_embeddings(model_id, list(video), device=device)


def text_features(model_id: str, texts: Sequence[str], *, device: str) -> np.ndarray:
    """L2-normalised CLIP text embeddings ``(N, D)``; texts longer than the model's context are truncated
    (77 tokens for OpenAI CLIP), as CLIPScore does."""
    import torch
    from transformers import AutoTokenizer

    model, _ = aesthetic.clip_model(model_id, device)
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    inputs = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = model.get_text_features(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
        )
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy()
