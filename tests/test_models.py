"""medvideocap.models: the one place the VAE, text encoder and transformer are loaded and run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from medvideocap import models
from medvideocap.tiny import save_tiny_pipeline, tiny_text_encoder, tiny_transformer, tiny_vae


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-wan") / "model")


# ------------------------------------------------------------------------------------------ sample_posterior


def test_sample_posterior_clips_the_log_variance_as_diffusers_does() -> None:
    mean = torch.zeros(2, 3)
    low, high = models.LOGVAR_RANGE
    for wild, bound in ((torch.full((2, 3), 80.0), high), (torch.full((2, 3), -200.0), low)):
        clipped = models.sample_posterior(mean, wild, generator=torch.Generator().manual_seed(1))
        at_bound = models.sample_posterior(
            mean, torch.full((2, 3), bound), generator=torch.Generator().manual_seed(1)
        )
        assert torch.isfinite(clipped).all()
        torch.testing.assert_close(clipped, at_bound, rtol=0, atol=0)


def test_sample_posterior_is_mean_plus_std_times_the_generators_noise() -> None:
    mean = torch.linspace(-1, 1, 12).reshape(3, 4)
    logvar = torch.linspace(-2, 1, 12).reshape(3, 4)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    got = models.sample_posterior(mean, logvar, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, mean + torch.exp(0.5 * logvar) * eps)


def test_sample_posterior_repeats_for_one_seed_and_differs_across_seeds() -> None:
    mean, logvar = torch.zeros(4, 5), torch.zeros(4, 5)
    a = models.sample_posterior(mean, logvar, generator=torch.Generator().manual_seed(3))
    b = models.sample_posterior(mean, logvar, generator=torch.Generator().manual_seed(3))
    c = models.sample_posterior(mean, logvar, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_posterior_draws_in_the_means_dtype() -> None:
    mean, logvar = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float32)
    assert models.sample_posterior(mean, logvar).dtype == torch.float64


# ------------------------------------------------------------------------------------------- encode_prompts


def test_encode_prompts_equals_the_unpadded_rows_of_a_direct_encoder_call() -> None:
    encoder, tokenizer = tiny_text_encoder()
    prompts = ["an endoscopy of the  stomach", "suture"]
    got = models.encode_prompts(encoder, tokenizer, prompts, max_length=24, device="cpu")
    tok = tokenizer(
        [" ".join(p.split()) for p in prompts],
        padding="max_length",
        max_length=24,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = encoder(tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
    lengths = tok.attention_mask.sum(dim=1).tolist()
    assert [e.shape for e in got] == [(n, encoder.config.d_model) for n in lengths]
    assert lengths[0] != lengths[1]
    for row, n, emb in zip(hidden, lengths, got, strict=True):
        assert emb.dtype == torch.float32
        torch.testing.assert_close(emb, row[:n])


def test_encode_prompts_sees_what_wan_sees_after_whitespace_is_collapsed() -> None:
    encoder, tokenizer = tiny_text_encoder()
    messy, clean = models.encode_prompts(
        encoder, tokenizer, ["  a\tlaparoscopic\n view ", "a laparoscopic view"], max_length=32, device="cpu"
    )
    assert models.clean_prompt("  a\tlaparoscopic\n view ") == "a laparoscopic view"
    torch.testing.assert_close(messy, clean)


def test_encode_prompts_truncates_to_max_length() -> None:
    encoder, tokenizer = tiny_text_encoder()
    (emb,) = models.encode_prompts(encoder, tokenizer, ["word " * 200], max_length=16, device="cpu")
    assert emb.shape[0] == 16


# ------------------------------------------------------------------------------------------------- loading


def _same_weights(a: Any, b: Any) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def test_load_vae_reads_the_saved_weights_frozen_on_the_asked_device_and_dtype(tiny_dir: Path) -> None:
    vae = models.load_vae(str(tiny_dir), device="cpu", dtype="float32")
    assert type(vae).__name__ == "AutoencoderKLWan"
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert _same_weights(vae, tiny_vae())
    half = models.load_vae(str(tiny_dir), device="cpu", dtype=torch.bfloat16, tiling=True)
    assert next(half.parameters()).dtype == torch.bfloat16 and half.use_tiling


def test_vae_tiling_and_slicing_switch_on_above_the_frame_size_threshold_unless_a_flag_says(
    tiny_dir: Path,
) -> None:
    above, at = (480, 848), (480, 832)  # 480x848 is the first multiple-of-16 width past Wan's own size
    assert above[0] * above[1] > models.VAE_TILING_PIXELS >= at[0] * at[1]
    for size, want in ((above, True), (at, False), (None, False)):
        vae = models.load_vae(str(tiny_dir), device="cpu", tiling=None, slicing=None, frame_size=size)
        assert (vae.use_tiling, vae.use_slicing) == (want, want), size
    forced_off = models.load_vae(str(tiny_dir), device="cpu", tiling=False, slicing=None, frame_size=above)
    assert (forced_off.use_tiling, forced_off.use_slicing) == (False, True)
    forced_on = models.load_vae(str(tiny_dir), device="cpu", tiling=True, frame_size=at)
    assert forced_on.use_tiling


def test_tiled_and_untiled_vae_encodes_agree_within_tolerance() -> None:
    """diffusers' tiles overlap and blend, so the latents differ at the seams, not in kind. A random tiny
    VAE's seams are wide (its receptive field is large next to its tiles), so "agree" is measured against
    the latents' own variation: the tiled encode stays under half of it, and well under the distance to
    another clip's latents (what broken tiling, tiles misplaced or dropped, would approach)."""
    vae = tiny_vae().eval()
    coarse = torch.rand(2, 3, 5, 6, 8, generator=torch.Generator().manual_seed(0))
    clips = torch.nn.functional.interpolate(coarse, size=(5, 128, 192), mode="trilinear") * 2 - 1
    with torch.no_grad():
        whole = vae.encode(clips).latent_dist.mean
        vae.enable_tiling(96, 96, 64, 64)  # 96 px tiles (Wan's are 256), so 128x192 takes 2x3 of them
        tiled = vae.encode(clips).latent_dist.mean
    assert tiled.shape == whole.shape
    spread = (whole - whole.mean(dim=(0, 2, 3, 4), keepdim=True)).abs().mean()
    error = float((tiled - whole).abs().mean() / spread)
    other_clip = float((whole[1] - whole[0]).abs().mean() / spread)
    assert error < 0.5 and error < 0.6 * other_clip, (error, other_clip)


def test_load_vae_defaults_to_float32_on_the_cpu(tiny_dir: Path) -> None:
    vae = models.load_vae(str(tiny_dir), device="cpu")
    assert next(vae.parameters()).dtype == torch.float32
    assert models.default_compute_dtype("cuda:1") == "bfloat16"
    assert models.default_compute_dtype("cpu") == "float32"


def test_load_text_encoder_returns_the_encoder_and_tokenizer_of_the_folder(tiny_dir: Path) -> None:
    encoder, tokenizer = models.load_text_encoder(str(tiny_dir), device="cpu")
    reference, ref_tokenizer = tiny_text_encoder()
    assert type(encoder).__name__ == "UMT5EncoderModel" and not encoder.training
    assert _same_weights(encoder, reference)
    assert tokenizer("a b").input_ids == ref_tokenizer("a b").input_ids


def test_load_text_encoder_refuses_an_unsupported_type_by_name(tmp_path: Path) -> None:
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"text_encoder: text encoder type 'bert' is not supported"):
        models.load_text_encoder(str(tmp_path), device="cpu")


def test_load_transformer_and_pipeline_read_the_saved_weights(tiny_dir: Path) -> None:
    transformer = models.load_transformer(str(tiny_dir))
    assert _same_weights(transformer, tiny_transformer())
    pipe = models.load_wan_pipeline(str(tiny_dir), transformer=transformer)
    assert pipe.transformer is transformer
    assert _same_weights(pipe.vae, tiny_vae())


def test_torch_dtype_refuses_an_unknown_name() -> None:
    assert models.torch_dtype("bfloat16") is torch.bfloat16
    assert models.torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="compute dtype must be one of .* not 'fp32'"):
        models.torch_dtype("fp32")


def test_revision_of_a_local_folder_changes_with_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    first = models.revision_of(str(tmp_path), "vae")
    assert first.startswith("sha256:") and first == models.revision_of(str(tmp_path), "vae")
    (tmp_path / "vae" / "config.json").write_text('{"z_dim": 4}')
    assert models.revision_of(str(tmp_path), "vae") != first


def test_revision_of_an_uncached_hub_id_offline_is_the_requested_revision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.revision_of("nobody/no-such-model", "vae", "abc123") == "abc123"
    assert models.revision_of("nobody/no-such-model", "vae") == "main"


def test_vae_normalization_reads_wan_moments_and_sd_scaling() -> None:
    vae: Any = tiny_vae()
    mean, std = models.vae_normalization(vae)
    assert mean == [float(v) for v in vae.config.latents_mean] and std == [
        float(v) for v in vae.config.latents_std
    ]
    assert len(mean) == 4
    sd = SimpleNamespace(config=SimpleNamespace(latent_channels=2, scaling_factor=0.5, shift_factor=0.1))
    assert models.vae_normalization(sd) == ([0.1, 0.1], [2.0, 2.0])
    with pytest.raises(ValueError, match="neither latents_mean/std nor scaling_factor"):
        models.vae_normalization(SimpleNamespace(config=SimpleNamespace(z_dim=4)))


def test_generate_pairs_a_bare_transformer_folder_with_the_base_models(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """``generate`` loads through this module: a full fine-tune's ``transformer/`` plus --base's VAE/UMT5."""
    from medvideocap.generate import describe_checkpoint, load_pipeline

    tuned: Any = tiny_transformer(seed=5)
    tuned.save_pretrained(tmp_path / "ckpt" / "transformer")
    assert describe_checkpoint(tmp_path / "ckpt")["kind"] == "transformer"
    pipe = load_pipeline(tmp_path / "ckpt", base=str(tiny_dir), device="cpu")
    assert _same_weights(pipe.transformer, tuned) and not _same_weights(pipe.transformer, tiny_transformer())
    assert _same_weights(pipe.vae, tiny_vae()) and next(pipe.transformer.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------------------------------- dtypes


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny folder saved in bf16, as the real Wan text encoder is published."""
    from diffusers import WanPipeline

    out = tmp_path_factory.mktemp("tiny-wan-bf16") / "model"
    WanPipeline.from_pretrained(str(tiny_dir), dtype=torch.bfloat16).save_pretrained(out)
    return out


def _kept_in_float32(model: Any) -> set[str]:
    """Parameters a library keeps in fp32 whatever the load dtype (diffusers: Wan's norms, time embedder)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return {n for n, _ in model.named_parameters() if any(k in n.split(".") for k in keep)}


def _all_in(model: Any, dtype: torch.dtype) -> bool:
    kept = _kept_in_float32(model)
    return all(
        p.dtype == dtype or (n in kept and p.dtype == torch.float32) for n, p in model.named_parameters()
    )


class _Float32Tensors:
    """Records the shape of every float32 tensor torch makes while it is active (one thread: transformers'
    parallel loading is switched off by the test), so a float32 copy of a weight cannot hide."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        shapes: set[tuple[int, ...]] = set()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type != "meta":
                        shapes.add(tuple(t.shape))
                return out

        self.mode, self.shapes = Mode(), shapes

    def weights_seen(self, model: Any) -> set[tuple[int, ...]]:
        """Shapes of ``model``'s bf16 matrices (none shared with an fp32 parameter) made in float32."""
        low = {tuple(p.shape) for p in model.parameters() if p.dtype == torch.bfloat16 and p.dim() >= 2}
        high = {tuple(p.shape) for p in model.parameters() if p.dtype == torch.float32}
        return (low - high) & self.shapes


def test_load_text_encoder_defaults_to_bfloat16_on_the_cpu_too(tiny_dir: Path) -> None:
    encoder, _ = models.load_text_encoder(str(tiny_dir), device="cpu")
    assert models.TEXT_ENCODER_DTYPE == "bfloat16"
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    full, _ = models.load_text_encoder(str(tiny_dir), device="cpu", dtype="float32")
    assert {p.dtype for p in full.parameters()} == {torch.float32}


def test_loaders_make_no_float32_copy_of_a_bfloat16_folders_weights(
    bf16_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights go straight from the file into the asked dtype: at UMT5-XXL's size an fp32 detour is 22.7 GB."""
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")
    loads = {
        "vae": lambda: models.load_vae(str(bf16_dir), device="cpu", dtype="bfloat16"),
        "text_encoder": lambda: models.load_text_encoder(str(bf16_dir), device="cpu")[0],
        "transformer": lambda: models.load_transformer(str(bf16_dir), dtype="bfloat16"),
    }
    for name, load in loads.items():
        spy = _Float32Tensors()
        with spy.mode:
            model = load()
        assert _all_in(model, torch.bfloat16), name
        assert not spy.weights_seen(model), name
    spy = _Float32Tensors()
    with spy.mode:
        pipe = models.load_wan_pipeline(str(bf16_dir), dtype="bfloat16")
    for name in ("vae", "text_encoder", "transformer"):
        assert _all_in(getattr(pipe, name), torch.bfloat16), name
        assert not spy.weights_seen(getattr(pipe, name)), name
    # the spy sees a detour when there is one: loaded in fp32, then cast
    spy = _Float32Tensors()
    with spy.mode:
        detour = models.load_text_encoder(str(bf16_dir), device="cpu", dtype="float32")[0].to(torch.bfloat16)
    assert spy.weights_seen(detour)


def test_a_half_precision_load_leaves_no_weight_viewing_the_file_mapping(tiny_dir: Path) -> None:
    """diffusers keeps Wan's norms and time embedder in fp32 as views of the memory-mapped checkpoint,
    which kept 5.4 GB of a 5.7 GB file resident for 11 MB of weights; the loaders copy them out (a
    storage safetensors maps is not resizable, one torch owns is)."""
    transformer = models.load_transformer(str(tiny_dir), dtype="bfloat16")
    pipe = models.load_wan_pipeline(str(tiny_dir), dtype="bfloat16")
    for model in (transformer, pipe.transformer, pipe.vae):
        kept = [p for p in model.parameters() if p.dtype == torch.float32]
        assert all(p.untyped_storage().resizable() for p in model.parameters())
        assert kept or model is pipe.vae  # Wan's transformer keeps some modules in fp32; the VAE none
    assert any(p.dtype == torch.float32 for p in transformer.parameters())
