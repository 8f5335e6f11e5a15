from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for everything the demo makes (raw videos, dataset, latents, tiny model, training run).",
)
def command(out: Path) -> None:
    """Run the whole pipeline on generated sample videos: build, inspect, load, encode latents with a
    tiny random Wan2.1 VAE, train a few LoRA steps. Rerun to resume."""
    from medvideocap.demo import DemoStepError, run_demo

    try:
        run_demo(out)
    except DemoStepError as exc:
        raise click.ClickException(str(exc)) from None
