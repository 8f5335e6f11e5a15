"""``medvideocap generate`` and the sampling settings it shares with eval and training validation
(``medvideocap/generate.py``), on a tiny random Wan2.1 pipeline saved as a real model folder."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from medvideocap.cli import main
from medvideocap.generate import GenerationSettings, generate, write_mp4
from medvideocap.media.probe import probe
from medvideocap.tiny import save_tiny_pipeline


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")


def test_generate_writes_an_mp4_of_the_asked_frames_size_and_fps(pipeline_dir: Path, tmp_path: Path) -> None:
    out = generate(
        pipeline_dir, "an ultrasound probe on the abdomen", tmp_path / "v.mp4",
        frames=5, height=32, width=48, steps=2, fps=8.0, device="cpu",
    )  # fmt: skip
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (48, 32, 5)
    assert info.fps == pytest.approx(8.0)


def test_the_same_seed_gives_the_same_video_and_another_seed_another(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    from medvideocap.generate import load_pipeline

    pipe = load_pipeline(pipeline_dir, device="cpu")
    settings = GenerationSettings(frames=5, height=32, width=32, steps=2)
    (a,), (b,) = settings.sample(pipe, ["x"], seed=3), settings.sample(pipe, ["x"], seed=3)
    (c,) = settings.sample(pipe, ["x"], seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"frames": 6}, "--frames 6: Wan's VAE needs 4k\\+1 frames"),
        ({"width": 40}, "must be multiples of 16"),
    ],
)
def test_settings_wan_cannot_sample_are_refused_before_any_model_loads(
    bad: dict, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "no-such-checkpoint", "x", tmp_path / "v.mp4", **bad)


def test_cli_defaults_are_the_one_set_of_generation_settings() -> None:
    """generate, eval and the trainer's validation_* keys all start from GenerationSettings' defaults."""
    from medvideocap.cli.generate import command
    from medvideocap.train import TrainConfig

    defaults = {p.name: p.default for p in command.params}
    for f in dataclasses.fields(GenerationSettings):
        assert defaults[f.name] == f.default, f.name
    assert TrainConfig().validation == GenerationSettings()


def test_cli_generate_prints_the_written_file(pipeline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.mp4"
    args = ["generate", "--checkpoint", str(pipeline_dir), "--prompt", "x", "--out", str(out)]
    args += ["--frames", "5", "--height", "32", "--width", "32", "--steps", "1", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out) and probe(out).num_frames == 5


def test_cli_names_a_bad_setting_without_a_traceback(tmp_path: Path) -> None:
    args = ["generate", "--checkpoint", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "v.mp4")]
    result = CliRunner().invoke(main, [*args, "--frames", "8"])
    assert result.exit_code != 0 and "--frames 8" in result.output and "Traceback" not in result.output


def test_write_mp4_round_trips_frames_within_codec_error(tmp_path: Path) -> None:
    from medvideocap.media.decode import all_frames

    ramp = np.linspace(0.0, 1.0, 32)
    frame = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.full((32, 32), 0.5)], -1)
    video = np.stack([np.roll(frame, shift, axis=1) for shift in range(4)])  # (T, H, W, 3) floats in [0, 1]
    path = write_mp4(video, tmp_path / "w.mp4", fps=4.0)
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (4, 32, 32)
    decoded = all_frames(path).astype(np.float64) / 255.0
    assert decoded.shape == video.shape
    assert np.abs(decoded - video).mean() < 0.03  # crf 18 + yuv420p on a smooth ramp


def test_a_prompt_gives_the_same_video_alone_and_inside_a_batch(pipeline_dir: Path) -> None:
    from medvideocap.generate import load_pipeline

    settings = GenerationSettings(frames=5, height=32, width=32, steps=2)
    pipe = load_pipeline(pipeline_dir, device="cpu")
    prompts = ["a scalpel on a tray", "an ultrasound probe on the abdomen", "a suture knot"]
    batch = settings.sample(pipe, prompts, seed=10)  # prompt i uses seed 10 + i
    (alone,) = settings.sample(pipe, [prompts[1]], seed=11)
    assert np.array_equal(batch[1], alone)
    assert not np.array_equal(batch[0], batch[1])


def test_write_mp4_gives_the_same_bytes_whatever_ran_before_it(pipeline_dir: Path, tmp_path: Path) -> None:
    """x264's macroblock-tree rate control made the bytes depend on the process (the eval resume test
    flaked on it); interleave torch work and denormal-mode changes between encodes of the same frames."""
    import torch

    from medvideocap.generate import load_pipeline

    settings = GenerationSettings(frames=5, height=32, width=32, steps=2)
    (video,) = settings.sample(load_pipeline(pipeline_dir, device="cpu"), ["a suture knot"], seed=0)
    video = np.pad(video, ((0, 0), (0, 32), (0, 32), (0, 0)), mode="edge")  # 64x64 with flat areas
    seen = set()
    before = torch.get_flush_denormal() if hasattr(torch, "get_flush_denormal") else False
    try:
        for i in range(12):
            torch.set_flush_denormal(bool(i % 2))
            x = torch.randn(256, 256, generator=torch.Generator().manual_seed(i))
            (x @ x).sum()
            seen.add(write_mp4(video, tmp_path / f"v{i}.mp4").read_bytes())
    finally:
        torch.set_flush_denormal(before)
    assert len(seen) == 1


def _dtypes_outside_fp32_keeps(pipe: object) -> set[object]:
    """dtypes of the pipeline's parameters, leaving out the modules diffusers keeps in fp32 on purpose."""
    found = set()
    for name in ("vae", "text_encoder", "transformer"):
        model = getattr(pipe, name)
        keep = getattr(model, "_keep_in_fp32_modules", None) or []
        found |= {p.dtype for n, p in model.named_parameters() if not any(k in n.split(".") for k in keep)}
    return found


@pytest.mark.parametrize("kind", ["pipeline", "transformer", "lora"])
def test_load_pipeline_loads_every_kind_of_checkpoint_in_the_asked_dtype(
    kind: str, pipeline_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig

    from medvideocap.generate import describe_checkpoint, load_pipeline
    from medvideocap.tiny import tiny_transformer
    from medvideocap.train.checkpoint import save_lora

    checkpoint = pipeline_dir
    if kind != "pipeline":
        tuned = tiny_transformer(seed=5)
        checkpoint = tmp_path / "ckpt"
        if kind == "transformer":
            tuned.save_pretrained(checkpoint / "transformer")
        else:
            tuned.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))
            save_lora(tuned, checkpoint)
    assert describe_checkpoint(checkpoint)["kind"] == kind
    pipe = load_pipeline(checkpoint, base=str(pipeline_dir), device="cpu", dtype="bfloat16")
    assert _dtypes_outside_fp32_keeps(pipe) == {torch.bfloat16}
    if kind == "lora":
        assert any("lora" in n for n, _ in pipe.transformer.named_parameters())


def test_generate_and_eval_take_a_dtype_for_the_transformer_and_vae_and_another_for_the_text_encoder(
    pipeline_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from medvideocap import models

    loaded: list[tuple[str, set[object]]] = []

    def spy(name: str, real: Any) -> Any:
        def load(*args: Any, **kwargs: Any) -> Any:
            made = real(*args, **kwargs)
            model = made[0] if isinstance(made, tuple) else made
            keep = getattr(model, "_keep_in_fp32_modules", None) or []
            loaded.append(
                (name, {p.dtype for n, p in model.named_parameters() if not set(keep) & set(n.split("."))})
            )
            return made

        return load

    for name in ("load_text_encoder", "load_transformer", "load_vae"):
        monkeypatch.setattr(models, name, spy(name, getattr(models, name)))
    out = tmp_path / "bf16.mp4"
    args = ["generate", "--checkpoint", str(pipeline_dir), "--prompt", "x", "--out", str(out)]
    args += ["--frames", "5", "--height", "32", "--width", "32", "--steps", "1", "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--dtype", "bfloat16", "--text-encoder-dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert probe(out).num_frames == 5
    want = [
        ("load_text_encoder", {torch.float32}),
        ("load_transformer", {torch.bfloat16}),
        ("load_vae", {torch.bfloat16}),
    ]
    assert loaded == want
    evaluated = ["eval", "--checkpoint", str(pipeline_dir), "--out", str(tmp_path / "eval"), "--limit", "1"]
    evaluated += ["--metrics", "temporal_flickering", "--frames", "5", "--height", "32", "--width", "32"]
    evaluated += ["--steps", "1", "--device", "cpu", "--dtype", "bfloat16", "--text-encoder-dtype", "float32"]
    result = CliRunner().invoke(main, evaluated)
    assert result.exit_code == 0, result.output
    assert loaded == want * 2
    result = CliRunner().invoke(main, [*args, "--dtype", "fp32"])
    assert result.exit_code != 0 and "'fp32' is not one of" in result.output


# ------------------------------------------------------------------------------ one model at a time
def test_phased_sampling_gives_the_video_wanpipeline_itself_gives(pipeline_dir: Path) -> None:
    """The staged path (each model loaded for its phase) and a resident pipeline through the same phases
    give what ``WanPipeline.__call__`` gives for the same prompt, seed and dtypes."""
    import torch

    from medvideocap import models
    from medvideocap.generate import StagedPipeline, sample_videos

    pipe = models.load_wan_pipeline(str(pipeline_dir), dtype="float32")
    opts = {"num_frames": 5, "height": 32, "width": 32, "guidance": 5.0}
    want = pipe(
        prompt="a suture knot", negative_prompt="blurry", num_frames=5, height=32, width=32,
        num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="np",
    ).frames[0]  # fmt: skip
    staged = StagedPipeline(pipeline_dir, device="cpu", dtype="float32", text_encoder_dtype="float32")
    (got,) = sample_videos(staged, ["a suture knot"], steps=2, seed=7, negative_prompt="blurry", **opts)
    (resident,) = sample_videos(pipe, ["a suture knot"], steps=2, seed=7, negative_prompt="blurry", **opts)
    assert got.shape == want.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(resident, want, atol=1e-5)
    (other,) = sample_videos(staged, ["a suture knot"], steps=2, seed=8, negative_prompt="blurry", **opts)
    assert np.abs(other - want).mean() > 1e-3  # another seed is another video


def test_each_model_is_freed_before_the_next_one_loads(
    pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvideocap import models
    from medvideocap.generate import StagedPipeline

    alive: dict[str, weakref.ref[Any]] = {}
    seen: list[tuple[str, list[str]]] = []

    def spy(name: str, real: Any) -> Any:
        def load(*args: Any, **kwargs: Any) -> Any:
            gc.collect()
            seen.append((name, sorted(k for k, ref in alive.items() if ref() is not None)))
            made = real(*args, **kwargs)
            alive[name] = weakref.ref(made[0] if isinstance(made, tuple) else made)
            return made

        return load

    for name in ("load_text_encoder", "load_transformer", "load_vae"):
        monkeypatch.setattr(models, name, spy(name, getattr(models, name)))
    settings = GenerationSettings(frames=5, height=32, width=32, steps=1)
    settings.sample(StagedPipeline(pipeline_dir, device="cpu"), ["a", "b"], seed=0)
    # one load of each for both prompts, and nothing else alive when each loads
    assert seen == [("load_text_encoder", []), ("load_transformer", []), ("load_vae", [])]
    gc.collect()
    assert all(ref() is None for ref in alive.values())


def test_generate_plan_shows_the_phases_and_peaks_at_the_largest_not_their_sum(pipeline_dir: Path) -> None:
    from medvideocap import plan

    result = CliRunner().invoke(
        main, ["generate", "--checkpoint", str(pipeline_dir), "--prompt", "x", "--out", "v.mp4", "--plan"]
    )
    assert result.exit_code == 0, result.output
    names = [line.split("  ")[0] for line in result.output.splitlines()]
    phases = ["load text encoder (bfloat16)", "encode prompts", "load transformer (float32)"]
    phases += ["denoise step", "load VAE (float32)", "VAE decode 81x480x832"]
    assert [n for n in names if any(n.startswith(p) for p in phases)] == [
        n for p in phases for n in names if n.startswith(p)
    ]
    real = plan.plan_generate(GenerationSettings(), device="cpu")  # the real Wan2.1-1.3B configs, on meta
    models = plan.model_configs()
    text = models.text_encoder_count("bfloat16").weight_bytes("bfloat16")
    transformer = models.transformer_count().weight_bytes("float32")
    assert max(s.weights for s in real.stages) == text  # no phase holds two models
    assert real.peak == max(real.host_peak(s) for s in real.stages)
    assert real.peak < text + transformer + real.runtime
    assert real.peak_stage == "encode prompts"


def test_generate_prints_progress_lines_with_rates_and_an_eta_when_stderr_is_no_terminal(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    args = ["generate", "--checkpoint", str(pipeline_dir), "--prompt", "x", "--out", str(tmp_path / "p.mp4")]
    args += ["--frames", "5", "--height", "32", "--width", "32", "--steps", "3", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for task, total, unit in [
        ("load transformer", 1, "model"),
        ("denoise", 3, "step"),
        ("decode", 1, "video"),
    ]:
        last = [line for line in lines if line.startswith(f"generate: {task}: ")][-1]
        assert f"{total}/{total} {unit}s" in last and "ETA 0s" in last, last
        assert f" s/{unit}" in last or f" {unit}s/s" in last, last
