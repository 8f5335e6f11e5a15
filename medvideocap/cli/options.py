"""Options shared by several verbs, declared once so their names, defaults and help cannot drift; the
sampling defaults are :class:`~medvideocap.generate.GenerationSettings`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from medvideocap.generate import GenerationSettings
from medvideocap.locations import STORAGE_OPTION_HELP
from medvideocap.models import DTYPE_NAMES

_GENERATION: list[Callable[[Any], Any]] = [
    click.option(
        "--base",
        default=None,
        help="Base model id or folder for LoRA / transformer-only checkpoints (default: the one the run used).",
    ),
    click.option("--negative-prompt", default=None, help="Negative prompt for classifier-free guidance."),
    click.option(
        "--frames", default=GenerationSettings.frames, show_default=True, help="Frames per video (4k+1)."
    ),
    click.option(
        "--height",
        default=GenerationSettings.height,
        show_default=True,
        help="Height in pixels (multiple of 16).",
    ),
    click.option(
        "--width",
        default=GenerationSettings.width,
        show_default=True,
        help="Width in pixels (multiple of 16).",
    ),
    click.option("--steps", default=GenerationSettings.steps, show_default=True, help="Denoising steps."),
    click.option(
        "--guidance",
        default=GenerationSettings.guidance,
        show_default=True,
        help="Classifier-free guidance scale.",
    ),
    click.option(
        "--fps", default=GenerationSettings.fps, show_default=True, help="Frame rate written to the mp4s."
    ),
    click.option("--device", default=None, help="torch device (default: cuda when available, else cpu)."),
    click.option(
        "--dtype",
        type=click.Choice(DTYPE_NAMES),
        default=None,
        help="dtype every model of the pipeline loads in (default: bfloat16 on cuda, float32 elsewhere).",
    ),
]


def generation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The sampling options of ``generate`` and ``eval`` (WanPipeline's arguments, the paper's 480x832)."""
    for option in reversed(_GENERATION):
        command = option(command)
    return command


#: ``--storage-option KEY=VALUE`` (repeatable): options of the fsspec filesystem behind an ``s3://``,
#: ``gs://``, ``az://`` or ``https://`` location (see :mod:`medvideocap.locations`), declared once here.
storage_option = click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help=STORAGE_OPTION_HELP,
)
