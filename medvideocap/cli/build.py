"""``medvideocap build``: argument parsing only; the work is in :mod:`medvideocap.build`."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("build")
@click.option(
    "--src",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of raw videos (mp4/mov/mkv/webm/avi), optionally with metadata.jsonl or .csv.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Output hub-native dataset folder."
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
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Work dir with the resume journal and cut clips (default: OUT.build).",
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
def command(
    src: Path,
    out: Path,
    recipe: str,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    work: Path | None,
    keep_work: bool,
    follow_symlinks: bool,
    dry_run: bool,
    name: str | None,
) -> None:
    """Curate raw videos into a captioned hub-native dataset by a recipe (resumable: rerun to continue)."""
    from medvideocap.build import BuildError, MissingDependencyError, RecipeError, build
    from medvideocap.disk import ResourceError
    from medvideocap.lock import LockedError

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
            keep_work=keep_work,
            follow_symlinks=follow_symlinks,
            name=name,
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
    from medvideocap.dataset.layout import INFO_PATH, REJECTS_PATH

    # exit 1 when the dataset holds no clip (a rerun of a finished build counts what is already there)
    if not json.loads((out / INFO_PATH).read_text()).get("total"):
        raise click.ClickException(
            f"{out}: the build kept no clip; each input's reason is in {out / REJECTS_PATH}: check --src "
            "and the recipe's limits (--dry-run shows the recipe)"
        )
