"""Seconds per prompt of ``medvideocap eval``: generation, and each metric, on the device it runs on.

Times the runner's own pieces (:func:`medvideocap.generate.sample_videos` + ``write_mp4``, the eval's
``read_video`` and every metric's ``score``) after one warm-up prompt, so model loading is not counted.

    python benchmarks/eval.py                    # tiny random models (CPU smoke test of the numbers' shape)
    python benchmarks/eval.py --random-init      # real architectures, random weights: Wan2.1-T2V-1.3B
                                                 # (+ UMT5-XXL, Wan VAE), DINO ViT-B/16, CLIP B/32 and L/14
    python benchmarks/eval.py --random-init --frames 81 --height 480 --width 832 --steps 50

Nothing downloads: ``--random-init`` builds the real configurations in memory (the metric models are
saved to a temporary folder so their real loading code runs). It prints the device it measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({torch.get_num_threads()} threads)"


def synthetic_video(frames: int, height: int, width: int, shift: int = 0) -> np.ndarray:
    """A smooth colour pattern panning one pixel a frame, float (T, H, W, 3) in [0, 1] like the pipeline's."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack(
        [
            np.stack([0.5 + 0.4 * np.sin((x + t + shift) / 17), 0.5 + 0.4 * np.cos(y / 13), x / width], -1)
            for t in range(frames)
        ]
    )


def random_pipeline(device: str, dtype: torch.dtype) -> Any:
    """``WanPipeline`` with the real Wan2.1-T2V-1.3B shapes and random weights (UMT5-XXL encoder, Wan VAE)."""
    from diffusers import AutoencoderKLWan, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from medvideocap.tiny import tiny_scheduler, tiny_tokenizer

    umt5_xxl = UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
    )
    # The training benchmark owns "the 1.3B transformer with random weights, cast the way diffusers does".
    from train_step import random_transformer

    transformer = random_transformer(dtype).to(device)
    with torch.device(device):
        vae: Any = AutoencoderKLWan()  # stays fp32, as Wan's VAE runs
        encoder: Any = UMT5EncoderModel(umt5_xxl)
    encoder = encoder.to(dtype)
    pipe: Any = WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=encoder.eval(),
        vae=vae.eval(),
        scheduler=tiny_scheduler(flow_shift=3.0),
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clip_l14_config() -> Any:
    """CLIP ViT-L/14's shapes (transformers' CLIPConfig at the L/14 widths; 768-wide projection)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
        },
        projection_dim=768,
    )


def random_metric_models(root: Path) -> dict[str, dict[str, str]]:
    """Real-size DINO ViT-B/16, CLIP ViT-B/32 and ViT-L/14 (transformers' default configs are those
    models' shapes), random weights, saved with their processors and a tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

    from medvideocap.eval.tiny import save_tiny_aesthetic_head
    from medvideocap.tiny import tiny_tokenizer

    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(root / "dino")
    ViTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(
        root / "dino"
    )
    for name, config in (("clip-b32", CLIPConfig()), ("clip-l14", clip_l14_config())):
        CLIPModel(config).save_pretrained(root / name)
        CLIPImageProcessor().save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
    head = save_tiny_aesthetic_head(root / "head.safetensors", embed_dim=768)
    return _models(root / "dino", root / "clip-b32", root / "clip-l14", head)


def tiny_metric_models(root: Path) -> dict[str, dict[str, str]]:
    from medvideocap.eval.tiny import (
        save_tiny_aesthetic_head,
        save_tiny_clip,
        save_tiny_dino,
        save_tiny_musiq,
        save_tiny_videoscore,
    )

    clip = save_tiny_clip(root / "clip")
    models = _models(
        save_tiny_dino(root / "dino"), clip, clip, save_tiny_aesthetic_head(root / "head.safetensors")
    )
    models["imaging_quality"] = {"": str(save_tiny_musiq(root / "musiq.pth"))}
    models["videoscore"] = {"": str(save_tiny_videoscore(root / "videoscore"))}
    return models


def _models(dino: Path, clip: Path, clip_large: Path, head: Path) -> dict[str, dict[str, str]]:
    return {
        "subject_consistency": {"": str(dino)},
        "background_consistency": {"": str(clip)},
        "imaging_quality_clipiqa": {"": str(clip)},
        "text_video_alignment": {"": str(clip)},
        "aesthetic_quality": {"": str(clip_large), "head": str(head)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-init", action="store_true", help="real architectures, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=3, help="timed prompts (after one warm-up)")
    parser.add_argument("--frames", type=int, default=None, help="default 5 tiny, 17 random-init")
    parser.add_argument("--height", type=int, default=None, help="default 32 tiny, 480 random-init")
    parser.add_argument("--width", type=int, default=None, help="default 32 tiny, 832 random-init")
    parser.add_argument("--steps", type=int, default=None, help="default 2 tiny, 10 random-init")
    parser.add_argument("--metrics", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--skip-generation",
        action="store_true",
        help="time the metrics only, on a synthetic panning video of the same size (e.g. real-size metric "
        "models on a CPU, where the 1.3B pipeline with UMT5-XXL does not fit)",
    )
    args = parser.parse_args()

    from medvideocap.eval.metrics import METRICS, build_metrics
    from medvideocap.eval.prompts import load_prompts
    from medvideocap.eval.runner import read_video
    from medvideocap.generate import load_pipeline, sample_videos, write_mp4
    from medvideocap.tiny import save_tiny_pipeline

    real = args.random_init
    frames = args.frames or (17 if real else 5)
    height, width = args.height or (480 if real else 32), args.width or (832 if real else 32)
    steps = args.steps or (10 if real else 2)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    prompts = [p.prompt for p in load_prompts()[: args.prompts + 1]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        pipe: Any = None
        if not args.skip_generation:
            pipe = (
                random_pipeline(args.device, dtype)
                if real
                else load_pipeline(save_tiny_pipeline(root / "wan"), device=args.device)
            )
        models = random_metric_models(root) if real else tiny_metric_models(root)
        setup_s = time.perf_counter() - started
        # every metric with a model built here (medical_accuracy needs a served judge; name it to time it)
        names = args.metrics.split(",") if args.metrics else [m for m in METRICS if m != "medical_accuracy"]
        metrics = build_metrics(names, models, device=args.device)
        gen: list[float] = []
        per_metric: dict[str, list[float]] = {m.name: [] for m in metrics}
        for i, prompt in enumerate(prompts):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if pipe is None:
                video = synthetic_video(frames, height, width, shift=i)
            else:
                (video,) = sample_videos(
                    pipe, [prompt], num_frames=frames, height=height, width=width, steps=steps, seed=i
                )
            path = write_mp4(video, root / f"{i}.mp4")
            decoded = read_video(path)
            if i:
                gen.append(time.perf_counter() - t0)
            for metric in metrics:
                t1 = time.perf_counter()
                metric.score(decoded, prompt)
                if i:
                    per_metric[metric.name].append(time.perf_counter() - t1)
    result = {
        "device": device_name(args.device),
        "models": "random-init real architectures"
        if real
        else "tiny random (medvideocap.tiny, medvideocap.eval.tiny)",
        "video": {"frames": frames, "height": height, "width": width, "steps": steps, "guidance": 5.0},
        "timed_prompts": args.prompts,
        "setup_s": round(setup_s, 2),
        "seconds_per_prompt": {
            (
                "mp4 + decode (generation skipped)" if pipe is None else "generation (sample + mp4 + decode)"
            ): round(float(np.mean(gen)), 4),
            **{k: round(float(np.mean(v)), 4) for k, v in per_metric.items()},
        },
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    made = "synthetic videos, no generation" if args.skip_generation else f"{steps} denoising steps"
    print(f"measured on {result['device']} with {result['models']}, {frames}x{height}x{width}, {made}")
    width_col = max(len(k) for k in result["seconds_per_prompt"])
    for name, value in result["seconds_per_prompt"].items():
        print(f"  {name:<{width_col}}  {value:10.4f} s/prompt")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
