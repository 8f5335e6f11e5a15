"""How fast a run goes, in the units people compare: s/step, samples/s, tokens/s, peak memory, MFU, ETA.

Why MFU is computed here rather than by a profiler: Wan's cost per step follows from its config and the
token counts alone, and a number that is cheap at every log step is one that gets looked at. The count is
*model* FLOPs, 3x the forward (forward + backward), as MFU is usually defined: gradient checkpointing's
recomputed forward and the weight gradients LoRA skips are not counted, so a LoRA run with checkpointing
does more hardware work than its MFU says. No MFU on CPUs (no meaningful peak to divide by).
"""

from __future__ import annotations

from typing import Any

from medvideocap.progress import duration
from medvideocap.progress import rate as progress_rate

#: Dense bf16 tensor-core peak per card, FLOP/s, from the vendors' data sheets (without sparsity),
#: matched against ``torch.cuda.get_device_name()``; first match wins, so longer names come first.
CARD_PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "4090": 165e12,
}


def transformer_flops_per_token(config: Any, video_tokens: int, text_tokens: int) -> float:
    """Forward FLOPs per video token of a Wan transformer (``WanTransformer3DModel`` config) on a sample of
    ``video_tokens`` tokens conditioned on ``text_tokens``: per block self-attention (projections and
    scores), cross-attention (its text keys/values spread over the sample's tokens) and the FFN; plus the
    patch embedding, the output projection and the text embedder. 2 FLOPs per multiply-add."""
    cfg = config if isinstance(config, dict) else dict(config)
    d = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    patch = int(cfg["patch_size"][0]) * int(cfg["patch_size"][1]) * int(cfg["patch_size"][2])
    t, lt = video_tokens, text_tokens
    block = (
        4 * d * d  # self-attention q, k, v, out
        + 2 * t * d  # its scores and weighted sum
        + 2 * d * d  # cross-attention q, out
        + 2 * d * d * lt / t  # cross-attention k, v of the text tokens, per video token
        + 2 * lt * d  # its scores and weighted sum
        + 2 * d * int(cfg["ffn_dim"])  # FFN up and down
    )
    edges = patch * d * (int(cfg["in_channels"]) + int(cfg["out_channels"]))
    text = (int(cfg["text_dim"]) * d + d * d) * lt / t
    return 2.0 * (int(cfg["num_layers"]) * block + edges + text)


def card_peak_flops(device: Any) -> float | None:
    """The bf16 dense peak of a CUDA ``device``'s card, or None (CPU, or a card not in the table)."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in CARD_PEAK_BF16.items() if key in name), None)


def rate(steps_per_s: float) -> str:
    """``1.52 s/step`` when slower than a step a second (most real runs), else ``3.1 steps/s``
    (:func:`medvideocap.progress.rate`, the one rate formatter)."""
    return progress_rate(steps_per_s, "step")


__all__ = ["CARD_PEAK_BF16", "card_peak_flops", "duration", "rate", "transformer_flops_per_token"]
