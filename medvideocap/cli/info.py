"""``medvideocap info PATH_OR_REPO``: parse arguments, call :func:`medvideocap.dataset.info.info`, print."""

from __future__ import annotations

import json

import click

from medvideocap.cli.options import storage_option
from medvideocap.locations import parse_storage_options


@click.command(name="info")
@click.argument("path_or_repo")
@click.option(
    "--revision", default=None, help="Hub revision (branch, tag or commit) when PATH_OR_REPO is a repo id."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@storage_option
def command(path_or_repo: str, revision: str | None, as_json: bool, storage_options: tuple[str, ...]) -> None:
    """Say what a dataset is: layout, schema version, counts per split and category, sizes.

    PATH_OR_REPO is a folder, a Hub repo id, or a URL (s3://, gs://, az://, hf://, https://).
    Reads metadata and file listings only; for a Hub repo id no video is downloaded."""
    from medvideocap.dataset.info import info

    try:
        summary = info(
            path_or_repo, revision=revision, storage_options=parse_storage_options(storage_options)
        )
    except (ValueError, OSError) as exc:  # bad input: one clear line, not a traceback
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{summary['source']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("layout", "root", "schema_version", "clips", "hours", "records", "video_members"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    table.add_row("splits", ", ".join(f"{k}: {v}" for k, v in summary["splits"].items()))
    table.add_row("categories", "\n".join(f"{k}: {v}" for k, v in summary["categories"].items()))
    table.add_row("files", json.dumps(summary.get("files", {})))
    table.add_row("bytes", ", ".join(f"{k}: {v / 1e6:.2f} MB" for k, v in summary.get("bytes", {}).items()))
    for note in summary["notes"]:
        table.add_row("note", f"[yellow]{note}[/yellow]")
    console.print(table)
