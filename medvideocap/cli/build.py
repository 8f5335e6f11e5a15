"""``medvideocap build``: argument parsing only; the work is in :mod:`medvideocap.build`."""

from __future__ import annotations

import json

import click

from medvideocap.cli.options import storage_option
from medvideocap.locations import parse_storage_options


@click.command("build")
@click.option(
    "--src",
    required=True,
    help="Folder of raw videos (mp4/mov/mkv/webm/avi), optionally with metadata.jsonl or .csv; or an "
    "object-store prefix (s3://bucket/raw, gs://, az://).",
)
@click.option(
    "--out",
    required=True,
    help="Output hub-native dataset folder, or an object-store prefix (s3://bucket/ds).",
)
@click.option(
    "--recipe",
    default="default",
    show_default=True,
    help="A shipped recipe name (default: offline curation with the dataset's limits; medvideocap-55k: "
    "the paper's, hub models; demo: tiny generated videos) or a recipe file path (./my.yaml).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process or a process pool; ray: Ray Data (local or --ray-address).",
)
@click.option(
    "--workers", type=int, default=None, help="Local worker processes (default: CPU count; 1 = in-process)."
)
@click.option(
    "--ray-address", default=None, help="Address of an existing Ray cluster (default: start a local one)."
)
@click.option(
    "--work",
    default=None,
    help="Local work dir with the lock, resume journal and cut clips (default: OUT.build; for an "
    "object-store --out, ~/.cache/medvideocap/build/NAME-HASH).",
)
@click.option(
    "--name",
    default=None,
    help="Title of the dataset card (default: named after the recipe); the card also names the source folder.",
)
@click.option("--keep-work", is_flag=True, help="Keep the cut clips in the work dir after writing.")
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Read symlinks under --src (default: refuse each one, recorded as a 'source' reject).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (inputs, stages, what each stage loads and whether it is available offline, "
    "estimated work) and exit.",
)
@click.option(
    "--estimate",
    "estimate_seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --dry-run: run the recipe on the first SECONDS of the longest input (model stages "
    "included, nothing written) and add the predicted wall time for every input over --workers; "
    "0: no estimate.",
)
@storage_option
def command(
    src: str,
    out: str,
    recipe: str,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    work: str | None,
    keep_work: bool,
    follow_symlinks: bool,
    dry_run: bool,
    estimate_seconds: float,
    name: str | None,
    storage_options: tuple[str, ...],
) -> None:
    """Curate raw videos into a captioned hub-native dataset by a recipe (resumable: rerun to continue)."""
    from medvideocap.build import BuildError, MissingDependencyError, RecipeError, build
    from medvideocap.disk import ResourceError
    from medvideocap.lock import LockedError

    try:
        options = parse_storage_options(storage_options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage-option") from None
    try:
        result = build(
            src,
            out,
            recipe=recipe,
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            work=work,
            dry_run=dry_run,
            estimate_seconds=estimate_seconds,
            keep_work=keep_work,
            follow_symlinks=follow_symlinks,
            name=name,
            storage_options=options,
        )
    except (BuildError, MissingDependencyError, RecipeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except (LockedError, ResourceError) as exc:  # another build on --out, or a full or read-only disk
        raise click.ClickException(str(exc)) from exc
    if dry_run:
        from medvideocap.build.recipe import load_recipe
        from medvideocap.build.stages import offline_report

        assert isinstance(result, dict)  # a dry run returns its plan
        chosen = load_recipe(recipe)
        plan = {
            **result,
            "recipe": chosen.name,
            "recipe_from": chosen.origin,
            "loads": offline_report(chosen),
        }
        click.echo(json.dumps(plan, indent=2))
        return
    from medvideocap.build import BuildResult
    from medvideocap.dataset.layout import REJECTS_PATH
    from medvideocap.locations import resolve_output

    # exit 1 when the dataset holds no clip (a rerun of a finished build counts what is already there)
    assert isinstance(result, BuildResult)
    if not result.kept:
        rejects = resolve_output(result.out).path(REJECTS_PATH)
        raise click.ClickException(
            f"{result.out}: the build kept no clip; each input's reason is in {rejects}: check --src "
            "and the recipe's limits (--dry-run shows the recipe)"
        )
