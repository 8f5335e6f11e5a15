"""One GPU run of the real-size numbers the CPU cannot give, written as one JSON file (``benchmarks/device.sh``).

    python3 benchmarks/device.py --out DIR [--frames 81 --height 480 --width 832] [--steps 50] [--dry-run]

On the GPU, with random weights (speed and memory do not depend on weight values), at 81x480x832 bf16:

* ``vae_encode``: the real Wan VAE (``AutoencoderKLWan``, bf16) on 2 synthetic clips, timed through our
  ``BatchEncoder.encode_videos`` (what ``encode-latents`` runs) and beside it diffusers' own
  ``AutoencoderKLWan.encode`` on the same clips: seconds per clip, peak memory, and how far apart the two
  posterior means are (they should be equal). Published: ~0.92 s per 81-frame 480p clip on an H200.
* ``train``: the trainer's own pieces (``start_accelerator``, ``build_transformer``, ``prepare_trainee``,
  ``optimizer_step``: AdamW, EMA, bf16 autocast, gradient checkpointing) on the real 1.3B transformer, LoRA
  r32 and full, batch 1: median step time, peak memory (``max_memory_allocated``) beside the memory plan's
  prediction, and MFU = model FLOPs per step / step time / the card's dense bf16 peak (989 TFLOP/s for an
  H100 SXM and an H200). Model FLOPs are counted by ``torch.utils.flop_counter`` on one forward + backward
  of the same model on the ``meta`` device without checkpointing (so the recomputed forward is not counted
  as useful work; ``hfu`` counts it). Published: ~1.5 s/step for Wan2.1-1.3B (FastVideo #605).
* ``generate``: a ``WanPipeline`` of the real architectures (UMT5-XXL, VAE, transformer), 50 steps with
  classifier-free guidance through ``GenerationSettings.sample`` (what ``generate`` and ``eval`` run).
* ``eval``: the metrics that need no API on the generated video (real-size random CLIP/DINO models),
  seconds each.
* ``build_models``: the paper recipe's aesthetic stage path (``clip_embeddings``: CLIP ViT-L/14 image
  embeddings, real size, random weights) on frames of the run's size, one clip's worth (5 frames,
  ``batch: 1``) and the recipe's batch (16 clips, 80 frames, what the pipeline gathers): frames per
  second each, and how much of it is the image processor's CPU preprocessing.

``--dry-run`` runs the same code paths on the CPU with the tiny models of ``medvideocap.tiny`` at 5x32x48
and 2 steps, in well under a minute (``tests/test_device_script.py`` runs it). A stage that fails is
recorded with its error and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks own the random models

GIB = 1 << 30
#: Dense bf16 peak of the cards this is meant for (NVIDIA's spec sheets, SXM parts, without sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
PROMPT = "Laparoscopic view of a surgeon placing interrupted sutures to close a small incision."


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int:
    from medvideocap.plan import measured_peak

    return measured_peak(device)


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - started, out


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------------------------------
# stages


def vae_encode(args: argparse.Namespace, device: str) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan
    from eval import synthetic_video  # benchmarks/eval.py: smooth moving test frames

    from medvideocap import plan
    from medvideocap.latents.encode import BatchEncoder, EncodeConfig
    from medvideocap.models import WAN_VAE_CONFIG
    from medvideocap.tiny import tiny_vae

    dtype = torch.bfloat16
    with torch.device(device):
        vae: Any = tiny_vae() if args.dry_run else AutoencoderKLWan(**WAN_VAE_CONFIG)
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    encoder = BatchEncoder(EncodeConfig(device=device, compute_dtype="bfloat16"), vae=vae)
    clips = [
        torch.from_numpy(synthetic_video(args.frames, args.height, args.width, shift=7 * i)).permute(
            3, 0, 1, 2
        )
        for i in range(2)
    ]
    clips = [(c.float() * 2 - 1).unsqueeze(0) for c in clips]  # (1, 3, F, H, W) in [-1, 1]
    encoder.encode_videos(clips[0])  # warm-up (cuDNN autotune, allocator)
    reset_peak(device)
    ours, theirs, diffs = [], [], []
    for clip in clips:
        seconds, (mean, _) = timed(functools.partial(encoder.encode_videos, clip), device)
        ours.append(seconds)

        def diffusers_encode(clip: torch.Tensor = clip) -> torch.Tensor:
            with torch.inference_mode():
                return vae.encode(clip.to(device, dtype)).latent_dist.mean.float().cpu()

        seconds, reference = timed(diffusers_encode, device)
        theirs.append(seconds)
        diffs.append(float((mean - reference).abs().max()))
    f, h, w = args.frames, args.height, args.width
    predicted = plan.vae_encode_activations(f, h, w, dtype_bytes=2, tiling=False)
    predicted += sum(p.numel() * p.element_size() for p in vae.parameters())
    return {
        "clips": len(clips),
        "size": f"{f}x{h}x{w}",
        "ours_s_per_clip": statistics.mean(ours),
        "diffusers_s_per_clip": statistics.mean(theirs),
        "ours_over_diffusers": statistics.mean(ours) / statistics.mean(theirs),
        "max_abs_diff_of_means": max(diffs),
        "peak_memory_gib": peak_memory(device) / GIB,
        "planned_peak_gib": predicted / GIB if device.startswith("cuda") else None,
        "published_s_per_clip_h200": 0.92,
    }


def _model_flops(
    mode: str, tokens_shape: tuple[int, ...], text: tuple[int, int], config: dict[str, Any]
) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one step without recompute, counted on the meta device."""
    from diffusers import WanTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    from medvideocap.train import TrainConfig, build_transformer

    cfg = TrainConfig(mode=mode, gradient_checkpointing=False)  # type: ignore[arg-type]
    with torch.device("meta"):
        model = build_transformer(cfg, torch.bfloat16, transformer=WanTransformer3DModel.from_config(config))
        latents = torch.zeros(1, *tokens_shape)
        embeds = torch.zeros(1, *text)
    with FlopCounterMode(display=False) as counter:
        out = model(hidden_states=latents, timestep=torch.zeros(1, device="meta"), encoder_hidden_states=embeds,
                    return_dict=False)[0]  # fmt: skip
        forward = float(counter.get_total_flops())
        out.float().pow(2).mean().backward()
    return forward, float(counter.get_total_flops())


def train_step(args: argparse.Namespace, device: str, mode: str) -> dict[str, Any]:
    from train_step import random_transformer  # benchmarks/train_step.py: the 1.3B config, random weights

    from medvideocap import plan
    from medvideocap.models import WAN_1_3B_TRANSFORMER_CONFIG
    from medvideocap.tiny import TINY_TEXT_DIM, TINY_Z_DIM, tiny_transformer
    from medvideocap.train import TrainConfig, build_transformer
    from medvideocap.train.loop import optimizer_step
    from medvideocap.train.prepare import prepare_trainee, start_accelerator

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            mode=mode,  # type: ignore[arg-type]
            output_dir=tmp,
            report_to=None,
            gradient_checkpointing=True,
            mixed_precision="bf16",
            validation_prompts=[],
        )
        accelerator = start_accelerator(cfg)
        base_dtype = torch.bfloat16 if mode == "lora" else torch.float32
        if args.dry_run:
            base: Any = tiny_transformer()
            channels, text_dim, config = TINY_Z_DIM, TINY_TEXT_DIM, None
        else:
            base, channels, text_dim = random_transformer(base_dtype), 16, 4096
            config = WAN_1_3B_TRANSFORMER_CONFIG
        model = prepare_trainee(cfg, accelerator, build_transformer(cfg, torch.bfloat16, transformer=base))
        f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
        batch = {
            "latents": torch.randn(1, channels, f, h, w, device=device),
            "prompt_embeds": torch.randn(1, cfg.text_seq_len, text_dim, device=device),
            "id": ["benchmark"],
        }
        null = torch.zeros(cfg.text_seq_len, text_dim, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        model.transformer.train()
        times = []
        reset_peak(device)
        for _ in range(args.train_warmup + args.train_steps):
            seconds, _ = timed(
                lambda: optimizer_step(cfg, accelerator, model, lambda: batch, gen, null), device
            )
            times.append(seconds)
        step = statistics.median(times[args.train_warmup :])
        peak = peak_memory(device)
        forward, flops = _model_flops(
            mode, (channels, f, h, w), (cfg.text_seq_len, text_dim), dict(config or base.config)
        )
        hw_flops = flops + forward  # checkpointing runs every block's forward again in backward
        card = peak_flops(device)
        planned = plan.plan_train(cfg, frames=(args.frames, args.height, args.width), device=device).peak
        accelerator.end_training()
        return {
            "mode": mode,
            "size": f"{args.frames}x{args.height}x{args.width}",
            "tokens": f * (h // 2) * (w // 2),
            "trainable_params": sum(p.numel() for p in model.params),
            "step_s_median": step,
            "steps_timed": args.train_steps,
            "peak_memory_gib": peak / GIB,
            "planned_peak_gib": planned / GIB,
            "model_tflops_per_step": flops / 1e12,
            "mfu": flops / step / card if card else None,
            "hfu": hw_flops / step / card if card else None,
            "peak_bf16_tflops": card / 1e12 if card else None,
            "published_s_per_step": 1.5,
        }


def generate(args: argparse.Namespace, device: str) -> tuple[dict[str, Any], Any]:
    from eval import random_pipeline  # benchmarks/eval.py: WanPipeline of the real shapes, random weights

    from medvideocap import plan
    from medvideocap.generate import GenerationSettings
    from medvideocap.models import load_wan_pipeline
    from medvideocap.tiny import save_tiny_pipeline

    if args.dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            pipe = load_wan_pipeline(str(save_tiny_pipeline(Path(tmp) / "tiny")), dtype="bfloat16").to(device)
    else:
        pipe = random_pipeline(device, torch.bfloat16)
    settings = GenerationSettings(frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    reset_peak(device)
    seconds, (video,) = timed(lambda: settings.sample(pipe, [PROMPT], seed=0), device)
    planned = plan.plan_generate(settings, device=device, dtype="bfloat16").peak
    result = {
        "size": f"{args.frames}x{args.height}x{args.width}",
        "steps": args.steps,
        "guidance": settings.guidance,
        "seconds": seconds,
        "s_per_step": seconds / args.steps,
        "peak_memory_gib": peak_memory(device) / GIB,
        "planned_peak_gib": planned / GIB,
    }
    return result, video


def evaluate(args: argparse.Namespace, device: str, video: Any) -> dict[str, Any]:
    import numpy as np
    from eval import random_metric_models, tiny_metric_models  # benchmarks/eval.py

    from medvideocap.eval.metrics import build_metrics

    frames = (np.clip(np.asarray(video), 0, 1) * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        models = (tiny_metric_models if args.dry_run else random_metric_models)(Path(tmp))
        # the model metrics with random real-size models, and the model-free ones (not the API judges)
        names = [*models, "temporal_flickering", "flow_interpolation_smoothness"]
        metrics = build_metrics(names, models, device=device)
        out: dict[str, Any] = {"frames": list(frames.shape)}
        for metric in metrics:
            metric.score(frames, PROMPT)  # loads its model: not what a video costs
            seconds, value = timed(functools.partial(metric.score, frames, PROMPT), device)
            out[metric.name] = {"s_per_video": seconds, "value": value}
    return out


def build_models(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import numpy as np
    from eval import random_metric_models, synthetic_video, tiny_metric_models  # benchmarks/eval.py

    from medvideocap.build.stages.aesthetic import clip_embeddings, clip_model

    video = synthetic_video(80, args.height, args.width)
    frames = list((video * 255).round().astype(np.uint8))
    out: dict[str, Any] = {"frame_size": [args.height, args.width]}
    with tempfile.TemporaryDirectory() as tmp:
        spec = (tiny_metric_models if args.dry_run else random_metric_models)(Path(tmp))["aesthetic_quality"][
            ""
        ]
        clip_embeddings(spec, frames[:8], device=device)  # loads the model: not what a clip costs
        _, processor = clip_model(spec, device)
        for batch in (5, 80):  # one clip's frames; the paper recipe's 16 clips
            seconds, emb = timed(
                functools.partial(clip_embeddings, spec, frames[:batch], device=device), device
            )
            started = time.perf_counter()
            processor(images=frames[:batch], return_tensors="pt")
            preprocess = time.perf_counter() - started
            out[f"batch_{batch}"] = {
                "seconds": seconds,
                "frames_per_s": batch / seconds,
                "preprocess_share": min(1.0, preprocess / seconds),
                "embedding_dim": int(emb.shape[1]),
            }
    return out


# ----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-out")))
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny models on the CPU (checks the code paths)"
    )
    parser.add_argument("--frames", type=int, default=None, help="default 81 (5 with --dry-run)")
    parser.add_argument("--height", type=int, default=None, help="default 480 (32 with --dry-run)")
    parser.add_argument("--width", type=int, default=None, help="default 832 (48 with --dry-run)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps, default 50 (2 with --dry-run)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=None, help="timed steps, default 3 (1 with --dry-run)"
    )
    parser.add_argument("--train-warmup", type=int, default=1)
    parser.add_argument("--stages", default="vae_encode,train_lora,train_full,generate,eval,build_models")
    args = parser.parse_args()
    small = args.dry_run
    args.frames = args.frames or (5 if small else 81)
    args.height = args.height or (32 if small else 480)
    args.width = args.width or (48 if small else 832)
    args.steps = args.steps or (2 if small else 50)
    args.train_steps = args.train_steps or (1 if small else 3)
    device = "cpu" if small else "cuda"
    if not small and not torch.cuda.is_available():
        print(
            "device.py: no CUDA GPU here; use --dry-run to check the code paths on the CPU", file=sys.stderr
        )
        return 2
    if not small:
        torch.backends.cuda.matmul.allow_tf32 = True
    stages = args.stages.split(",")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "dry_run": small,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "stages": {},
    }
    try:
        import diffusers

        report["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    failed = False
    video = None

    def run(name: str, fn: Callable[[], Any]) -> Any:
        nonlocal failed
        if name not in stages:
            return None
        started = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - one stage failing must not lose the others' numbers
            failed = True
            report["stages"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            print(f"{name}: FAILED {exc}", file=sys.stderr, flush=True)
            return None
        result, extra = out if isinstance(out, tuple) else (out, None)
        result["stage_seconds"] = time.perf_counter() - started
        report["stages"][name] = result
        print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        return extra

    run("vae_encode", lambda: vae_encode(args, device))
    run("train_lora", lambda: train_step(args, device, "lora"))
    run("train_full", lambda: train_step(args, device, "full"))
    video = run("generate", lambda: generate(args, device))
    if "eval" in stages and video is None:
        from eval import synthetic_video

        video = synthetic_video(args.frames, args.height, args.width).astype("float32")
    run("eval", lambda: evaluate(args, device, video))
    run("build_models", lambda: build_models(args, device))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("device-dry-run.json" if small else "device.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(str(path))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
