"""``medvideocap generate --checkpoint DIR --prompt TEXT --out FILE.mp4``: parse arguments, call
:func:`medvideocap.generate.generate`."""

from __future__ import annotations

from pathlib import Path

import click


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
@click.option(
    "--base",
    default=None,
    help="Base model id or folder for LoRA / transformer-only checkpoints (default: the one the run used).",
)
@click.option("--negative-prompt", default=None, help="Negative prompt for classifier-free guidance.")
@click.option("--frames", default=81, show_default=True, help="Number of frames (4k+1).")
@click.option("--height", default=480, show_default=True, help="Height in pixels (multiple of 16).")
@click.option("--width", default=832, show_default=True, help="Width in pixels (multiple of 16).")
@click.option("--steps", default=50, show_default=True, help="Denoising steps.")
@click.option("--guidance", default=5.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the initial noise.")
@click.option("--fps", default=16.0, show_default=True, help="Frame rate written to the mp4.")
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
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
) -> None:
    """Sample a video from a trained MedGen checkpoint (LoRA, full fine-tune or pipeline folder)."""
    from medvideocap.generate import generate

    try:
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
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(path))
