"""The memory ladder (medvideocap.train.ladder) on tiny random Wan models (CPU): fp8 storage of the frozen
base, block offloading, and 8-bit AdamW, each switched on by its config key and trained with for real.

What a CPU cannot show (see :func:`~medvideocap.train.ladder.offload_blocks`): blocks resident on the host
between uses while the step runs on CUDA, the stream prefetch, and the memory saved by any rung."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_train import latent_cache, tiny_pipeline_dir, tiny_train_config

from medvideocap.train import TrainConfig, checkpoint_dirs, train

__all__ = ["latent_cache", "tiny_pipeline_dir"]  # fixtures, imported for pytest


def _fixed_batch(cache: Path) -> Any:
    """The 4 clips' posterior means: with batch_size=4, one fixed batch, so the loss can only fall."""
    from medvideocap.latents import load_latents

    return load_latents(cache, split="train", posterior="mode")


FIT = {
    "mode": "lora",
    "batch_size": 4,
    "learning_rate": 1e-2,
    "weight_decay": 0.0,
    "caption_dropout": 0.0,
    "ema_decay": 0.0,
    "timestep_sampling": "uniform",
}


def test_the_ladder_keys_are_lora_only_and_a_full_run_is_refused_naming_them() -> None:
    for key, value in (("base_weights_dtype", "float8_e4m3fn"), ("offload_frozen_blocks", True)):
        with pytest.raises(ValueError, match="set mode=lora") as err:
            TrainConfig(mode="full", **{key: value})
        assert "base_weights_dtype" in str(err.value) and "offload_frozen_blocks" in str(err.value)
    assert TrainConfig(mode="full", optimizer="adamw8bit").optimizer == "adamw8bit"
    with pytest.raises(ValueError, match="base_weights_dtype"):
        TrainConfig(base_weights_dtype="float8_e5m2")


def test_fp8_base_stores_frozen_linears_in_float8_keeps_adapters_fp32_and_still_fits(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    cfg = tiny_train_config(
        tmp_path, tiny_pipeline_dir, latent_cache, base_weights_dtype="float8_e4m3fn", max_steps=30, **FIT
    )
    result = train(cfg, dataset=_fixed_batch(latent_cache))
    params = dict(result.transformer.named_parameters())
    base = {n: p for n, p in params.items() if ".base_layer." in n or ".ffn.net." in n}
    assert base and all(p.dtype == torch.float8_e4m3fn and not p.requires_grad for p in base.values())
    adapters = {n: p for n, p in params.items() if ".lora_A." in n or ".lora_B." in n}
    assert adapters and all(p.dtype == torch.float32 and p.requires_grad for p in adapters.values())
    # norms, embeddings and Wan's modulation tables stay in the compute dtype (diffusers' skip patterns)
    for name in ("blocks.0.norm2.weight", "patch_embedding.weight", "blocks.0.scale_shift_table"):
        assert params[name].dtype == torch.float32, name
    assert params["condition_embedder.time_embedder.linear_1.weight"].dtype == torch.float32
    assert all(p.abs().sum() > 0 for n, p in adapters.items() if ".lora_B." in n)  # adapters moved
    losses = np.array(result.losses)
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    again = train(
        cfg.model_copy(update={"output_dir": str(tmp_path / "again")}), dataset=_fixed_batch(latent_cache)
    )
    assert again.losses == result.losses  # the config's seed makes the fp8 run deterministic


def test_offloaded_blocks_get_diffusers_group_offload_hooks_and_a_run_completes(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    opts = {**FIT, "batch_size": 2, "max_steps": 3}
    cfg = tiny_train_config(
        tmp_path / "off", tiny_pipeline_dir, latent_cache, offload_frozen_blocks=True, **opts
    )
    result = train(cfg, dataset=_fixed_batch(latent_cache))
    model = result.transformer
    assert _is_group_offload_enabled(model)
    assert all(getattr(block, "_diffusers_hook", None) is not None for block in model.blocks)
    assert result.step == 3
    assert (tmp_path / "off" / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()
    plain = train(
        tiny_train_config(tmp_path / "plain", tiny_pipeline_dir, latent_cache, **opts),
        dataset=_fixed_batch(latent_cache),
    )
    assert not _is_group_offload_enabled(plain.transformer)
    np.testing.assert_allclose(result.losses, plain.losses, rtol=1e-5)  # on the CPU: the same computation


def test_adamw8bit_keeps_uint8_state_for_large_adapters_and_resumes_identically(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    # rank 192 on the tiny model's width 24: lora_A/B hold 4608 elements, over bitsandbytes' 4096 minimum
    opts = {**FIT, "batch_size": 2, "learning_rate": 1e-3, "lora_rank": 192, "lora_alpha": 192}
    opts.update(optimizer="adamw8bit", max_steps=4, checkpoint_every=100, ema_decay=0.9)
    straight = train(tiny_train_config(tmp_path / "a", tiny_pipeline_dir, latent_cache, **opts))
    first = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, stop_at_step=2, **opts))
    (checkpoint,) = checkpoint_dirs(tmp_path / "b" / "run")
    states = _optimizer_state(checkpoint)  # one per LoRA tensor: the two moments, 8-bit, as saved
    assert states and all(sorted(_uint8_sizes(s)) == [192 * 24, 192 * 24] for s in states), states
    resumed = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, **opts))
    assert resumed.resumed_from == checkpoint and resumed.steps == [3, 4]
    np.testing.assert_allclose(first.losses + resumed.losses, straight.losses, rtol=1e-5, atol=1e-6)


def _optimizer_state(checkpoint: Path) -> list[Any]:
    """The per-parameter state accelerate saved for the optimizer, read with its own loader."""
    from accelerate.utils import load

    saved: dict[str, Any] = load(checkpoint / "optimizer.bin")
    return list(saved["state"].values())


def _uint8_sizes(value: Any) -> list[int]:
    """Element counts of the uint8 tensors in a saved state, however bitsandbytes nests them."""
    if torch.is_tensor(value):
        return [value.numel()] if value.dtype == torch.uint8 else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
    return [n for item in items for n in _uint8_sizes(item)]


def test_fp8_text_encoder_samples_validation_videos_with_fp8_projections(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from diffusers import WanTransformer3DModel

    from medvideocap import plan
    from medvideocap.train import Validator

    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        text_encoder_dtype="float8_e4m3fn",
        validation_prompts=["a"],
    )
    validator = Validator(cfg, torch.device("cpu"))
    transformer = WanTransformer3DModel.from_pretrained(tiny_pipeline_dir / "transformer")
    out = validator(transformer, None, 1)
    assert (out / "00.mp4").stat().st_size > 0
    encoder = validator.pipe.text_encoder
    fp8 = {n for n, p in encoder.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert fp8 and {n.split(".")[-2] for n in fp8} == {"q", "k", "v", "o", "wi_0", "wi_1"}
    models = plan.model_configs(tiny_pipeline_dir)
    assert models.text_encoder_fp8_params() == sum(encoder.get_parameter(n).numel() for n in fp8)
