"""The model that trains: Wan's transformer with LoRA adapters or fully trainable, and which of its
parameters the optimiser, EMA, checkpoints and exports see.

Its own module because the loop, :mod:`~medvideocap.train.checkpoint` and
:mod:`~medvideocap.train.validation` all need "the trainable parameters" and "the weight dtype" and must
agree on them (an EMA shadow saved under other names would not load back).
"""

from __future__ import annotations

from typing import Any

import torch

from medvideocap.train.config import TrainConfig
from medvideocap.train.ladder import cast_frozen_base


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of frozen weights and autocast for a ``mixed_precision`` setting."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def trainable_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of what trains, in a fixed order: the optimiser's, EMA's and the checkpoints'."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_transformer(
    cfg: TrainConfig, weight_dtype: torch.dtype, transformer: Any = None
) -> torch.nn.Module:
    """Wan's transformer (``cfg.model_id``, or the given one), with LoRA adapters (only they train) or
    fully trainable in fp32.

    LoRA keeps the frozen base in ``weight_dtype`` (bf16 halves memory; diffusers keeps Wan's norms and
    time embedder in fp32 on its own) and the adapters in fp32 so small updates are not rounded away."""
    from medvideocap.models import load_transformer

    dtype = weight_dtype if cfg.mode == "lora" else torch.float32
    if transformer is None:
        transformer = load_transformer(
            cfg.model_id, subfolder=cfg.transformer_subfolder, revision=cfg.revision, dtype=dtype
        )
    if cfg.mode == "lora":
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                init_lora_weights=True,
                target_modules=cfg.lora_target_modules,
            )
        )
        cast_training_params(transformer, dtype=torch.float32)
        cast_frozen_base(cfg, transformer, weight_dtype)
    else:
        transformer.requires_grad_(True)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer
