"""The reference trainer on tiny random Wan models (CPU), over a real encode-latents cache.

Pins down: the objective Wan uses, that training actually fits data, that LoRA touches only adapters,
that a stopped-and-resumed run is the same run, and that exports load in WanPipeline and generate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
import yaml
from fixtures_train import FRAMES, HEIGHT, WIDTH, latent_cache, tiny_pipeline_dir, tiny_train_config

from medvideocap.train import (
    ResumableBatches,
    TrainConfig,
    checkpoint_dirs,
    find_resume,
    flow_matching_loss,
    load_config,
    sample_sigmas,
    train,
)

__all__ = ["latent_cache", "tiny_pipeline_dir"]  # fixtures, imported for pytest


# --------------------------------------------------------------------------------------------- config
def test_shipped_lora_config_has_the_paper_settings() -> None:
    cfg = load_config("medgen-1.3b-lora")
    assert (cfg.mode, cfg.lora_rank, cfg.lora_alpha, cfg.learning_rate) == ("lora", 32, 32, 5e-5)
    assert (cfg.mixed_precision, cfg.ema_decay, cfg.seed) == ("bf16", 0.999, 1024)
    assert (cfg.validation.frames, cfg.validation.height, cfg.validation.width) == (81, 480, 832)
    assert cfg.model_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and cfg.transformer_subfolder == "transformer"
    assert cfg.flow_shift == 3.0
    full = load_config("medgen-1.3b-full")
    assert full.mode == "full" and full.seed == 1024 and full.ema_decay == 0.999


def test_every_config_field_can_be_overridden_from_the_command_line() -> None:
    base = load_config("medgen-1.3b-lora").model_dump()
    changed = {
        "lora_target_modules": "[to_q, ffn.net.0.proj]",
        "max_steps": "7",
        "resume": "none",
        "report_to": "null",
        "flow_shift": "5.0",
    }
    cfg = load_config("medgen-1.3b-lora", [f"{k}={v}" for k, v in changed.items()])
    assert cfg.lora_target_modules == ["to_q", "ffn.net.0.proj"] and cfg.max_steps == 7
    assert cfg.resume == "none" and cfg.report_to is None and cfg.flow_shift == 5.0
    assert load_config("medgen-1.3b-lora", ["mixed_precision=no"]).mixed_precision == "no"  # not YAML false
    for key, value in base.items():  # each field (as a config file spells it) round-trips through key=<yaml>
        flow = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
        assert load_config("medgen-1.3b-lora", [f"{key}={flow}"]).model_dump()[key] == value, key


def test_bad_overrides_name_the_field() -> None:
    with pytest.raises(ValueError, match="unknown field 'lora_rnak'"):
        load_config("medgen-1.3b-lora", ["lora_rnak=8"])
    with pytest.raises(ValueError, match="mode"):
        load_config("medgen-1.3b-lora", ["mode=qlora"])
    with pytest.raises(FileNotFoundError, match="medgen-1.3b-lora"):
        load_config("medgen-14b")


def test_validation_sampling_is_evals_generation_settings_under_the_keys_configs_write() -> None:
    from medvideocap.generate import GenerationSettings

    assert TrainConfig().validation == GenerationSettings()  # one owner of the defaults
    cfg = load_config(
        "medgen-1.3b-lora",
        ["validation_steps=4", "validation_fps=8", "validation_negative_prompt=blurry", "validation_seed=3"],
    )
    assert cfg.validation == GenerationSettings(steps=4, fps=8.0, negative_prompt="blurry")
    assert cfg.validation_seed == 3
    dumped = cfg.model_dump()  # what config.yaml and --print-config show: the keys a config file takes
    assert "validation" not in dumped and (dumped["validation_steps"], dumped["validation_frames"]) == (4, 81)
    assert TrainConfig(**dumped) == cfg
    assert load_config("medgen-1.3b-lora", ["validation={steps: 3}"]).validation.steps == 3  # beats the file
    with pytest.raises(
        ValueError, match="validation_height/validation_width 480x830: must be multiples of 16"
    ):
        load_config("medgen-1.3b-lora", ["validation_width=830"])


def test_a_torn_metrics_tail_is_dropped_and_a_damaged_line_is_an_error_naming_it(tmp_path: Path) -> None:
    from medvideocap.journal import JournalError
    from medvideocap.train.metrics import trim_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": i, "loss": 1.0 / i, "lr": 1e-4}) for i in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "lo')  # killed mid-append
    assert [e["step"] for e in trim_metrics(path, 2)] == [1, 2]  # the resumed checkpoint's step
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    path.write_text(lines[0] + "\nnot json\n" + lines[2] + "\n")
    with pytest.raises(JournalError, match=f"{path}:2: not a JSON line"):
        trim_metrics(path, 3)
    path.write_text(lines[0] + '\n{"loss": 0.5}\n' + lines[2] + "\n")
    with pytest.raises(JournalError, match=f"{path}:2: not a metrics line"):
        trim_metrics(path, 3)
    assert trim_metrics(path, 0) == [] and path.read_text() == ""  # a fresh run starts an empty file


# ------------------------------------------------------------------------------------------ objective
def test_timesteps_follow_wan_shift_formula() -> None:
    base = TrainConfig(timestep_sampling="uniform", flow_shift=1.0)
    shifted = TrainConfig(timestep_sampling="uniform", flow_shift=3.0)
    u = sample_sigmas(10_000, base, torch.Generator().manual_seed(0), torch.device("cpu"))
    s = sample_sigmas(10_000, shifted, torch.Generator().manual_seed(0), torch.device("cpu"))
    torch.testing.assert_close(s, 3.0 * u / (1.0 + 2.0 * u))
    assert float(s.min()) > 0.0 and float(s.max()) < 1.0 and float(s.mean()) > float(u.mean()) + 0.1
    logit = sample_sigmas(
        10_000, TrainConfig(flow_shift=1.0), torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert (
        abs(float(logit.median()) - 0.5) < 0.02
        and float(((logit > 0.2) & (logit < 0.8)).float().mean()) > 0.7
    )


class _Echo(torch.nn.Module):
    """Returns its noisy input unchanged and records what the trainer fed it."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        self.seen = (hidden_states, timestep, encoder_hidden_states)
        return (hidden_states,)


def test_loss_is_velocity_mse_at_the_interpolated_point_and_caption_dropout_swaps_the_prompt() -> None:
    cfg = TrainConfig(caption_dropout=0.5, flow_shift=3.0)
    x0 = torch.randn(64, 4, 2, 4, 4)
    embeds, null = torch.randn(64, 8, 16), torch.full((8, 16), 7.0)
    model = _Echo()
    loss = flow_matching_loss(
        model, {"latents": x0, "prompt_embeds": embeds}, cfg, torch.Generator().manual_seed(3), null
    )
    g = torch.Generator().manual_seed(3)  # replay the draws in the documented order
    noise = torch.randn(x0.shape, generator=g)
    sig = sample_sigmas(64, cfg, g, torch.device("cpu"))
    drop = torch.rand(64, generator=g) < 0.5
    s = sig.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    hidden, timestep, text = model.seen
    torch.testing.assert_close(hidden, xt)
    torch.testing.assert_close(timestep, sig * 1000)
    torch.testing.assert_close(loss, torch.mean((xt - (noise - x0)) ** 2))
    assert 10 < int(drop.sum()) < 54
    assert torch.equal(text[drop], null.expand(int(drop.sum()), -1, -1)) and torch.equal(
        text[~drop], embeds[~drop]
    )


def test_batches_resume_mid_epoch_and_differ_between_epochs() -> None:
    data = list(range(6))
    full = ResumableBatches(data, 2, seed=5, rank=0, world_size=1, consumed=0)
    it = iter(full)
    first = [next(it) for _ in range(7)]
    later = iter(ResumableBatches(data, 2, seed=5, rank=0, world_size=1, consumed=4))
    assert [next(later) for _ in range(3)] == first[4:]
    ep0 = sorted(i for b in first[:3] for _, i in b)
    assert ep0 == data and first[0][0][0] == 0 and first[3][0][0] == 1
    assert [i for b in first[:3] for _, i in b] != [i for b in first[3:6] for _, i in b]
    ranks = [iter(ResumableBatches(data, 1, seed=5, rank=r, world_size=2, consumed=0)) for r in (0, 1)]
    seen = [[next(r)[0][1] for _ in range(3)] for r in ranks]
    assert sorted(seen[0] + seen[1]) == data


# ------------------------------------------------------------------------------------------- training
def _dataset(cache: Path, posterior: Literal["sample", "mode", "moments"] = "sample") -> Any:
    from medvideocap.latents import load_latents

    return load_latents(cache, split="train", posterior=posterior)


def test_loss_on_a_fixed_batch_drops_by_half_in_50_steps(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        mode="full",
        batch_size=4,
        max_steps=50,
        learning_rate=3e-3,
        weight_decay=0.0,
        caption_dropout=0.0,
        ema_decay=0.0,
        timestep_sampling="uniform",
    )
    result = train(cfg, dataset=_dataset(latent_cache, posterior="mode"))  # 4 clips = one fixed batch
    losses = np.array(result.losses)
    assert len(losses) == 50 and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.5 * losses[:10].mean(), losses


def test_the_loader_moves_posterior_moments_and_the_loop_draws_the_sample(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from medvideocap.train import open_dataset

    opts = {"batch_size": 2, "max_steps": 1, "caption_dropout": 0.0, "ema_decay": 0.0}
    cfg = tiny_train_config(tmp_path / "moments", tiny_pipeline_dir, latent_cache, **opts)
    item = open_dataset(cfg)[0]
    assert "latents_logvar" in item  # no CPU sampling in the loader
    torch.testing.assert_close(item["latents"], _dataset(latent_cache, posterior="mode")[0]["latents"])
    drawn = train(cfg).losses
    mean_only = tiny_train_config(tmp_path / "mode", tiny_pipeline_dir, latent_cache, **opts)
    assert drawn != train(mean_only, dataset=_dataset(latent_cache, posterior="mode")).losses


def test_lora_trains_only_adapters_and_leaves_base_weights_bit_identical(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from diffusers import WanTransformer3DModel

    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        mode="lora",
        batch_size=2,
        max_steps=8,
        learning_rate=1e-2,
        caption_dropout=0.0,
    )
    trained = train(cfg, dataset=_dataset(latent_cache)).transformer
    base = dict(
        WanTransformer3DModel.from_pretrained(tiny_pipeline_dir, subfolder="transformer").named_parameters()
    )
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any(".attn1.to_q." in n for n in trainable) and any(".attn2.to_out.0." in n for n in trainable)
    frozen = {n.replace(".base_layer", ""): p for n, p in trained.named_parameters() if n not in trainable}
    assert frozen.keys() == base.keys()
    for name, p in frozen.items():
        assert torch.equal(p, base[name]), name
    assert all(p.abs().sum() > 0 for n, p in trained.named_parameters() if ".lora_B." in n)  # adapters moved


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_stopped_and_resumed_run_equals_uninterrupted_run(
    mode: str, tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from safetensors.torch import load_file

    opts = {
        "mode": mode,
        "batch_size": 1,
        "gradient_accumulation_steps": 2,
        "max_steps": 6,
        "learning_rate": 2e-3,
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
        "ema_decay": 0.9,
        "caption_dropout": 0.5,
        "caption_dropout_embeds": "empty",
        "checkpoint_every": 100,
    }
    straight = train(tiny_train_config(tmp_path / "a", tiny_pipeline_dir, latent_cache, **opts))
    first = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, stop_at_step=3, **opts))
    assert first.step == 3 and first.export is None  # 3 steps x 2 batches: stopped mid-epoch of 4 clips
    assert [p.name for p in checkpoint_dirs(tmp_path / "b" / "run")] == ["step-00000003"]
    with (tmp_path / "b" / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 0.')  # as if killed mid-append after the checkpoint: repaired on resume
    resumed = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, **opts))
    assert resumed.resumed_from is not None and resumed.steps == [4, 5, 6]
    np.testing.assert_allclose(first.losses + resumed.losses, straight.losses, rtol=1e-5, atol=1e-6)
    logged = [
        json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]  # no duplicate or missing step after resume
    a_final, b_final = tmp_path / "a" / "run" / "final", tmp_path / "b" / "run" / "final"
    name = (
        "pytorch_lora_weights.safetensors"
        if mode == "lora"
        else "transformer/diffusion_pytorch_model.safetensors"
    )
    wa, wb = load_file(a_final / name), load_file(b_final / name)  # EMA weights: EMA state resumed too
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)
    # the checkpoint written after the resume holds the global RNG states of the uninterrupted run's
    rng_a, rng_b = (_rng_states(tmp_path / run / "run" / "checkpoints" / "step-00000006") for run in "ab")
    assert rng_a["random_state"] == rng_b["random_state"]
    np.testing.assert_array_equal(rng_a["numpy_random_seed"][1], rng_b["numpy_random_seed"][1])
    assert rng_a["numpy_random_seed"][2:] == rng_b["numpy_random_seed"][2:]
    assert torch.equal(rng_a["torch_manual_seed"], rng_b["torch_manual_seed"])


def _rng_states(checkpoint: Path) -> dict[str, Any]:
    """accelerate's record of the global RNGs in a checkpoint, read with its own weights_only loader."""
    from accelerate.utils import load

    states: dict[str, Any] = load(checkpoint / "random_states_0.pkl")
    return states


def test_an_interrupted_save_is_never_resumed_from(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    (root / "step-00000010").mkdir(parents=True)
    (root / "step-00000010" / "trainer_state.json").write_text('{"step": 10, "consumed_batches": 10}')
    (root / ".step-00000020.tmp").mkdir()  # killed while saving
    (root / "step-00000030").mkdir()  # no trainer_state.json: incomplete
    assert find_resume(TrainConfig(output_dir=str(tmp_path / "run"))) == root / "step-00000010"
    assert find_resume(TrainConfig(output_dir=str(tmp_path / "run"), resume="none")) is None
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        find_resume(TrainConfig(output_dir=str(tmp_path), resume=str(root / "step-00000030")))


# ------------------------------------------------------------------------------ exports and generation
def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _base_video(model_dir: Path, prompt: str) -> np.ndarray:
    from medvideocap.generate import load_pipeline, sample_videos

    pipe = load_pipeline(model_dir, device="cpu")
    (video,) = sample_videos(pipe, [prompt], num_frames=FRAMES, height=HEIGHT, width=WIDTH, steps=2, seed=0)
    return (video * 255).round().astype(np.uint8)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_exported_checkpoint_loads_in_wanpipeline_and_generates_a_different_video(
    mode: str, tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from click.testing import CliRunner

    from medvideocap.cli import main
    from medvideocap.media.probe import probe

    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        mode=mode,
        batch_size=2,
        max_steps=4,
        learning_rate=2e-2,
        ema_decay=0.0,
    )
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--config", str(config_file), "--set", "report_to=tensorboard"])
    assert res.exit_code == 0, res.output
    final = tmp_path / "run" / "final"
    expected = "pytorch_lora_weights.safetensors" if mode == "lora" else "model_index.json"
    assert (final / expected).is_file() and "MedGen" in (final / "README.md").read_text()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))  # TensorBoard got the metrics
    out = tmp_path / "sample.mp4"
    prompt = "Laparoscopic suturing of the abdominal wall"
    res = runner.invoke(
        main,
        [
            "generate",
            "--checkpoint",
            str(final),
            "--prompt",
            prompt,
            "--out",
            str(out),
            "--frames",
            "5",
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    info = probe(out, count_frames=True)
    assert (info.num_frames, info.width, info.height) == (FRAMES, WIDTH, HEIGHT)
    diff = np.abs(_frames(out).astype(int) - _base_video(tiny_pipeline_dir, prompt).astype(int)).mean()
    assert diff > 3, "the trained weights did not change the generated video"
    if mode == "lora":  # a training checkpoint samples too; its base model comes from the run's record
        from medvideocap.generate import generate

        step = tmp_path / "run" / "checkpoints" / "step-00000004"
        mid = generate(
            step, prompt, tmp_path / "mid.mp4", frames=5, height=32, width=32, steps=2, device="cpu"
        )
        assert probe(mid, count_frames=True).num_frames == FRAMES


def test_a_lora_with_alpha_other_than_rank_keeps_its_scale_in_diffusers_and_generate(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    """lora_alpha 16 over rank 4 scales the adapter by 4: the export carries that in its metadata, so
    diffusers' own load_lora_weights and our generate give what the trained model gives."""
    from diffusers import WanPipeline

    from medvideocap.generate import generate, sample_videos, write_mp4

    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        mode="lora",
        lora_rank=4,
        lora_alpha=16,
        batch_size=2,
        max_steps=4,
        learning_rate=2e-2,
        ema_decay=0.0,
        caption_dropout=0.0,
    )
    trained = train(cfg, dataset=_dataset(latent_cache)).transformer.eval()
    final = tmp_path / "run" / "final"
    loaded = WanPipeline.from_pretrained(tiny_pipeline_dir)
    loaded.load_lora_weights(str(final))
    adapter = next(iter(loaded.transformer.peft_config.values()))
    assert (adapter.r, adapter.lora_alpha) == (4, 16)
    unscaled = WanPipeline.from_pretrained(tiny_pipeline_dir)  # the same weights without the metadata
    unscaled.load_lora_weights(WanPipeline.lora_state_dict(str(final)))
    g = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 4, 2, HEIGHT // 8, WIDTH // 8, generator=g),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 64, 32, generator=g),
        "return_dict": False,
    }
    with torch.no_grad():
        want = trained(**inputs)[0]
        torch.testing.assert_close(loaded.transformer(**inputs)[0], want, rtol=1e-4, atol=1e-5)
        assert (unscaled.transformer(**inputs)[0] - want).abs().max() > 1e-2  # scale 1 is another model

    prompt = "Laparoscopic suturing of the abdominal wall"
    opts = {"num_frames": FRAMES, "height": HEIGHT, "width": WIDTH, "steps": 2, "seed": 0}
    reference = WanPipeline.from_pretrained(tiny_pipeline_dir, transformer=trained)
    (want_video,) = sample_videos(reference, [prompt], **opts)  # type: ignore[arg-type]
    (unscaled_video,) = sample_videos(unscaled, [prompt], **opts)  # type: ignore[arg-type]
    out = generate(  # the reference pipelines hold their text encoder in fp32
        final, prompt, tmp_path / "g.mp4", frames=FRAMES, height=HEIGHT, width=WIDTH, steps=2,
        text_encoder_dtype="float32",
    )  # fmt: skip
    got = _frames(out).astype(int)
    want_frames = _frames(write_mp4(want_video, tmp_path / "want.mp4")).astype(int)
    unscaled_frames = _frames(write_mp4(unscaled_video, tmp_path / "unscaled.mp4")).astype(int)
    assert np.abs(got - want_frames).max() <= 1, "generate did not apply the LoRA at alpha / rank"
    assert np.abs(got - unscaled_frames).mean() > 3 * max(np.abs(got - want_frames).mean(), 0.1)


def test_validation_writes_videos_and_a_contact_sheet(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from PIL import Image

    from medvideocap.media.probe import probe

    prompts = ["Echocardiogram, apical four-chamber view", "CPR on a manikin"]
    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        batch_size=2,
        max_steps=2,
        validation_every=1,
        validation_prompts=prompts,
    )
    result = train(cfg, dataset=_dataset(latent_cache))
    assert [p.name for p in result.validations] == ["step-00000001", "step-00000002"]
    for folder in result.validations:
        for i in range(2):
            info = probe(folder / f"{i:02d}.mp4", count_frames=True)
            assert (info.num_frames, info.width, info.height) == (FRAMES, WIDTH, HEIGHT)
        with Image.open(folder / "contact_sheet.png") as sheet:
            assert sheet.size == (WIDTH * FRAMES, HEIGHT * 2)


def test_bf16_lora_keeps_the_frozen_base_in_bf16_and_adapters_in_fp32(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        mode="lora",
        mixed_precision="bf16",
        batch_size=2,
        max_steps=2,
    )
    result = train(cfg, dataset=_dataset(latent_cache))
    assert np.isfinite(result.losses).all()
    dtypes = {n: p.dtype for n, p in result.transformer.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert dtypes["blocks.0.attn1.to_q.lora_A.default.weight"] == torch.float32
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32  # diffusers keeps Wan's modulation in fp32


def test_module_entry_point_is_the_click_command_and_takes_both_override_spellings() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "medvideocap.train",
            "--config",
            "medgen-1.3b-full",
            "--print-config",
            "--set",
            "seed=7",
            "max_steps=9",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cfg = yaml.safe_load(out)
    assert cfg["mode"] == "full" and cfg["max_steps"] == 9 and cfg["seed"] == 7


def test_on_the_fly_encoding_trains_from_pixels_and_resumes_identically(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    hub = latent_cache.parent / "hub"  # the hub-native clips the cache was encoded from
    opts = {
        "latents": None,
        "source": str(hub),
        "frames": FRAMES,
        "height": HEIGHT,
        "width": WIDTH,
        "fps": 8.0,
        "mode": "lora",
        "batch_size": 2,
        "max_steps": 4,
        "learning_rate": 1e-2,
        "caption_dropout": 0.0,
    }
    straight = train(tiny_train_config(tmp_path / "a", tiny_pipeline_dir, latent_cache, **opts))
    first = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, stop_at_step=2, **opts))
    resumed = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, **opts))
    assert len(straight.losses) == 4 and np.isfinite(straight.losses).all()
    np.testing.assert_allclose(first.losses + resumed.losses, straight.losses, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "a" / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_on_the_fly_posterior_draw_clips_the_log_variance_as_diffusers_does(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import math

    from medvideocap.models import LOGVAR_RANGE
    from medvideocap.tiny import TINY_TEXT_DIM, TINY_Z_DIM
    from medvideocap.train import OnTheFlyEncoder

    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, latents=None, source="pixels")
    encoder = OnTheFlyEncoder(cfg, torch.device("cpu"))
    shape = (2, TINY_Z_DIM, 2, HEIGHT // 8, WIDTH // 8)
    mean, logvar = torch.zeros(shape), torch.full(shape, 100.0)  # exp(50) unclipped
    monkeypatch.setattr(encoder.encoder, "encode_videos", lambda videos: (mean, logvar))
    batch = {"video": torch.zeros(2, 3, FRAMES, HEIGHT, WIDTH), "caption": ["a", "b c"], "id": ["0", "1"]}
    out = encoder(batch, torch.Generator().manual_seed(0))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))  # replay the one draw
    want = (math.exp(0.5 * LOGVAR_RANGE[1]) * eps - encoder.mean) / encoder.std
    torch.testing.assert_close(out["latents"], want)
    assert out["prompt_embeds"].shape == (2, cfg.text_seq_len, TINY_TEXT_DIM)


def test_config_rejects_impossible_values_with_the_reason() -> None:
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        load_config("medgen-1.3b-lora", ["validation_frames=80"])
    with pytest.raises(ValueError, match="caption_dropout=1.5 is not a probability"):
        load_config("medgen-1.3b-lora", ["caption_dropout=1.5"])


def test_a_cache_encoded_from_other_captions_is_refused(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, caption="brief", max_steps=1)
    with pytest.raises(ValueError, match="encoded from 'detailed' captions"):
        train(cfg)


@pytest.mark.slow
def test_two_process_ddp_run_shards_data_and_resumes_identically(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    """Two CPU ranks (gloo) under torchrun: the DDP path (no_sync, rank-sharded batches, per-rank noise
    state, main-process-only writes) stopped and resumed equals one uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    def run(out: Path, *overrides: str) -> list[dict[str, Any]]:
        cfg = tiny_train_config(
            out,
            tiny_pipeline_dir,
            latent_cache,
            mode="lora",
            batch_size=1,
            max_steps=4,
            gradient_accumulation_steps=2,
            caption_dropout=0.5,
            checkpoint_every=2,
            gradient_checkpointing=True,
            num_workers=1,
            learning_rate=1e-2,
        )
        (out / "cfg.yaml").parent.mkdir(parents=True, exist_ok=True)
        (out / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "medvideocap.train",
            "--config",
            str(out / "cfg.yaml"),
            *overrides,
        ]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
        # own process group, so a hang kills the ranks too, not only the launcher
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        try:
            _, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("2-rank DDP run did not finish in 240 s")
        assert proc.returncode == 0, stderr[-3000:]
        return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]

    straight = run(tmp_path / "a")
    run(tmp_path / "b", "stop_at_step=2")
    resumed = run(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "run" / "medvideocap_train.json").read_text())["world_size"] == 2
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in resumed], [m["loss"] for m in straight], rtol=1e-5)
    ckpt = tmp_path / "b" / "run" / "checkpoints" / "step-00000004"
    assert (ckpt / "noise_rng_0.safetensors").is_file() and (ckpt / "noise_rng_1.safetensors").is_file()


@pytest.mark.timeout(300)  # before the bound, this spun forever
def test_a_source_whose_every_clip_fails_stops_with_the_reason_and_a_nonzero_exit(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from click.testing import CliRunner
    from fixtures_latents import write_hub_native

    from medvideocap.cli import main

    write_hub_native(tmp_path / "short", 2, short_ids=(0, 1))  # 0.5 s clips: 4 frames, 9 are needed
    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        latents=None,
        source=str(tmp_path / "short"),
        frames=9,
        fps=8.0,
        height=HEIGHT,
        width=WIDTH,
        max_steps=2,
        max_empty_batches=5,
    )
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    res = CliRunner().invoke(main, ["train", "--config", str(config_file)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    text = " ".join(res.output.split())
    assert "5 batches in a row had no clip that could be loaded" in text, text
    assert "cannot give 9 frames" in text and "Traceback" not in text


def test_the_readme_train_command_takes_the_cache_as_latents(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    """``medvideocap train --config medgen-1.3b-lora --set latents=CACHE`` (the README's line), with the
    tiny model and CPU-sized settings set the same way."""
    from click.testing import CliRunner

    from medvideocap.cli import main

    small = {
        "model_id": str(tiny_pipeline_dir),
        "output_dir": str(tmp_path / "run"),
        "mixed_precision": "no",
        "gradient_checkpointing": "false",
        "num_workers": "0",
        "text_seq_len": "64",
        "report_to": "null",
        "max_steps": "1",
        "gradient_accumulation_steps": "1",
        "warmup_steps": "0",
        "validation_prompts": "[]",
        "lora_rank": "4",
        "lora_alpha": "4",
    }
    sets = [a for k, v in small.items() for a in ("--set", f"{k}={v}")]
    runner = CliRunner()
    res = runner.invoke(
        main, ["train", "--config", "medgen-1.3b-lora", "--set", f"latents={latent_cache}", *sets]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["step"] == 1
    assert (tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()
    res = runner.invoke(main, ["train", "--config", "medgen-1.3b-lora", "--set", "data.path=latents/"])
    assert res.exit_code == 2 and "latents=CACHE_DIR" in res.output, res.output
    missing = tmp_path / "nowhere"
    res = runner.invoke(main, ["train", "--config", "medgen-1.3b-lora", "--set", f"latents={missing}", *sets])
    assert res.exit_code == 1 and "not a latent cache" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------- non-finite numbers
class _NanLatents(torch.utils.data.Dataset):
    """The cache's items with NaN latents for the ids in ``bad``: what a NaN row used to feed the trainer
    (the reader refuses one now), standing in for anything else that makes a loss NaN."""

    def __init__(self, dataset: Any, bad: set[str]):
        self.dataset, self.bad = dataset, bad

    @property
    def manifest(self) -> dict[str, Any]:
        return self.dataset.manifest

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if item["id"] in self.bad:
            item["latents"] = torch.full_like(item["latents"], float("nan"))
        return item


def _batch_ids(dataset: _NanLatents, cfg: Any, steps: int) -> list[list[str]]:
    """The ids of each step's batch, from the batch plan the trainer draws them from."""
    plan = iter(ResumableBatches(dataset, cfg.batch_size, seed=cfg.seed, rank=0, world_size=1, consumed=0))
    return [[dataset.dataset.cache.ids[i] for _, i in next(plan)] for _ in range(steps)]


def test_a_nan_loss_stops_training_naming_the_step_and_samples_before_anything_is_saved(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from medvideocap.train.config import NonFiniteTrainingError

    opts = {"batch_size": 2, "max_steps": 4, "checkpoint_every": 1, "caption_dropout": 0.0}
    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, **opts)
    clean = _dataset(latent_cache, posterior="mode")
    bad = clean.cache.ids[0]
    poisoned = _NanLatents(clean, {bad})
    batches = _batch_ids(poisoned, cfg, 4)
    step = next(k for k, ids in enumerate(batches, 1) if bad in ids)
    with pytest.raises(NonFiniteTrainingError) as err:
        train(cfg, dataset=poisoned)
    message = str(err.value)
    assert f"step {step}: loss nan" in message and "max_nonfinite_steps" in message, message
    assert all(repr(cid) in message for cid in batches[step - 1]), message
    # the steps before it were checkpointed as usual; the bad one never was, and nothing was exported
    assert [p.name for p in checkpoint_dirs(cfg.output_dir)] == [f"step-{k:08d}" for k in range(1, step)]
    assert not (tmp_path / "run" / "final").exists()


def test_nan_steps_below_max_nonfinite_steps_are_skipped_with_a_warning_and_never_applied(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    opts = {"batch_size": 2, "max_steps": 4, "max_nonfinite_steps": 3, "caption_dropout": 0.0}
    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, **opts)
    clean = _dataset(latent_cache, posterior="mode")
    poisoned = _NanLatents(clean, {clean.cache.ids[0]})
    bad_steps = [k for k, ids in enumerate(_batch_ids(poisoned, cfg, 4), 1) if clean.cache.ids[0] in ids]
    assert len(bad_steps) == 2  # one batch of two per epoch: at most 2 in a row, fewer than 3
    result = train(cfg, dataset=poisoned)
    assert result.steps == [k for k in range(1, 5) if k not in bad_steps] and np.isfinite(result.losses).all()
    log = " ".join(capsys.readouterr().err.split())
    for k in bad_steps:
        assert f"skipped step {k}: loss nan" in log and "max_nonfinite_steps=3" in log, log
    exported = load_file(tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors")
    assert exported and all(torch.isfinite(t).all() for t in exported.values())
    assert all(torch.isfinite(p).all() for p in result.transformer.parameters())


def test_weights_that_went_nan_are_never_checkpointed_or_exported(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from medvideocap.train import export_final
    from medvideocap.train.config import NonFiniteTrainingError

    # an infinite learning rate: the loss and gradient of step 1 are finite, the weights after it are not
    opts = {"batch_size": 2, "max_steps": 2, "checkpoint_every": 1, "caption_dropout": 0.0}
    cfg = tiny_train_config(
        tmp_path / "inf", tiny_pipeline_dir, latent_cache, learning_rate=float("inf"), **opts
    )
    with pytest.raises(NonFiniteTrainingError, match="step-00000001: not saved: .* hold NaN/inf"):
        train(cfg)
    assert not (tmp_path / "inf" / "run" / "checkpoints").exists() or not any(
        (tmp_path / "inf" / "run" / "checkpoints").iterdir()
    )
    assert not (tmp_path / "inf" / "run" / "final").exists()

    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, max_steps=1, ema_decay=0.0)
    transformer = train(cfg).transformer
    next(p for n, p in transformer.named_parameters() if ".lora_B." in n).data[0] = float("nan")
    out = tmp_path / "export"
    with pytest.raises(NonFiniteTrainingError, match=f"{out}: not exported: 1 weight tensors hold NaN/inf"):
        export_final(cfg, transformer, None, out, {})
    assert not out.exists() and not out.with_name(".export.tmp").exists()


def test_the_train_command_refuses_a_nan_row_naming_its_file_and_id_and_exports_nothing(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from click.testing import CliRunner
    from fixtures_train import copy_with_a_nan_row

    from medvideocap.cli import main

    shard, bad = copy_with_a_nan_row(latent_cache, tmp_path / "cache")
    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, tmp_path / "cache", batch_size=4, max_steps=2)
    config_file = tmp_path / "nan.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    res = CliRunner().invoke(main, ["train", "--config", str(config_file)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    text = " ".join(res.output.split())
    assert str(shard) in text and f"(id {bad!r})" in text and "non-finite" in text, text
    assert "encode-latents" in text and "Traceback" not in text, text
    assert not (tmp_path / "run" / "final").exists()


def test_the_train_command_stops_on_weights_gone_non_finite_with_one_line_and_exit_1(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from click.testing import CliRunner

    from medvideocap.cli import main

    cfg = tiny_train_config(
        tmp_path, tiny_pipeline_dir, latent_cache, batch_size=2, max_steps=2, checkpoint_every=1,
        learning_rate=float("inf"), caption_dropout=0.0,
    )  # fmt: skip
    config_file = tmp_path / "inf.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump()))
    res = CliRunner().invoke(main, ["train", "--config", str(config_file)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    text = " ".join(res.output.split())
    assert "not saved" in text and "NaN/inf" in text and "Traceback" not in text, text
    assert not (tmp_path / "run" / "final").exists()


# ------------------------------------------------------------------- the empty prompt of caption dropout


def test_caption_dropout_reads_the_caches_empty_prompt_and_never_loads_the_text_encoder(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvideocap import models
    from medvideocap.latents.format import read_empty_prompt, read_manifest
    from medvideocap.train import empty_prompt_embeds

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the text encoder was loaded")

    monkeypatch.setattr(models, "load_text_encoder", refuse)
    cfg = tiny_train_config(
        tmp_path, tiny_pipeline_dir, latent_cache, mode="lora", max_steps=2,
        caption_dropout=0.5, caption_dropout_embeds="empty",
    )  # fmt: skip
    assert train(cfg).step == 2
    manifest = read_manifest(latent_cache)
    stored = read_empty_prompt(latent_cache, manifest["fingerprint"])
    assert stored is not None
    null = empty_prompt_embeds(cfg, manifest, torch.device("cpu"))
    assert null.shape == (cfg.text_seq_len, stored.shape[1])
    assert torch.equal(null[: len(stored)], torch.from_numpy(stored)) and not null[len(stored) :].any()


def test_without_a_stored_empty_prompt_the_text_encoder_loads_once_in_the_dtype_the_captions_used(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from medvideocap import models
    from medvideocap.latents.format import EMPTY_PROMPT_NAME, META_DIR, read_manifest
    from medvideocap.train import empty_prompt_embeds

    cache = tmp_path / "cache"
    shutil.copytree(latent_cache, cache)
    (cache / META_DIR / EMPTY_PROMPT_NAME).unlink()  # a cache made before "" was stored
    dtypes: list[Any] = []
    real = models.load_text_encoder

    def spy(*args: Any, **kwargs: Any) -> Any:
        dtypes.append(kwargs["dtype"])
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_text_encoder", spy)
    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, cache, mixed_precision="no")
    cpu = torch.device("cpu")
    null = empty_prompt_embeds(cfg, read_manifest(cache), cpu)
    assert dtypes == ["bfloat16"]  # the manifest's text encoder dtype, not mixed_precision's float32
    original = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, mixed_precision="no")
    stored = empty_prompt_embeds(original, read_manifest(latent_cache), cpu)  # read, not computed
    assert torch.equal(null, stored) and dtypes == ["bfloat16"]
    bf16 = tiny_train_config(tmp_path, tiny_pipeline_dir, cache, mixed_precision="bf16")
    empty_prompt_embeds(bf16, {}, cpu)  # no manifest to say: the training compute dtype
    assert dtypes == ["bfloat16", torch.bfloat16]

    class OnTheFly:  # pixels encoded on the fly: its text encoder is loaded anyway, reuse it
        def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
            return [torch.full((1, stored.shape[1]), float(len(texts)))]

    from_encoder = empty_prompt_embeds(cfg, {}, cpu, encoder=OnTheFly())
    assert (from_encoder[0] == 1.0).all() and not from_encoder[1:].any() and len(dtypes) == 2


def test_a_second_job_on_one_output_dir_stops_naming_the_first_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rank locks its own file in output_dir (medvideocap.lock); while rank 0's is held (here by
    this process), another rank 0 on that output_dir exits 1 naming it, and training never starts."""
    import os

    from click.testing import CliRunner

    import medvideocap.train as trainer
    from medvideocap.cli import main
    from medvideocap.lock import lock_name, output_lock

    started: list[Any] = []
    monkeypatch.setattr(trainer, "train", lambda cfg: started.append(cfg))
    out = tmp_path / "run"
    args = ["train", "--config", "medgen-1.3b-lora", "--set", f"latents={tmp_path / 'cache'}"]
    with output_lock(out, verb="train", name=lock_name("rank0")) as lock:
        done = CliRunner().invoke(main, [*args, "--set", f"output_dir={out}"])
    assert done.exit_code == 1 and started == [], done.output
    said = done.output
    assert said.startswith(f"Error: {out} is in use by `medvideocap train` (pid {os.getpid()} on "), said
    assert f"which holds {lock}; wait for it to finish" in said and said.count("\n") == 1, said
