"""``medvideocap generate --checkpoint DIR --prompt TEXT --out FILE.mp4``: parse arguments, call
:func:`medvideocap.generate.generate`."""

from __future__ import annotations

from pathlib import Path

import click

from medvideocap.cli.options import generation_options
from medvideocap.plan import PLAN_HELP


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
    show_plan: bool,
) -> None:
    """Sample a video from a trained MedGen checkpoint (LoRA, full fine-tune or pipeline folder)."""
    from medvideocap.generate import GenerationSettings, generate
    from medvideocap.plan import peak_report, plan_generate, render_plan

    settings = GenerationSettings(
        frames=frames, height=height, width=width, steps=steps, guidance=guidance, base=base
    )
    if show_plan:
        click.echo(render_plan(plan_generate(settings, checkpoint=checkpoint, device=device, dtype=dtype)))
        return
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
            dtype=dtype,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(path))
    click.echo(
        peak_report(plan_generate(settings, checkpoint=checkpoint, device=device, dtype=dtype)), err=True
    )
