"""``medvideocap rate serve|export EVAL_DIR``: the browser rating app of :mod:`medvideocap.eval.rate`."""

from __future__ import annotations

from pathlib import Path

import click

EVAL_DIR = click.argument("eval_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))


@click.group(name="rate")
def command() -> None:
    """Clinicians rate blind pairs of an eval's videos in a browser; every choice is stored as it is made."""


@command.command(name="serve")
@EVAL_DIR
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port."
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the sheet's random order (first run only)."
)
def serve_command(eval_dir: Path, host: str, port: int, seed: int) -> None:
    """Serve EVAL_DIR's blind pairs (raters open the printed URL and give a name or token)."""
    from medvideocap.eval.rate import serve
    from medvideocap.eval.runner import EvalError

    try:
        serve(eval_dir, host=host, port=port, seed=seed, announce=lambda url: click.echo(url))
    except EvalError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # the port is taken, the folder is read-only
        raise click.ClickException(f"cannot serve {eval_dir} on {host}:{port}: {exc}") from exc


@command.command(name="export")
@EVAL_DIR
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV to write (default: "
    "EVAL_DIR/ratings/app-ratings.csv, beside key.json, where eval --import-ratings expects it).",
)
def export_command(eval_dir: Path, out: Path | None) -> None:
    """Write every stored choice as the rating sheet's CSV (one row per rater and pair)."""
    from medvideocap.eval.rate import RatingStore
    from medvideocap.eval.runner import EvalError

    try:
        click.echo(RatingStore(eval_dir).export(out))
    except EvalError as exc:
        raise click.ClickException(str(exc)) from exc
