"""The trainer's memory ladder: the rungs a run climbs when the model does not fit, each one config key.

* ``base_weights_dtype: float8_e4m3fn`` (LoRA): the frozen base's Linear/Conv weights are stored in fp8
  and cast to the compute dtype one layer at a time, around its forward (diffusers' layerwise casting).
  Halves the frozen weights next to bf16; the adapters, norms, embeddings and the kept-in-fp32 modules are
  skipped (diffusers' defaults plus Wan's ``_skip_layerwise_casting_patterns`` and peft's adapter layer
  names), so what trains keeps its dtype.
* ``offload_frozen_blocks: true`` (LoRA): the transformer's blocks live on the CPU and are moved to the
  training device one block at a time, around its forward (diffusers' block-level group offloading, with a
  CUDA stream to prefetch the next block when the device is CUDA).
* ``optimizer: adamw8bit``: bitsandbytes' AdamW with 8-bit (blockwise-quantised) moments, a quarter of
  AdamW's fp32 state for every tensor of at least 4096 elements (bitsandbytes' ``min_8bit_size``;
  smaller ones keep fp32 state).

* ``text_encoder_dtype: float8_e4m3fn``: the UMT5 the validation videos load (11.4 GB in bf16, kept on
  the device beside the training state) stores its attention and FFN input projections in fp8, by the
  same diffusers layerwise casting (3.6 of UMT5-XXL's 5.7B parameters); its embeddings, norms and FFN
  output (``wo``, whose dtype transformers' T5 layer casts its input to, which would quantise the
  activations) keep theirs.

Why this module: each rung is a library's own mechanism (diffusers hooks, bitsandbytes), but which one a
key turns on, with what arguments and in which order relative to peft and accelerate, is one decision;
:mod:`~medvideocap.train.model` and :mod:`~medvideocap.train.prepare` call it with one line each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from medvideocap.train.config import TrainConfig

#: ``base_weights_dtype`` values -> the storage dtype of the frozen base weights.
STORAGE_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn}


def cast_frozen_base(cfg: TrainConfig, transformer: Any, compute_dtype: torch.dtype) -> None:
    """Store the frozen base weights in ``cfg.base_weights_dtype`` (no-op when unset), computing in
    ``compute_dtype``. Call after the LoRA adapters are added: ``enable_layerwise_casting`` then skips
    them by peft's layer names, and disables peft's input autocast on the wrapped layers, which would
    otherwise cast activations to the fp8 storage dtype."""
    if cfg.base_weights_dtype is None:
        return
    transformer.enable_layerwise_casting(
        storage_dtype=STORAGE_DTYPES[cfg.base_weights_dtype], compute_dtype=compute_dtype
    )


#: UMT5/T5 modules the text encoder's fp8 storage leaves alone: norms, ``wo`` (see the module docstring)
#: and the embeddings, whose whole table (1.05B rows x width for UMT5-XXL) casting would copy back to the
#: compute dtype at every forward.
TEXT_ENCODER_FP8_SKIP = ("norm", "wo", "shared", "embed_tokens", "relative_attention_bias")


def cast_text_encoder(cfg: TrainConfig, text_encoder: Any, compute_dtype: torch.dtype) -> None:
    """Store the text encoder's projections in ``cfg.text_encoder_dtype`` (no-op when unset), computing
    in ``compute_dtype``, with diffusers' ``apply_layerwise_casting`` (it works on any ``nn.Module``)."""
    if cfg.text_encoder_dtype is None:
        return
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(
        text_encoder,
        storage_dtype=STORAGE_DTYPES[cfg.text_encoder_dtype],
        compute_dtype=compute_dtype,
        skip_modules_pattern=TEXT_ENCODER_FP8_SKIP,
    )


def offload_blocks(cfg: TrainConfig, transformer: Any, device: torch.device) -> None:
    """Keep the transformer's blocks on the CPU and bring each to ``device`` for its forward (no-op when
    ``cfg.offload_frozen_blocks`` is off). Call before ``accelerator.prepare``: diffusers refuses to move
    a group-offloaded model, so accelerate's device placement leaves the offloaded blocks where they are.

    On a CPU-only machine the onload device is the CPU, so only the hooks show; that the blocks sit on
    the host between uses, that a CUDA stream overlaps the next block's copy with compute, and that the
    adapters' gradients and the optimizer step agree on a device while their block is offloaded, need a
    CUDA device to be shown."""
    if not cfg.offload_frozen_blocks:
        return
    transformer.enable_group_offload(
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=device.type == "cuda",
    )


def make_optimizer(cfg: TrainConfig, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params``: torch's AdamW, or bitsandbytes' ``AdamW8bit`` with the same
    hyper-parameters (its state is plain tensors, so accelerate's ``save_state``/``load_state`` carry it
    through checkpoints unchanged)."""
    kwargs: dict[str, Any] = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_epsilon,
        "weight_decay": cfg.weight_decay,
    }
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ImportError(
                "optimizer=adamw8bit needs bitsandbytes: pip install 'medvideocap[train]' (or "
                "bitsandbytes>=0.45), or set optimizer=adamw"
            ) from exc
        optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(list(params), **kwargs)
        return optimizer
    return torch.optim.AdamW(list(params), **kwargs)
