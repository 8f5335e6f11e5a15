"""Real Wan2.1 VAE encode throughput on a GPU: clips/s at 81x480x832 in bf16 (what encode-latents pays
per clip), plus the UMT5 text-encoder cost per caption.

    python benchmarks/vae_encode_gpu.py [--model Wan-AI/Wan2.1-T2V-1.3B-Diffusers] [--batch-size 1]
        [--frames 81 --height 480 --width 832] [--tiling] [--slicing] [--text] [--random-init]

Needs a CUDA GPU and the Wan2.1 weights (downloaded, or in the local HF cache). ``--random-init``
builds ``AutoencoderKLWan()`` with its default config - the real Wan2.1 VAE architecture - with random
weights, for timing where the weights cannot be fetched (speed does not depend on weight values).
It runs the same ``BatchEncoder.encode_videos`` that ``medvideocap encode-latents`` uses.
Exits with status 2 and a message when there is no GPU or no weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def fail(message: str) -> None:
    print(f"vae_encode_gpu: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", help="Hub id or local folder.")
    parser.add_argument("--subfolder", default="vae", help="VAE subfolder.")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="Timed batches.")
    parser.add_argument(
        "--warmup", type=int, default=1, help="Untimed batches first (cudnn autotune, allocator)."
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiling", action="store_true", help="VAE spatial tiling.")
    parser.add_argument("--slicing", action="store_true", help="VAE batch slicing.")
    parser.add_argument(
        "--text", action="store_true", help="Also time the UMT5 text encoder (max_length 512)."
    )
    parser.add_argument("--random-init", action="store_true", help="Wan2.1 VAE architecture, random weights.")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        fail("torch is not installed (pip install 'medvideocap[train]')")
    if not torch.cuda.is_available():
        fail(
            "no CUDA GPU visible; this benchmark measures GPU encode throughput (CPU numbers: benchmarks/latents.py)"
        )

    from medvideocap.latents.encode import BatchEncoder, EncodeConfig

    config = EncodeConfig(
        vae=args.model,
        vae_subfolder=args.subfolder or None,
        device="cuda",
        compute_dtype=args.dtype,
        batch_size=args.batch_size,
        tiling=args.tiling,
        slicing=args.slicing,
    )
    dtype = getattr(torch, args.dtype)
    try:
        if args.random_init:
            from diffusers import AutoencoderKLWan

            vae: Any = AutoencoderKLWan().to("cuda", dtype).eval().requires_grad_(False)  # type: ignore[attr-defined]
            if args.tiling:
                vae.enable_tiling()
            if args.slicing:
                vae.enable_slicing()
        else:
            from medvideocap.latents.encode import load_vae

            vae = load_vae(config)
    except Exception as exc:  # noqa: BLE001 - turn a missing download into a clear message
        fail(
            f"cannot load the VAE {args.model}/{args.subfolder}: {type(exc).__name__}: {exc} (try --random-init)"
        )
    text_encoder = tokenizer = None
    if args.text:
        if args.random_init:
            fail("--text needs the real UMT5 weights; drop --random-init")
        from medvideocap.latents.encode import load_text_encoder

        try:
            text_encoder, tokenizer = load_text_encoder(config)
        except Exception as exc:  # noqa: BLE001
            fail(f"cannot load the text encoder of {args.model}: {type(exc).__name__}: {exc}")
    encoder = BatchEncoder(
        config, vae=vae, text_encoder=text_encoder or object(), tokenizer=tokenizer or object()
    )

    shape = (args.batch_size, 3, args.frames, args.height, args.width)
    videos = (torch.rand(shape, device="cuda", dtype=dtype) * 2 - 1).contiguous()
    print(
        f"{torch.cuda.get_device_name()}  VAE {type(vae).__name__} {'(random init) ' if args.random_init else ''}"
        f"{args.dtype}  input {tuple(shape)}  tiling={args.tiling} slicing={args.slicing}"
    )
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        encoder.encode_videos(videos)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        mean, _logvar = encoder.encode_videos(videos)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.iters
    clips = args.batch_size / seconds
    print(
        f"latents {tuple(mean.shape)}  {seconds:.3f} s/batch  {clips:.3f} clips/s  "
        f"{clips * 3600:.0f} clips/h/GPU  peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )
    print(f"MedVideoCap-55K (55,803 clips) at this rate: {55803 / clips / 3600:.1f} GPU-hours for the VAE")
    if args.text:
        captions = ["A surgeon performs a laparoscopic cholecystectomy, dissecting Calot's triangle. " * 3]
        encoder.encode_texts(captions * args.batch_size)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            encoder.encode_texts(captions * args.batch_size)
        torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / args.iters / args.batch_size
        print(f"UMT5 text encoder: {per * 1000:.1f} ms/caption ({1 / per:.1f} captions/s)")


if __name__ == "__main__":
    main()
