"""Tiny random-weight DINO (``ViTModel``), CLIP (``CLIPModel``) and VideoScore (Idefics2) folders and a MUSIQ
checkpoint for tests and the benchmark.

They keep the real classes and folder layout of ``facebook/dino-vitb16``, ``openai/clip-vit-base-patch32``,
``TIGER-Lab/VideoScore-v1.1`` (config, weights, image processor, tokenizer) and pyiqa's MUSIQ-SPAQ ``.pth``
so each metric's real loading code runs, but shrink every width so a video scores in well under a second on
a CPU.
"""

from __future__ import annotations

import json
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


def save_tiny_videoscore(
    directory: str | Path,
    seed: int = 0,
    *,
    ratings: tuple[float, float, float, float, float] | None = None,
    image_size: int = 32,
) -> Path:
    """A VideoScore-shaped checkpoint: a 1-layer Idefics2 backbone (vision width 16, patch 8, 4 perceiver
    latents, Mistral width 32) saved as Mantis' ``Idefics2ForSequenceClassification`` saves it (backbone under
    ``model.``, a 5-output ``score`` head, sharded safetensors with ``model.safetensors.index.json``) beside
    the Idefics2 processor files, so :mod:`medvideocap.eval.metrics.videoscore` loads it like the real one.

    The head is random around the middle of the 1-4 scale (each rating about 2.5 +- 0.5), or, with
    ``ratings``, zero weights and those biases, so a test knows the exact output. Weights are deterministic
    per ``seed``.
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import Idefics2Config, Idefics2ImageProcessor, Idefics2Model, Idefics2Processor

    from medvideocap.eval.metrics.videoscore import ASPECTS, BACKBONE_PREFIX, HEAD_BIAS, HEAD_WEIGHT

    out = Path(directory)
    # A wider init than transformers' 0.02, and random perceiver latents instead of all-ones: at the default
    # every image token comes out of the resampler as nearly the same vector, so frames barely move the
    # ratings and a test could not tell a static video from noise.
    latents, hidden, init = 4, 32, 0.2
    processor = Idefics2Processor(
        image_processor=Idefics2ImageProcessor(
            do_image_splitting=False,
            size={"longest_edge": image_size, "shortest_edge": image_size // 2},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
        tokenizer=tiny_tokenizer(),
        image_seq_len=latents,
    )
    tokenizer = processor.tokenizer
    config = Idefics2Config(
        architectures=["Idefics2ForSequenceClassification"],
        id2label={i: f"LABEL_{i}" for i in range(len(ASPECTS))},
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
            "initializer_range": init,
        },
        perceiver_config={
            "hidden_size": hidden,
            "resampler_n_latents": latents,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 8,
            "num_key_value_heads": 1,
            "initializer_range": init,
        },
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "sliding_window": 4096,
            "pad_token_id": tokenizer.pad_token_id,
            "initializer_range": init,
        },
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with seeded(seed):
        backbone = Idefics2Model(config)
        torch.nn.init.normal_(backbone.connector.perceiver_resampler.latents)
    state = {BACKBONE_PREFIX + k: v.contiguous() for k, v in backbone.state_dict().items()}
    if ratings is None:
        state[HEAD_WEIGHT] = torch.randn(len(ASPECTS), hidden, generator=gen) * 0.5 / hidden**0.5
        state[HEAD_BIAS] = torch.full((len(ASPECTS),), 2.5)
    else:
        state[HEAD_WEIGHT] = torch.zeros(len(ASPECTS), hidden)
        state[HEAD_BIAS] = torch.tensor([float(r) for r in ratings])
    out.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state, out, max_shard_size="64KB")
    config.save_pretrained(out)
    # The 4.4x layout the real checkpoint ships: preprocessor_config.json for the image processor and a
    # processor_config.json holding only image_seq_len, so the legacy files are what the loader reads.
    tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    (out / "processor_config.json").write_text(
        json.dumps({"image_seq_len": latents, "processor_class": "Idefics2Processor"}, indent=2) + "\n"
    )
    return out


def save_tiny_musiq(path: str | Path, seed: int = 0, *, hidden: int = 64, mos: float = 50.0) -> Path:
    """A MUSIQ checkpoint as pyiqa saves one (a plain state_dict in a ``.pth``) for pyiqa's real
    architecture shrunk to one transformer block of width ``hidden`` (one 64-wide head) and an MLP of
    ``2 * hidden``; the ResNet stem, 32-px patches, 10x10 position grid and three scales stay real.

    The head is random around ``mos`` (about +-5 on the 0-100 scale): wide enough that a sharp frame, a
    blurred one and noise get told apart, near enough to the middle that the /100 score is not clipped.
    """
    from pyiqa.archs.musiq_arch import MUSIQ

    from medvideocap.eval.metrics.imaging_quality_musiq import HEAD_DIM

    with seeded(seed):
        model = MUSIQ(
            pretrained=False,
            hidden_size=hidden,
            mlp_dim=2 * hidden,
            num_heads=max(1, hidden // HEAD_DIM),
            num_layers=1,
        )
        torch.nn.init.normal_(model.head.weight, std=10.0 / hidden**0.5)
        torch.nn.init.constant_(model.head.bias, mos)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return out
