"""`medvideocap --help` and every verb's --help work and explain every option."""

from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

from medvideocap.cli import VERBS, main


def test_top_level_help_lists_every_verb() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())  # undo click's line wrapping
    for verb in VERBS:
        assert f" {verb} {' '.join(VERBS[verb][1].split()[:4])}" in flat
    undocumented = [p.name for p in main.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not undocumented


@pytest.mark.parametrize("verb", list(VERBS))
def test_verb_help_explains_every_option(verb: str) -> None:
    module = VERBS[verb][0]
    result = CliRunner().invoke(main, [verb, "--help"])
    assert result.exit_code == 0, result.output
    command = importlib.import_module(f"medvideocap.cli.{module}").command
    assert isinstance(command, click.Command)
    assert command.help, f"{verb}: the command has no help text"
    undocumented = [
        p.name
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]
    assert not undocumented, f"{verb}: options without help text: {undocumented}"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[0] in result.output
