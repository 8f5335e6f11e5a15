"""``medvideocap convert SRC --out DIR``: parse arguments, run :func:`medvideocap.dataset.convert.convert`, print."""

from __future__ import annotations

import click

from medvideocap.cli.options import storage_option
from medvideocap.locations import parse_storage_options


@click.command(name="convert")
@click.argument("src")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Hub-native dataset folder to write (resumed if it exists).",
)
@click.option(
    "--shard-size",
    default="1GB",
    show_default=True,
    help="Target shard size: bytes, or 500MB / 1GB / 512MiB.",
)
@click.option(
    "--fractions", default="0.98,0.01,0.01", show_default=True, help="train,validation,test fractions."
)
@click.option(
    "--salt",
    default=None,
    help="Split hash salt (default: medvideocap-v1, what the published conversion uses).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Threads probing clips; the output does not depend on it.",
)
@click.option("--revision", default=None, help="Hub revision when SRC is a repo id.")
@click.option(
    "--max-failures",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Unreadable inputs (archives, members, videos that do not decode) to accept before exiting 1.",
)
@click.option(
    "--max-clip-bytes",
    default=None,
    help="Largest zip member read as a clip, e.g. 64MiB (the default: 720x480 for 10 s at 50 Mbit/s is "
    "62.5 MB); larger members are dropped unread.",
)
@click.option(
    "--max-caption-chars",
    default=None,
    type=click.IntRange(min=1),
    help="Longest caption accepted, in characters (default 10000, about nine times the paper's mean "
    "detailed caption); a longer one drops the clip.",
)
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=1),
    help="Convert only the first N clips (in id order); a remote SRC is read for those clips only.",
)
@click.option(
    "--archives",
    default=None,
    help="Convert only the clips of these archives, comma-separated (videos_1.zip,videos_2.zip).",
)
@click.option(
    "--download",
    is_flag=True,
    help="Download a Hub repo's JSON and zips to the local cache first (resumable) instead of reading "
    "the archives where they lie by ranged reads.",
)
@storage_option
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
def command(
    src: str,
    out: str,
    shard_size: str,
    fractions: str,
    salt: str | None,
    workers: int,
    revision: str | None,
    max_failures: int,
    max_clip_bytes: str | None,
    max_caption_chars: int | None,
    limit: int | None,
    archives: str | None,
    download: bool,
    storage_options: tuple[str, ...],
    no_progress: bool,
) -> None:
    """Convert the upstream MedVideoCap-55K release SRC into the hub-native layout. SRC is a folder, a
    Hub repo id or a URL (hf://, s3://, gs://, az://, https://); one that is not on this machine is read
    where it lies: each archive's directory by a few ranged reads, each clip by one when its turn comes
    (bytes read and their rate are in the progress line and the summary). --download fetches a Hub
    repo's zips first instead.

    Clips are streamed out of the zips, probed, split by a stable hash of their source video and written
    to webdataset shards; a killed run resumes where its finished shards end, without reading their
    clips again. Dropped clips are listed with their reason at the end and in DIR/meta/rejects.parquet.
    Clips are kept exactly when `medvideocap validate SRC` finds no error with them.

    Exits 1 when no clip was converted, or when more inputs than --max-failures could not be read
    (what was converted is kept; a rerun resumes)."""
    from rich.console import Console

    from medvideocap.dataset.convert import convert, summary_table
    from medvideocap.dataset.splits import DEFAULT_SALT, parse_fractions
    from medvideocap.dataset.upstream import DEFAULT_MAX_CLIP_BYTES
    from medvideocap.dataset.validate import DEFAULT_MAX_CAPTION_CHARS
    from medvideocap.dataset.writer import parse_size
    from medvideocap.disk import ResourceError
    from medvideocap.lock import LockedError

    try:
        size = parse_size(shard_size)
        clip_bytes = parse_size(max_clip_bytes) if max_clip_bytes else DEFAULT_MAX_CLIP_BYTES
        parts = parse_fractions(fractions)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        options = parse_storage_options(storage_options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage-option") from None
    names = [a.strip() for a in archives.split(",") if a.strip()] if archives is not None else None
    if names is not None and not names:
        raise click.BadParameter("name at least one archive, e.g. videos_1.zip", param_hint="--archives")
    try:
        summary = convert(
            src,
            out,
            shard_bytes=size,
            fractions=parts,
            salt=salt or DEFAULT_SALT,
            workers=workers,
            revision=revision,
            progress=not no_progress,
            max_clip_bytes=clip_bytes,
            max_caption_chars=max_caption_chars or DEFAULT_MAX_CAPTION_CHARS,
            limit=limit,
            archives=names,
            download=download,
            storage_options=options,
        )
    except (ValueError, OSError) as exc:  # bad layout, unreachable source, resume with other options
        raise click.ClickException(str(exc)) from None
    except (LockedError, ResourceError) as exc:  # another convert into --out, or a full or read-only disk
        raise click.ClickException(str(exc)) from None
    Console().print(summary_table(summary))
    failure = summary.failure(max_failures)
    if failure is not None:
        raise click.ClickException(failure)
