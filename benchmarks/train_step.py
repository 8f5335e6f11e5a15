"""Step time and peak GPU memory of one MedGen training step at Wan's real size.

Wan2.1-T2V-1.3B, 81 frames at 480x832 (latents 16x21x60x104 -> 32,760 video tokens), 512 text tokens,
bf16 autocast, gradient checkpointing, the trainer's own ``build_transformer`` + ``flow_matching_loss`` +
AdamW, so the numbers are the trainer's numbers. Prints step time, samples/s, tokens/s, peak memory,
and the ratio of gradient checkpointing off vs on when ``--compare-checkpointing``.

    python benchmarks/train_step.py                      # real weights (needs the hub or a local folder)
    python benchmarks/train_step.py --random-init        # the 1.3B config, random weights, no download
    python benchmarks/train_step.py --random-init --mode full

Without a CUDA GPU it says so and exits 0 (``--tiny --device cpu`` smoke-tests the script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch


def random_transformer(dtype: torch.dtype) -> Any:
    """The real 1.3B architecture with random weights, cast like ``from_pretrained(torch_dtype=...)``
    (modules diffusers keeps in fp32 stay fp32)."""
    from diffusers import WanTransformer3DModel

    from medvideocap.models import WAN_1_3B_TRANSFORMER_CONFIG

    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model: Any = WanTransformer3DModel(**WAN_1_3B_TRANSFORMER_CONFIG)
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.to(torch.float32)
    return model


def measure(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    from medvideocap.tiny import TINY_TEXT_DIM, TINY_Z_DIM, tiny_transformer
    from medvideocap.train import TrainConfig, build_transformer, flow_matching_loss

    device = torch.device(args.device)
    cfg = TrainConfig(
        model_id=args.model_id,
        mode=args.mode,
        lora_rank=args.rank,
        lora_alpha=args.rank,
        gradient_checkpointing=checkpointing,
        mixed_precision="bf16",
        caption_dropout=0.1,
    )
    dtype = torch.bfloat16
    if args.tiny:
        base, channels, text_dim = tiny_transformer(), TINY_Z_DIM, TINY_TEXT_DIM
    elif args.random_init:
        base, channels, text_dim = random_transformer(dtype), 16, 4096
    else:
        base, channels, text_dim = None, 16, 4096
    model = build_transformer(cfg, dtype, transformer=base).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    batch = {
        "latents": torch.randn(args.batch, channels, f, h, w, device=device),
        "prompt_embeds": torch.randn(args.batch, args.text_len, text_dim, device=device),
    }
    null = torch.zeros(args.text_len, text_dim, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    cuda = device.type == "cuda"
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            loss = flow_matching_loss(model, batch, cfg, gen, null)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    tokens = args.batch * f * (h // 2) * (w // 2)
    out = {
        "gradient_checkpointing": checkpointing,
        "step_s_median": step,
        "samples_per_s": args.batch / step,
        "tokens_per_s": tokens / step,
        "video_tokens_per_sample": tokens // args.batch,
        "trainable_params": sum(p.numel() for p in params),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }
    del model, optimizer, batch
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-id", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", help="hub id or local folder"
    )
    parser.add_argument("--random-init", action="store_true", help="the 1.3B config with random weights")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke-test this script)")
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank (alpha = rank)")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing")
    parser.add_argument("--compare-checkpointing", action="store_true", help="also time checkpointing off")
    parser.add_argument("--device", default=None, help="default: cuda")
    args = parser.parse_args()
    if args.device is None:
        if not torch.cuda.is_available():
            print("no CUDA GPU found: this benchmark measures a real-size training step on a GPU; skipping.")
            return 0
        args.device = "cuda"
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"GPU: {torch.cuda.get_device_name()}", file=sys.stderr)
    results: list[dict[str, Any]] = [measure(args, checkpointing=not args.no_checkpointing)]
    if args.compare_checkpointing and not args.no_checkpointing:
        try:
            results.append(measure(args, checkpointing=False))
        except torch.OutOfMemoryError:
            results.append({"gradient_checkpointing": False, "error": "out of memory"})
    for r in results:
        print(
            json.dumps({"mode": args.mode, "frames": args.frames, "size": f"{args.height}x{args.width}", **r})
        )
    if len(results) == 2 and "step_s_median" in results[1]:
        on, off = results
        print(
            f"checkpointing off/on: step time x{off['step_s_median'] / on['step_s_median']:.2f}, "
            f"peak memory x{off['peak_memory_gib'] / on['peak_memory_gib']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
