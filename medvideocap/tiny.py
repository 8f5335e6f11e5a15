"""Tiny random-weight configs of the real Wan2.1 classes, for tests and the demo.

No weights can be downloaded in CI, yet the code paths (VAE encode, UMT5 text encoding, the Wan
transformer, ``WanPipeline``) must be exercised for real. These builders keep the exact classes and config
*shape* of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (VAE with ``latents_mean``/``latents_std``, UMT5 encoder +
fast tokenizer, ``WanTransformer3DModel`` with patch (1, 2, 2), a flow-prediction UniPC scheduler) but
shrink every width so a forward pass takes milliseconds on a CPU. Weights are deterministic per ``seed``
and building them does not disturb the global RNG.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

#: Latent channels of the tiny VAE (the real Wan2.1 VAE has 16).
TINY_Z_DIM = 4
#: Hidden size of the tiny UMT5 encoder (the real UMT5-XXL has 4096); the transformer's ``text_dim``.
TINY_TEXT_DIM = 32
#: Special tokens, in the ids T5 uses (pad 0, eos 1, unk 2), so padding masks work as in the real model.
_SPECIALS = ["<pad>", "</s>", "<unk>"]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block on a forked CPU RNG seeded with ``seed``: building a tiny model is reproducible and
    leaves the caller's RNG untouched. Public because every tiny-model builder (here and in
    :mod:`medvideocap.eval.tiny`) draws its random init through it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` with the real 4x temporal / 8x spatial compression and z_dim 4."""
    from diffusers import AutoencoderKLWan

    gen = torch.Generator().manual_seed(seed + 1)
    mean = (torch.randn(TINY_Z_DIM, generator=gen) * 0.1).round(decimals=4).tolist()
    std = (1.0 + torch.rand(TINY_Z_DIM, generator=gen)).round(decimals=4).tolist()
    with seeded(seed):
        vae: Any = AutoencoderKLWan(
            base_dim=8,
            z_dim=TINY_Z_DIM,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],
            latents_mean=mean,
            latents_std=std,
        )
    return vae.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer built in memory (no merges, 259 ids) with T5's pad/eos/unk ids.

    Every string tokenizes (byte fallback), an ``</s>`` is appended like T5, and padding uses id 0 so the
    attention mask the Wan pipeline derives from ``input_ids`` behaves as with the real UMT5 tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        padding_side="right",
    )


def tiny_text_encoder(seed: int = 0) -> tuple[UMT5EncoderModel, PreTrainedTokenizerFast]:
    """A 2-layer ``UMT5EncoderModel`` (d_model 32) and its locally built tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_tokenizer()
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=TINY_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with seeded(seed):
        encoder = UMT5EncoderModel(config)
    return encoder.eval(), tokenizer


def tiny_transformer(
    seed: int = 0,
    *,
    num_layers: int = 2,
    num_attention_heads: int = 2,
    attention_head_dim: int = 12,
    ffn_dim: int = 48,
) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` matching the tiny VAE (in/out = z_dim) and encoder (text_dim = d_model)."""
    from diffusers import WanTransformer3DModel

    with seeded(seed):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=TINY_Z_DIM,
            out_channels=TINY_Z_DIM,
            text_dim=TINY_TEXT_DIM,
            freq_dim=32,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,
        )
    return model


def tiny_scheduler(flow_shift: float = 3.0) -> Any:
    """The scheduler the real Wan2.1 T2V folders ship: UniPC in flow-prediction mode with a flow shift."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        num_train_timesteps=1000,
    )


def save_tiny_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """Write a folder laid out like ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` that ``WanPipeline.from_pretrained``
    loads, so every loader that takes a hub id can be pointed at it in tests."""
    from diffusers import WanPipeline

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    encoder, tokenizer = tiny_text_encoder(seed)
    pipe: Any = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=encoder,
        vae=tiny_vae(seed),
        scheduler=tiny_scheduler(),
        transformer=tiny_transformer(seed),
    )
    pipe.save_pretrained(out)
    # Record what this folder is, so nobody mistakes it for real weights.
    (out / "TINY_RANDOM_WEIGHTS.json").write_text(
        json.dumps({"what": "medvideocap.tiny random-init Wan2.1-shaped pipeline", "seed": seed}) + "\n"
    )
    return out
