"""``medvideocap train --config NAME_OR_PATH [--set key=value ...] [key=value ...]``: parse arguments, call
:func:`medvideocap.train.train`.

The one training command line: ``python -m medvideocap.train`` (what ``accelerate launch -m`` and
``torchrun -m`` run on every rank) runs this same click command, so both spellings take the same options.
"""

from __future__ import annotations

import json

import click

from medvideocap.plan import PLAN_HELP


@click.command(name="train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    required=True,
    help="A shipped config name (medgen-1.3b-lora, medgen-1.3b-full) or a YAML file path.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config field (repeatable); the value parses as YAML, e.g. --set max_steps=2000.",
)
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("--plan", "show_plan", is_flag=True, help=PLAN_HELP)
@click.option(
    "--gpus",
    "--num-processes",
    "gpus",
    type=click.IntRange(min=1),
    default=None,
    help="With --plan: plan per GPU for a run on this many (CUDA), for DDP and for FSDP, against an 80 GB H100.",
)
@click.argument("more_overrides", nargs=-1, metavar="[KEY=VALUE]...")
def command(
    config: str,
    overrides: tuple[str, ...],
    print_config: bool,
    show_plan: bool,
    gpus: int | None,
    more_overrides: tuple[str, ...],
) -> None:
    """Fine-tune Wan2.1-T2V (MedGen reference recipe) on an encode-latents cache, LoRA or full.

    Overrides go after --set or bare (KEY=VALUE arguments, applied after the --set ones).
    Rerunning the same command resumes from the newest checkpoint in output_dir (resume: auto)."""
    import yaml

    from medvideocap.disk import ResourceError, writing_to
    from medvideocap.dist import env_rank_world
    from medvideocap.journal import JournalError
    from medvideocap.latents import FingerprintMismatchError, LatentCacheError
    from medvideocap.lock import LockedError, lock_name, output_lock
    from medvideocap.plan import fits_line, peak_report, plan_train, render_plan, step_report
    from medvideocap.train import NonFiniteTrainingError, NoTrainingDataError, load_config, train

    try:
        cfg = load_config(config, (*overrides, *more_overrides))
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if print_config:
        click.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        return
    if gpus is not None and not show_plan:
        raise click.UsageError("--gpus plans a run: add --plan (a run's world size is accelerate launch's)")
    if show_plan and gpus is None:
        click.echo(render_plan(plan_train(cfg)))
        return
    if show_plan:
        strategies = ["ddp", "fsdp"] if cfg.mode == "full" else ["ddp"]
        for strategy in strategies:
            plan = plan_train(cfg, device="cuda", world_size=gpus, strategy=strategy)
            click.echo(f"== {gpus} GPU{'s' if gpus > 1 else ''}, {strategy} ==")
            click.echo(render_plan(plan))
            click.echo(fits_line(plan) + "\n")
        if cfg.mode == "lora":
            click.echo("fsdp: not planned for mode=lora (distributed.strategy=fsdp shards full fine-tunes)")
        return
    if not cfg.latents and not cfg.source:
        raise click.UsageError(
            "no training data: --set latents=CACHE_DIR (from encode-latents) or source=DATASET"
        )
    # One job per output_dir: each rank locks its own file there before the accelerator or a model
    # starts, so the ranks of one job do not block each other and a second job's ranks each stop
    # naming the first (medvideocap.lock).
    rank, _ = env_rank_world(None, None)
    try:
        with (
            output_lock(cfg.output_dir, verb="train", name=lock_name(f"rank{rank}")),
            writing_to(cfg.output_dir),
        ):
            result = train(cfg)
    except (
        FingerprintMismatchError,
        JournalError,
        LatentCacheError,
        NoTrainingDataError,
        NonFiniteTrainingError,
    ) as exc:
        raise click.ClickException(str(exc)) from exc
    except (LockedError, ResourceError) as exc:  # another job on output_dir, or a full or read-only disk
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"step": result.step, "export": str(result.export) if result.export else None}))
    plan = plan_train(cfg)
    click.echo(peak_report(plan), err=True)
    steps = step_report(plan)
    if steps is not None:
        click.echo(steps, err=True)
