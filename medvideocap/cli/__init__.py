"""The ``medvideocap`` command. Each verb lives in ``medvideocap/cli/<verb>.py`` and is imported only
when it runs, so ``medvideocap --help`` stays fast and never imports torch."""

from __future__ import annotations

import importlib
import importlib.util
import logging

import click
from rich.logging import RichHandler

# verb -> (module under medvideocap.cli, one-line help shown by `medvideocap --help`)
VERBS: dict[str, tuple[str, str]] = {
    "info": ("info", "Say what a dataset is: layout, schema version, counts per split and category."),
    "validate": ("validate", "Check every record against the schema and every video against its record."),
    "stats": ("stats", "Distributions of categories, durations, resolutions and scores (with --plots)."),
    "convert": ("convert", "Convert the upstream MedVideoCap-55K release into the hub-native layout."),
    "push": ("push", "Upload a hub-native dataset folder to the Hugging Face Hub."),
    "build": ("build", "Curate raw videos into a captioned hub-native dataset by a recipe."),
    "encode-latents": ("encode_latents", "Pre-encode clips to Wan2.1 VAE latents + text embeddings."),
    "recaption": ("recaption", "Re-generate captions with a multimodal LLM (local or served)."),
    "train": ("train", "Fine-tune Wan2.1-T2V (MedGen reference) on cached latents."),
    "generate": ("generate", "Sample videos from a trained checkpoint."),
    "demo": ("demo", "Run the whole pipeline on generated sample videos (what `make demo` runs)."),
    "eval": ("eval", "Score checkpoints (VBench dimensions, CLIP score), compare runs, collect ratings."),
    "rate": (
        "rate",
        "Clinicians rate blind video pairs in a browser; export what eval --import-ratings reads.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [v for v, (mod, _) in VERBS.items() if importlib.util.find_spec(f"medvideocap.cli.{mod}")]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in VERBS:
            return None
        module = importlib.import_module(f"medvideocap.cli.{VERBS[cmd_name][0]}")
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(v, VERBS[v][1]) for v in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medvideocap")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Tooling for the MedVideoCap-55K medical text-to-video dataset: build, convert, load, re-caption,
    pre-encode and train."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])
