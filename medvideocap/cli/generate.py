"""``medvideocap generate --checkpoint DIR --prompt TEXT --out FILE.mp4``: parse arguments, call
:func:`medvideocap.generate.generate`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from medvideocap.cli.options import generation_options
from medvideocap.models import DTYPE_NAMES, TEXT_ENCODER_DTYPE, VAE_TILING_PIXELS
from medvideocap.plan import PLAN_HELP

_PHASED: list[Callable[[Any], Any]] = [
    click.option(
        "--text-encoder-dtype",
        type=click.Choice(DTYPE_NAMES),
        default=None,
        help=f"Text encoder dtype (default {TEXT_ENCODER_DTYPE} on every device: UMT5-XXL is 11.4 GB in "
        "bfloat16, 22.7 GB in float32). --dtype sets the transformer and the VAE.",
    ),
    click.option(
        "--tiling/--no-tiling",
        "vae_tiling",
        default=None,
        help=f"VAE tiling and slicing while decoding (default: on above {VAE_TILING_PIXELS:,} pixels a frame, "
        "Wan's 480x832).",
    ),
]


def phased_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of sampling one model at a time (:class:`medvideocap.generate.StagedPipeline`) that
    ``generate`` and ``eval`` share."""
    for option in reversed(_PHASED):
        command = option(command)
    return command


@click.command(name="generate")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A trainer output: final/ export, a checkpoints/step-N folder, or any WanPipeline folder.",
)
@click.option("--prompt", required=True, help="What the video should show.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .mp4 file."
)
@click.option("--seed", default=0, show_default=True, help="Random seed of the initial noise.")
@generation_options
@phased_options
@click.option("--plan", "show_plan", is_flag=True, help=PLAN_HELP)
def command(
    checkpoint: Path,
    prompt: str,
    out: Path,
    base: str | None,
    negative_prompt: str | None,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    seed: int,
    fps: float,
    device: str | None,
    dtype: str | None,
    text_encoder_dtype: str | None,
    vae_tiling: bool | None,
    show_plan: bool,
) -> None:
    """Sample a video from a trained MedGen checkpoint (LoRA, full fine-tune or pipeline folder), one model
    in memory at a time (text encoder, transformer, VAE)."""
    from medvideocap.generate import GenerationSettings, generate
    from medvideocap.plan import peak_report, plan_generate, render_plan
    from medvideocap.progress import Progress

    settings = GenerationSettings(
        frames=frames, height=height, width=width, steps=steps, guidance=guidance, base=base
    )
    problems = settings.problems()  # before the checkpoint is read: the flags are what to fix first
    if problems:
        raise click.ClickException("; ".join(problems))
    try:
        plan = plan_generate(
            settings, checkpoint=checkpoint, device=device, dtype=dtype, text_encoder_dtype=text_encoder_dtype
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if show_plan:
        click.echo(render_plan(plan))
        return
    try:
        with Progress() as progress:
            path = generate(
                checkpoint,
                prompt,
                out,
                base=base,
                frames=frames,
                height=height,
                width=width,
                steps=steps,
                guidance=guidance,
                seed=seed,
                negative_prompt=negative_prompt,
                fps=fps,
                device=device,
                dtype=dtype,
                text_encoder_dtype=text_encoder_dtype,
                vae_tiling=vae_tiling,
                progress=progress,
            )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(path))
    click.echo(peak_report(plan), err=True)
