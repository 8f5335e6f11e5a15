"""The tiny random Wan2.1-shaped models others test with: real classes, matching shapes, loadable
as a WanPipeline folder, deterministic, and built without touching the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvideocap.tiny import (
    TINY_TEXT_DIM,
    TINY_Z_DIM,
    save_tiny_pipeline,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_transformer,
    tiny_vae,
)


def test_tiny_vae_compresses_like_wan_and_carries_latent_statistics() -> None:
    vae: Any = tiny_vae()  # diffusers' classes carry no attribute types
    assert type(vae).__name__ == "AutoencoderKLWan"
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == TINY_Z_DIM
    video = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(video).latent_dist
        decoded = vae.decode(dist.mode()).sample
    assert dist.mean.shape == (1, TINY_Z_DIM, 2, 4, 6)  # 4x temporal (1 + 4k frames), 8x spatial
    assert decoded.shape == video.shape


def test_tiny_tokenizer_uses_t5_ids_for_pad_and_eos_and_never_fails_on_text() -> None:
    tok = tiny_tokenizer()
    batch = tok(
        ["Echocardiogram, apical 4-chamber view — µm", ""],
        padding="max_length",
        max_length=64,
        truncation=True,
        return_tensors="pt",
    )
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    n0, n1 = (int(x) for x in batch.attention_mask.sum(dim=1))
    assert batch.input_ids[0, n0 - 1] == 1 and batch.input_ids[1].tolist()[:2] == [1, 0] and n1 == 1
    assert tok.unk_token_id not in batch.input_ids[0].tolist()  # byte-level: every character encodes
    assert tok.decode(batch.input_ids[0, : n0 - 1]) == "Echocardiogram, apical 4-chamber view — µm"


def test_tiny_transformer_matches_vae_and_text_encoder_shapes() -> None:
    encoder, tok = tiny_text_encoder()
    model: Any = tiny_transformer()
    assert model.config.in_channels == model.config.out_channels == TINY_Z_DIM
    assert model.config.text_dim == encoder.config.d_model == TINY_TEXT_DIM
    ids = tok(["laparoscopic suturing"], return_tensors="pt")
    with torch.no_grad():
        text = encoder(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        out = model(
            torch.randn(2, TINY_Z_DIM, 2, 4, 6),
            timestep=torch.tensor([10.0, 900.0]),
            encoder_hidden_states=text.expand(2, -1, -1),
            return_dict=False,
        )[0]
    assert out.shape == (2, TINY_Z_DIM, 2, 4, 6)


def test_tiny_models_are_deterministic_per_seed_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models: list[Any] = [tiny_transformer(seed=0), tiny_transformer(seed=0), tiny_transformer(seed=1)]
    assert torch.equal(torch.rand(3), expected)
    wa, wb, wc = (m.proj_out.weight for m in models)
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_saved_tiny_pipeline_loads_in_wanpipeline_and_generates(tmp_path: Path) -> None:
    from diffusers import WanPipeline

    folder = save_tiny_pipeline(tmp_path / "wan")
    index = json.loads((folder / "model_index.json").read_text())
    assert {"vae", "transformer", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt="CPR demonstration on a manikin",
        num_frames=5,
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    frames = np.asarray(out.frames)
    assert frames.shape == (1, 5, 32, 32, 3)
    assert np.isfinite(frames).all() and frames.min() >= 0.0 and frames.max() <= 1.0
