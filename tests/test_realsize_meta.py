"""The default models at their real size, built from the configs medvideocap ships
(:mod:`medvideocap.models`) on the ``meta`` device: real shapes, no weights, no memory, no download.

Pins down that the shipped configs are the published models (parameter counts as published) and that our
code paths take them: the trainer's LoRA targets exist in the real transformer, and the 512-token text
window the encoder, the trainer and WanPipeline share fits the real transformer's text width."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from medvideocap.models import UMT5_XXL_ENCODER_CONFIG, WAN_1_3B_TRANSFORMER_CONFIG, WAN_VAE_CONFIG


def _real_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel(**WAN_1_3B_TRANSFORMER_CONFIG)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_shipped_configs_build_the_published_models() -> None:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        vae: Any = AutoencoderKLWan(**WAN_VAE_CONFIG)
        encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL_ENCODER_CONFIG))
    transformer = _real_transformer()
    assert all(p.device.type == "meta" for m in (transformer, vae, encoder) for p in m.parameters())
    assert _count(transformer) == 1_418_996_800
    assert _count(vae) == 126_892_531
    # The embedding is stored once: UMT5EncoderModel ties encoder.embed_tokens to shared.
    assert encoder.get_input_embeddings().weight is encoder.shared.weight
    assert _count(encoder) == 5_680_910_336


def test_the_shipped_vae_config_is_the_one_diffusers_builds_by_default() -> None:
    """diffusers' AutoencoderKLWan defaults are the Wan2.1 VAE: our copy (with the latent moments every
    cache is normalised by) must not drift from them."""
    from diffusers import AutoencoderKLWan

    defaults = {
        name: p.default for name, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()
    }
    assert {k: defaults[k] for k in WAN_VAE_CONFIG} == WAN_VAE_CONFIG


def test_the_text_encoder_width_is_the_transformers_text_width() -> None:
    assert UMT5_XXL_ENCODER_CONFIG["d_model"] == WAN_1_3B_TRANSFORMER_CONFIG["text_dim"] == 4096
    assert WAN_VAE_CONFIG["z_dim"] == WAN_1_3B_TRANSFORMER_CONFIG["in_channels"] == 16


def test_shipped_lora_targets_exist_in_the_real_1_3b_architecture() -> None:
    from medvideocap.train import build_transformer, load_config

    real = _real_transformer()
    with torch.device("meta"):
        model = build_transformer(load_config("medgen-1.3b-lora"), torch.bfloat16, transformer=real)
    lora = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # 30 blocks x (self + cross attention) x (q, k, v, out) x rank 32 x (1536 in + 1536 out)
    assert sum(lora.values()) == 30 * 2 * 4 * 32 * (1536 + 1536)
    assert all(".lora_A." in n or ".lora_B." in n for n in lora)


def test_the_512_token_text_window_is_shared_and_the_real_transformer_takes_it() -> None:
    from diffusers import WanPipeline

    from medvideocap.latents.encode import EncodeConfig
    from medvideocap.train import TrainConfig, load_config

    window = inspect.signature(WanPipeline.__call__).parameters["max_sequence_length"].default
    assert window == 512
    assert EncodeConfig().max_length == TrainConfig().text_seq_len == window
    assert (
        load_config("medgen-1.3b-lora").text_seq_len == load_config("medgen-1.3b-full").text_seq_len == window
    )
    transformer = _real_transformer()
    # 81 frames at 480x832 -> latents (16, 21, 60, 104), as the trainer feeds them; shapes only (meta)
    with torch.device("meta"):
        latents = torch.zeros(1, 16, 21, 60, 104)
        text = torch.zeros(1, window, UMT5_XXL_ENCODER_CONFIG["d_model"])
        out = transformer(
            hidden_states=latents, timestep=torch.zeros(1), encoder_hidden_states=text, return_dict=False
        )[0]
    assert out.shape == latents.shape


def test_the_14b_config_builds_the_published_14b_transformer_and_takes_the_shipped_lora() -> None:
    """14,288,491,584 parameters: the element count of the published transformer safetensors (the 14B's
    transformer is also each expert of Wan2.2-T2V-A14B, whose per-expert count public model indexes give
    as this number; Wan-AI/Wan2.1-T2V-14B-Diffusers stores it as 12 fp32 shards, 57.15 GB = 4 bytes x
    this count). The config is the diffusers repo's transformer/config.json, which equals
    WanTransformer3DModel's defaults."""
    from diffusers import WanTransformer3DModel

    from medvideocap.models import WAN_14B_TRANSFORMER_CONFIG
    from medvideocap.train import build_transformer, load_config

    defaults = {
        name: p.default for name, p in inspect.signature(WanTransformer3DModel.__init__).parameters.items()
    }
    assert {k: defaults[k] for k in WAN_14B_TRANSFORMER_CONFIG} == WAN_14B_TRANSFORMER_CONFIG
    with torch.device("meta"):
        real: Any = WanTransformer3DModel(**WAN_14B_TRANSFORMER_CONFIG)
    assert _count(real) == 14_288_491_584
    with torch.device("meta"):
        model = build_transformer(load_config("medgen-14b-lora"), torch.bfloat16, transformer=real)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora == 40 * 2 * 4 * 32 * (5120 + 5120)  # 40 blocks x 2 attentions x (q, k, v, out)
