"""``medvideocap push DIR REPO_ID``: parse arguments, run :func:`medvideocap.dataset.push.push`, print."""

from __future__ import annotations

import click


@click.command(name="push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("repo_id")
@click.option(
    "--private", is_flag=True, help="Create the dataset repo as private (only when it does not exist yet)."
)
@click.option("--revision", default=None, help="Branch to push to (created if missing); default main.")
@click.option(
    "--token",
    default=None,
    envvar="HF_TOKEN",
    show_envvar=True,
    help="Hub token; default: HF_TOKEN or the `hf auth login` cache. Never printed.",
)
def command(folder: str, repo_id: str, private: bool, revision: str | None, token: str | None) -> None:
    """Upload the hub-native dataset FOLDER to the Hugging Face dataset repo REPO_ID and tag its schema
    version (v<SCHEMA_VERSION>). Re-running after a failure resumes the upload."""
    from medvideocap.dataset.push import PushError, push

    try:
        result = push(folder, repo_id, private=private, revision=revision, token=token)
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"pushed {len(result.files)} files to https://huggingface.co/datasets/{result.repo_id} "
        f"({result.revision}), tagged {result.tag}"
    )
