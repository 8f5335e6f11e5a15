"""``medvideocap validate PATH_OR_REPO``: parse arguments, run :func:`medvideocap.dataset.validate.validate`, print."""

from __future__ import annotations

import json
import sys
from functools import partial

import click

from medvideocap.cli.options import storage_option
from medvideocap.locations import parse_storage_options


@click.command(name="validate")
@click.argument("path_or_repo")
@click.option(
    "--revision", default=None, help="Hub revision (branch, tag or commit) when PATH_OR_REPO is a repo id."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a machine-readable JSON report instead of a table."
)
@click.option(
    "--no-videos", is_flag=True, help="Check the metadata only: do not download, demux or compare the videos."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Threads demuxing videos in parallel.",
)
@click.option("--strict", is_flag=True, help="Exit non-zero on warnings too (e.g. unknown upstream keys).")
@click.option(
    "--max-caption-chars",
    default=None,
    type=click.IntRange(min=1),
    help="Longest caption accepted, in characters (default 10000, as convert); longer is caption_too_long.",
)
@click.option(
    "--max-clip-bytes",
    default=None,
    help="Largest upstream zip member accepted as a clip, e.g. 64MiB (the default, as convert).",
)
@click.option(
    "--sample",
    default=None,
    type=click.IntRange(min=1),
    help="Demux only N videos, spread evenly over the clips (every record is still checked); a release "
    "read where it lies is then read for those clips only.",
)
@storage_option
def command(
    path_or_repo: str,
    revision: str | None,
    as_json: bool,
    no_videos: bool,
    workers: int,
    strict: bool,
    max_caption_chars: int | None,
    max_clip_bytes: str | None,
    sample: int | None,
    storage_options: tuple[str, ...],
) -> None:
    """Check every record against the schema and every video against its record (duration, fps, size),
    and every caption against its length bound; `convert` keeps a clip exactly when this finds no error.
    PATH_OR_REPO is a folder, a Hub repo id, or a URL (s3://, gs://, az://, hf://, https://).

    Exits 1 when anything is invalid (with --strict, also on warnings)."""
    from rich.console import Console
    from rich.progress import Progress as RichProgress

    from medvideocap.dataset.upstream import DEFAULT_MAX_CLIP_BYTES, REMOTE_READS
    from medvideocap.dataset.validate import DEFAULT_MAX_CAPTION_CHARS, validate
    from medvideocap.dataset.writer import parse_size

    try:
        clip_bytes = parse_size(max_clip_bytes) if max_clip_bytes else DEFAULT_MAX_CLIP_BYTES
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-clip-bytes") from None
    try:
        options = parse_storage_options(storage_options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage-option") from None
    run = partial(
        validate,
        path_or_repo,
        revision=revision,
        videos=not no_videos,
        workers=workers,
        max_caption_chars=max_caption_chars or DEFAULT_MAX_CAPTION_CHARS,
        max_clip_bytes=clip_bytes,
        storage_options=options,
        sample=sample,
    )
    if as_json:
        report = run()
        click.echo(json.dumps(report.to_json_dict(), indent=2))
    else:
        console = Console(stderr=False)
        with RichProgress(console=console, transient=True) as bar:
            task = bar.add_task("probing videos", total=None)
            mark = REMOTE_READS.mark()

            def progress(done: int, total: int) -> None:
                read = REMOTE_READS.since(mark)
                label = f"probing videos, {read.describe()}" if read.bytes else "probing videos"
                bar.update(task, completed=done, total=total, description=label)

            report = run(progress=progress)
        _print_report(console, report)
    failed = not report.ok or (strict and report.warnings)
    sys.exit(1 if failed else 0)


def _print_report(console: object, report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from medvideocap.dataset.upstream import Transfer
    from medvideocap.dataset.validate import ValidationReport

    assert isinstance(console, Console) and isinstance(report, ValidationReport)
    console.print(
        f"[bold]{report.source}[/bold]: layout {report.layout or '?'}, {report.records} records, "
        f"{report.videos_checked} videos decoded and compared"
        + (f" (a sample of {report.sampled})" if report.sampled is not None else "")
    )
    if report.bytes_read:
        read = Transfer(report.bytes_read, report.read_requests, report.read_seconds)
        console.print(f"read from the source: {read.describe()}")
    if report.problems:
        table = Table("severity", "kind", "problem (file/row and reason)")
        for p in report.problems:
            style = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{style}]{p.severity}[/{style}]", p.kind, p.message)
        console.print(table)
    verdict = "[green]valid[/green]" if report.ok else "[red]INVALID[/red]"
    console.print(f"{verdict}: {len(report.errors)} errors, {len(report.warnings)} warnings")
