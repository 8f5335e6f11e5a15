"""``medvideocap stats PATH_OR_REPO``: parse arguments, call :func:`medvideocap.dataset.stats.stats`, print."""

from __future__ import annotations

import json
from pathlib import Path

import click

from medvideocap.cli.options import storage_option
from medvideocap.locations import parse_storage_options


@click.command(name="stats")
@click.argument("path_or_repo")
@click.option(
    "--revision", default=None, help="Hub revision (branch, tag or commit) when PATH_OR_REPO is a repo id."
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write PNG charts (categories, durations, resolutions, fps, scores, caption lengths) here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of tables.")
@storage_option
def command(
    path_or_repo: str,
    revision: str | None,
    plots_dir: Path | None,
    as_json: bool,
    storage_options: tuple[str, ...],
) -> None:
    """Distributions over the metadata: categories, durations, resolutions, fps, scores, caption lengths.

    PATH_OR_REPO is a folder, a Hub repo id, or a URL (s3://, gs://, az://, hf://, https://)."""
    from medvideocap.dataset.stats import stats

    try:
        options = parse_storage_options(storage_options)
        result = stats(path_or_repo, revision=revision, plots=plots_dir, storage_options=options)
    except (ValueError, OSError) as exc:  # bad input: one clear line, not a traceback
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{result['source']}[/bold] ({result['layout']}): {result['clips']} clips, {result['hours']} h"
    )
    counts = Table("category", "clips", "share", title="categories")
    for name, c in result["categories"].items():
        counts.add_row(name, str(c["count"]), f"{c['share']:.1%}")
    console.print(counts)
    dist = Table(
        "quantity", "count", "mean", "min", "p5", "p25", "p50", "p75", "p95", "max", title="distributions"
    )
    rows = {"duration (s)": result["duration"], "fps": result["fps"]}
    rows.update({f"score {k}": v for k, v in result["scores"].items()})
    rows.update({f"caption words {k}": v for k, v in result["caption_words"].items()})
    for label, q in rows.items():
        keys = ("count", "mean", "min", "p5", "p25", "p50", "p75", "p95", "max")
        dist.add_row(label, *(str(q.get(k, "")) for k in keys))
    console.print(dist)
    console.print("resolutions: " + ", ".join(f"{k}: {v}" for k, v in result["resolution"].items()))
    console.print("splits: " + ", ".join(f"{k}: {v}" for k, v in result["splits"].items()))
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    for path in result.get("plots", []):
        console.print(f"wrote {path}")
