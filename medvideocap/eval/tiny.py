"""Tiny random-weight DINO (``ViTModel``) and CLIP (``CLIPModel``) folders for tests and the benchmark.

They keep the real classes and folder layout of ``facebook/dino-vitb16`` and
``openai/clip-vit-base-patch32`` (config, weights, image processor, tokenizer) so each metric's real
loading code runs, but shrink every width so a video scores in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medvideocap.tiny import seeded, tiny_tokenizer


def save_tiny_dino(directory: str | Path, seed: int = 0, *, image_size: int = 32) -> Path:
    """A 1-layer ``ViTModel`` (hidden 16, patch 8) with DINO's ImageNet normalisation."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = Path(directory)
    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=image_size,
        patch_size=8,
    )
    with seeded(seed):
        model = ViTModel(config, add_pooling_layer=False)
    model.save_pretrained(out)
    ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)
    return out


def save_tiny_clip(directory: str | Path, seed: int = 0, *, image_size: int = 32) -> Path:
    """A 1-layer ``CLIPModel`` (projection 8) with CLIP's image processor and a byte-level tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(directory)
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    with seeded(seed):
        model = CLIPModel(config)
    model.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(out)
    return out


def save_tiny_aesthetic_head(path: str | Path, *, embed_dim: int = 8, rating: float = 5.0) -> Path:
    """A LAION-shaped MLP head whose output is ``rating`` for every input (zero weights, set bias), so a
    test knows the exact score; sized for the tiny CLIP's projection."""
    from safetensors.torch import save_file

    dims = [(1024, embed_dim), (128, 1024), (64, 128), (16, 64), (1, 16)]
    state = {}
    for i, (out_f, in_f) in zip((0, 2, 4, 6, 7), dims, strict=True):
        state[f"layers.{i}.weight"] = torch.zeros(out_f, in_f)
        state[f"layers.{i}.bias"] = torch.zeros(out_f)
    state["layers.7.bias"] = torch.tensor([float(rating)])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
