"""The models every stage after the dataset shares: the video VAE, the text encoder, the transformer.

``encode-latents``, the trainer (on-the-fly encoding, the empty-prompt embedding), ``generate`` and
evaluation all load and run them, so each step is written here once:

* :func:`encode_prompts` is how a caption becomes conditioning (Wan's pipeline: whitespace collapsed,
  ``max_length`` padding, the unpadded rows kept), so a cached embedding equals what inference computes;
* :func:`sample_posterior` is the one reparameterised draw from a VAE posterior, with the log-variance
  clip diffusers' ``DiagonalGaussianDistribution`` applies. Cached latents store mean and log-variance;
  the trainer draws on its own device, so the loader only moves bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: diffusers' ``DiagonalGaussianDistribution`` clamps the log-variance to this range before exp().
LOGVAR_RANGE = (-30.0, 20.0)


def sample_posterior(
    mean: torch.Tensor, logvar: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``mean + exp(logvar / 2) * eps`` with the log-variance clipped as diffusers clips it.

    ``eps`` is drawn on ``mean``'s device from ``generator`` (which must live on that device), in
    ``mean``'s dtype, so the same generator state gives the same sample wherever this is called.
    """
    import torch

    std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE).to(mean.dtype))
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * eps


def clean_prompt(text: str) -> str:
    """Wan's pipeline collapses whitespace before tokenising; embed exactly what inference will see."""
    return " ".join(text.split())


def encode_prompts(
    text_encoder: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_length: int,
    device: torch.device | str,
) -> list[torch.Tensor]:
    """Unpadded ``(L_i, D)`` float32 embeddings on ``device``, computed as WanPipeline computes them.

    Tokenised to ``max_length`` with padding, encoded with the attention mask, and cut back to each
    prompt's real tokens: Wan's cross-attention takes no mask, so callers zero-pad to ``max_length``
    again when they build a batch (the zeros are what the model learned to ignore).
    """
    import torch

    tok = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    lens = tok.attention_mask.gt(0).sum(dim=1).tolist()
    with torch.inference_mode():
        hidden = text_encoder(tok.input_ids.to(device), tok.attention_mask.to(device)).last_hidden_state
    return [hidden[i, :n].float() for i, n in enumerate(lens)]
