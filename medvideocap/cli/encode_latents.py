"""``medvideocap encode-latents SOURCE --out DIR``: parse arguments, call
:func:`medvideocap.latents.encode.encode_latents`, print what was done."""

from __future__ import annotations

import json

import click

from medvideocap.defaults import WAN_T2V_1_3B


def _bucket(text: str) -> tuple[int, int, int]:
    try:
        f, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError as exc:
        raise click.BadParameter(f"bucket {text!r} must be FRAMESxHEIGHTxWIDTH, e.g. 81x480x832") from exc
    return f, h, w


@click.command(name="encode-latents")
@click.argument("source")
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Cache folder to write or resume."
)
@click.option(
    "--split", "splits", multiple=True, default=("train",), show_default=True, help="Split(s) to encode."
)
@click.option("--vae", default=WAN_T2V_1_3B, show_default=True, help="VAE hub id or local folder.")
@click.option("--vae-subfolder", default="vae", show_default=True, help="Subfolder of the VAE ('' for none).")
@click.option("--vae-revision", default=None, help="Hub revision of the VAE.")
@click.option("--text-encoder", default=None, help="Text encoder hub id or folder (default: the --vae repo).")
@click.option(
    "--text-encoder-subfolder", default="text_encoder", show_default=True, help="Subfolder of the encoder."
)
@click.option(
    "--tokenizer-subfolder", default="tokenizer", show_default=True, help="Subfolder of the tokenizer."
)
@click.option("--text-encoder-revision", default=None, help="Hub revision of the text encoder.")
@click.option("--max-length", default=512, show_default=True, help="Tokenizer max length (Wan uses 512).")
@click.option(
    "--store",
    type=click.Choice(["moments", "sample"]),
    default="moments",
    show_default=True,
    help="Store the VAE posterior mean + log-variance (re-sampled per epoch at load) or one fixed sample.",
)
@click.option("--caption", default="detailed", show_default=True, help="Caption slot to embed.")
@click.option("--num-frames", default=81, show_default=True, help="Frames per clip (4k+1 for Wan).")
@click.option("--fps", default=16.0, show_default=True, help="Frame rate the clip is resampled to.")
@click.option("--height", default=480, show_default=True, help="Output height (multiple of 16).")
@click.option("--width", default=832, show_default=True, help="Output width (multiple of 16).")
@click.option(
    "--position",
    type=click.Choice(["start", "center", "random"]),
    default="center",
    show_default=True,
    help="Where the frame window sits in the clip (random is seeded per clip id).",
)
@click.option(
    "--short", type=click.Choice(["skip", "pad"]), default="skip", show_default=True, help="Clips too short."
)
@click.option("--bucket", "buckets", multiple=True, help="Allowed FRAMESxHEIGHTxWIDTH bucket (repeatable).")
@click.option("--batch-size", default=1, show_default=True, help="Clips per VAE forward pass.")
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option(
    "--dtype", "compute_dtype", default=None, help="Compute dtype (default bfloat16 on GPU, float32 on CPU)."
)
@click.option(
    "--storage-dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help=(
        "dtype of the stored bytes (float32 is lossless for bf16 compute). float16 halves the cache, but "
        "FastVideo's parquet datasets decode latent and text bytes as float32 whatever the *_dtype column "
        "says, so they cannot read a float16 cache (medvideocap.load_latents reads both; writing one warns)."
    ),
)
@click.option("--tiling/--no-tiling", default=False, help="VAE spatial tiling (less memory, large frames).")
@click.option(
    "--slicing/--no-slicing", default=False, help="VAE batch slicing (one clip at a time through the VAE)."
)
@click.option("--rows-per-shard", default=64, show_default=True, help="Clips per parquet shard.")
@click.option(
    "--backend", default="torchcodec", show_default=True, help="Video decoder for medvideocap.loading.loader."
)
@click.option(
    "--num-workers", default=2, show_default=True, help="Processes decoding clips ahead of the encoder."
)
@click.option(
    "--sample-seed", default=0, show_default=True, help="Seed of the posterior sample (--store sample)."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process (one rank per torchrun/accelerate process); ray: actors over a Ray cluster.",
)
@click.option("--ray-concurrency", default=1, show_default=True, help="Ray encoder actors (one GPU each).")
@click.option("--limit", default=None, type=int, help="Only the first N clips of each split (smoke runs).")
@click.option(
    "--no-progress",
    is_flag=True,
    help="Do not draw the progress bar (per split and rank: clips, clips/s, dropped so far, ETA; on stderr).",
)
def command(source: str, out: str, splits: tuple[str, ...], **opts: object) -> None:
    """Pre-encode clips to Wan2.1 VAE latents + UMT5 text embeddings (a FastVideo-compatible parquet
    cache with a manifest and fingerprint). Rerunning resumes; under torchrun/accelerate each rank
    (RANK/WORLD_SIZE) encodes its own share of the clips. Progress goes to stderr; stdout gets one JSON
    summary line per split."""
    from medvideocap.latents.encode import EncodeConfig, encode_latents
    from medvideocap.media.frames import FrameSpec

    frames = FrameSpec(
        num_frames=int(opts.pop("num_frames")),  # type: ignore[call-overload]
        fps=float(opts.pop("fps")),  # type: ignore[arg-type]
        height=int(opts.pop("height")),  # type: ignore[call-overload]
        width=int(opts.pop("width")),  # type: ignore[call-overload]
        position=opts.pop("position"),  # type: ignore[arg-type]
        short=opts.pop("short"),  # type: ignore[arg-type]
        buckets=tuple(_bucket(b) for b in opts.pop("buckets")) or None,  # type: ignore[attr-defined]
    )
    engine = opts.pop("engine")
    limit = opts.pop("limit")
    progress = not opts.pop("no_progress")
    concurrency = opts.pop("ray_concurrency")
    for key in ("vae_subfolder", "text_encoder_subfolder", "tokenizer_subfolder"):
        opts[key] = opts[key] or None
    config = EncodeConfig(frames=frames, extra={"ray_concurrency": concurrency}, **opts)  # type: ignore[arg-type]
    reports = encode_latents(
        source,
        out,
        splits=splits,
        config=config,
        engine=engine,  # type: ignore[arg-type]
        limit=limit,  # type: ignore[arg-type]
        progress=progress,
    )
    for r in reports:
        click.echo(
            json.dumps(
                {
                    "split": r.split,
                    "rank": r.rank,
                    "world_size": r.world_size,
                    "assigned": r.assigned,
                    "already_done": r.skipped_done,
                    "encoded": r.encoded,
                    "dropped": r.dropped,
                    "shards": len(r.shards),
                    "fingerprint": r.fingerprint,
                }
            )
        )
