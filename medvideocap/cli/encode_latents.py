"""``medvideocap encode-latents SOURCE --out DIR``: parse arguments, call
:func:`medvideocap.latents.encode.encode_latents`, print what was done.

Every default shown here is read from its owner (:class:`~medvideocap.latents.encode.EncodeConfig`'s
fields, the frame spec it encodes with, :func:`~medvideocap.latents.encode.encode_latents`'s keywords),
so the CLI and the Python API cannot drift apart; ``tests/test_encode_latents.py`` pins it.
"""

from __future__ import annotations

import inspect
import json
from typing import Literal

import click

from medvideocap.disk import ResourceError
from medvideocap.latents.encode import EncodeConfig, encode_latents
from medvideocap.latents.format import LatentCacheError
from medvideocap.locations import LocationError, parse_storage_options, resolve_output
from medvideocap.lock import LockedError
from medvideocap.media.frames import FrameSpec
from medvideocap.models import DTYPE_NAMES, TEXT_ENCODER_DTYPE
from medvideocap.paths import check_apart
from medvideocap.plan import PLAN_HELP, peak_report, plan_encode, render_plan

_CONFIG = EncodeConfig()
_FRAMES = _CONFIG.frame_spec()
_RUN = {name: p.default for name, p in inspect.signature(encode_latents).parameters.items()}


def _bucket(text: str) -> tuple[int, int, int]:
    try:
        f, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError as exc:
        raise click.BadParameter(f"bucket {text!r} must be FRAMESxHEIGHTxWIDTH, e.g. 81x480x832") from exc
    return f, h, w


@click.command(name="encode-latents")
@click.argument("source")
@click.option(
    "--out",
    "out",
    required=True,
    help="Cache folder to write or resume: a local folder or an object-store URL (s3://bucket/latents).",
)
@click.option(
    "--storage-option",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec storage option of an object-store --out (endpoint_url=..., key=..., secret=...); repeat for "
    "several. VALUE is read as JSON when it parses. The backend's own environment (AWS_*) applies too.",
)
@click.option(
    "--split", "splits", multiple=True, default=_RUN["splits"], show_default=True, help="Split(s) to encode."
)
@click.option("--vae", default=_CONFIG.vae, show_default=True, help="VAE hub id or local folder.")
@click.option(
    "--vae-subfolder",
    default=_CONFIG.vae_subfolder,
    show_default=True,
    help="Subfolder of the VAE ('' for none).",
)
@click.option("--vae-revision", default=_CONFIG.vae_revision, help="Hub revision of the VAE.")
@click.option(
    "--text-encoder",
    default=_CONFIG.text_encoder,
    help="Text encoder hub id or folder (default: the --vae repo).",
)
@click.option(
    "--text-encoder-subfolder",
    default=_CONFIG.text_encoder_subfolder,
    show_default=True,
    help="Subfolder of the encoder.",
)
@click.option(
    "--tokenizer-subfolder",
    default=_CONFIG.tokenizer_subfolder,
    show_default=True,
    help="Subfolder of the tokenizer.",
)
@click.option(
    "--text-encoder-revision", default=_CONFIG.text_encoder_revision, help="Hub revision of the text encoder."
)
@click.option(
    "--max-length", default=_CONFIG.max_length, show_default=True, help="Tokenizer max length (Wan uses 512)."
)
@click.option(
    "--store",
    type=click.Choice(["moments", "sample"]),
    default=_CONFIG.store,
    show_default=True,
    help="Store the VAE posterior mean + log-variance (re-sampled per epoch at load) or one fixed sample.",
)
@click.option("--caption", default=_CONFIG.caption, show_default=True, help="Caption slot to embed.")
@click.option(
    "--num-frames", default=_FRAMES.num_frames, show_default=True, help="Frames per clip (4k+1 for Wan)."
)
@click.option("--fps", default=_FRAMES.fps, show_default=True, help="Frame rate the clip is resampled to.")
@click.option("--height", default=_FRAMES.height, show_default=True, help="Output height (multiple of 16).")
@click.option("--width", default=_FRAMES.width, show_default=True, help="Output width (multiple of 16).")
@click.option(
    "--position",
    type=click.Choice(["start", "center", "random"]),
    default=_FRAMES.position,
    show_default=True,
    help="Where the frame window sits in the clip (random is seeded per clip id).",
)
@click.option(
    "--short",
    type=click.Choice(["skip", "pad"]),
    default=_FRAMES.short,
    show_default=True,
    help="Clips too short.",
)
@click.option("--bucket", "buckets", multiple=True, help="Allowed FRAMESxHEIGHTxWIDTH bucket (repeatable).")
@click.option(
    "--batch-size", default=_CONFIG.batch_size, show_default=True, help="Clips per VAE forward pass."
)
@click.option(
    "--device", default=_CONFIG.device, help="torch device (default: cuda when available, else cpu)."
)
@click.option(
    "--dtype",
    "compute_dtype",
    type=click.Choice(DTYPE_NAMES),
    default=_CONFIG.compute_dtype,
    help="Compute dtype of both the VAE and the text encoder (shorthand for the two options below).",
)
@click.option(
    "--vae-dtype",
    type=click.Choice(DTYPE_NAMES),
    default=_CONFIG.vae_dtype,
    help="VAE compute dtype (default: --dtype, else bfloat16 on GPU, float32 on CPU).",
)
@click.option(
    "--text-encoder-dtype",
    type=click.Choice(DTYPE_NAMES),
    default=_CONFIG.text_encoder_dtype,
    help=f"Text encoder dtype (default: --dtype, else {TEXT_ENCODER_DTYPE} on every device: UMT5-XXL is "
    "11.4 GB in bfloat16, 22.7 GB in float32).",
)
@click.option(
    "--storage-dtype",
    type=click.Choice(["float32", "float16"]),
    default=_CONFIG.storage_dtype,
    show_default=True,
    help=(
        "dtype of the stored bytes (float32 is lossless for bf16 compute). float16 halves the cache, but "
        "FastVideo's parquet datasets decode latent and text bytes as float32 whatever the *_dtype column "
        "says, so they cannot read a float16 cache (medvideocap.load_latents reads both; writing one warns)."
    ),
)
@click.option(
    "--tiling/--no-tiling", default=_CONFIG.tiling, help="VAE spatial tiling (less memory, large frames)."
)
@click.option(
    "--slicing/--no-slicing",
    default=_CONFIG.slicing,
    help="VAE batch slicing (one clip at a time through the VAE).",
)
@click.option(
    "--rows-per-shard", default=_CONFIG.rows_per_shard, show_default=True, help="Clips per parquet shard."
)
@click.option(
    "--flush-seconds",
    default=_CONFIG.flush_seconds,
    show_default=True,
    type=float,
    help="Also write a shard once its oldest clip has waited this long, so a slow run keeps its work.",
)
@click.option(
    "--backend",
    default=_CONFIG.backend,
    show_default=True,
    help="Video decoder for medvideocap.loading.loader.",
)
@click.option(
    "--num-workers",
    default=_CONFIG.num_workers,
    show_default=True,
    help="Processes decoding clips ahead of the encoder.",
)
@click.option(
    "--sample-seed",
    default=_CONFIG.sample_seed,
    show_default=True,
    help="Seed of the posterior sample (--store sample).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default=_RUN["engine"],
    show_default=True,
    help="local: this process (one rank per torchrun/accelerate process); ray: actors over a Ray cluster.",
)
@click.option(
    "--ray-concurrency",
    default=_CONFIG.ray_concurrency,
    show_default=True,
    help="Ray encoder actors (one GPU each).",
)
@click.option(
    "--limit", default=_RUN["limit"], type=int, help="Only the first N clips of each split (smoke runs)."
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="Do not draw the progress bar (per split and rank: clips, clips/s, dropped so far, ETA; on stderr).",
)
@click.option(
    "--ray-address",
    default=_RUN["ray_address"],
    help="--engine ray: address of an existing Ray cluster (default: $RAY_ADDRESS, else start a local one).",
)
@click.option("--plan", "show_plan", is_flag=True, help=PLAN_HELP)
def command(
    source: str,
    out: str,
    storage_option: tuple[str, ...],
    splits: tuple[str, ...],
    vae: str,
    vae_subfolder: str,
    vae_revision: str | None,
    text_encoder: str | None,
    text_encoder_subfolder: str,
    tokenizer_subfolder: str,
    text_encoder_revision: str | None,
    max_length: int,
    store: Literal["moments", "sample"],
    caption: str,
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    position: Literal["start", "center", "random"],
    short: Literal["skip", "pad"],
    buckets: tuple[str, ...],
    batch_size: int,
    device: str | None,
    compute_dtype: str | None,
    vae_dtype: str | None,
    text_encoder_dtype: str | None,
    storage_dtype: Literal["float32", "float16"],
    tiling: bool,
    slicing: bool,
    rows_per_shard: int,
    flush_seconds: float,
    backend: str,
    num_workers: int,
    sample_seed: int,
    engine: Literal["local", "ray"],
    ray_concurrency: int,
    limit: int | None,
    no_progress: bool,
    ray_address: str | None,
    show_plan: bool,
) -> None:
    """Pre-encode clips to Wan2.1 VAE latents + UMT5 text embeddings (a FastVideo-compatible parquet
    cache with a manifest and fingerprint). Rerunning resumes; under torchrun/accelerate each rank
    (RANK/WORLD_SIZE) encodes its own share of the clips. Progress goes to stderr; stdout gets one JSON
    summary line per split. --out may be an object-store URL (s3://, gs://, az://)."""
    frames = FrameSpec(
        num_frames=num_frames,
        fps=fps,
        height=height,
        width=width,
        position=position,
        short=short,
        buckets=tuple(_bucket(b) for b in buckets) or None,
    )
    config = EncodeConfig(
        vae=vae,
        vae_subfolder=vae_subfolder or None,  # '' on the command line: the repo root
        vae_revision=vae_revision,
        text_encoder=text_encoder,
        text_encoder_subfolder=text_encoder_subfolder or None,
        tokenizer_subfolder=tokenizer_subfolder or None,
        text_encoder_revision=text_encoder_revision,
        max_length=max_length,
        store=store,
        caption=caption,
        storage_dtype=storage_dtype,
        sample_seed=sample_seed,
        device=device,
        compute_dtype=compute_dtype,
        vae_dtype=vae_dtype,
        text_encoder_dtype=text_encoder_dtype,
        batch_size=batch_size,
        tiling=tiling,
        slicing=slicing,
        rows_per_shard=rows_per_shard,
        flush_seconds=flush_seconds,
        backend=backend,
        num_workers=num_workers,
        ray_concurrency=ray_concurrency,
        frames=frames,
    )
    if show_plan:
        click.echo(render_plan(plan_encode(config)))
        return
    try:
        options = parse_storage_options(storage_option)
        if resolve_output(out).local is not None:
            check_apart(source, out, src_label="the source", error=click.ClickException)
        reports = encode_latents(
            source,
            out,
            splits=splits,
            config=config,
            engine=engine,
            ray_address=ray_address,
            limit=limit,
            progress=not no_progress,
            storage_options=options or None,
        )
    # another run on this split and rank, a full disk, an unreachable bucket, a cache of other settings
    except (LockedError, ResourceError, LatentCacheError, LocationError) as exc:
        raise click.ClickException(str(exc)) from None
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
    click.echo(peak_report(plan_encode(config)), err=True)
