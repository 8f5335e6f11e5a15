"""The files that ship inside the wheel (``medvideocap/resources.py``), read from the source checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvideocap.resources import resource, resource_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", ["builders", "schemas", "cards"])
def test_a_source_checkout_reads_the_top_level_folders(kind: str) -> None:
    assert resource_dir(kind) == ROOT / kind


def test_a_shipped_file_is_found_and_an_unknown_one_lists_what_ships() -> None:
    assert resource("builders", "default.yaml") == ROOT / "builders" / "default.yaml"
    with pytest.raises(FileNotFoundError, match="no builders file 'nope.yaml'; shipped: default.yaml"):
        resource("builders", "nope.yaml")


@pytest.mark.parametrize("name", ["../pyproject.toml", "sub/x.yaml", "..", "/etc/passwd"])
def test_a_name_never_leads_out_of_the_shipped_folder(name: str) -> None:
    with pytest.raises(ValueError, match="not a file name"):
        resource("builders", name)


def test_an_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="shipped folder 'nothing' not found"):
        resource_dir("nothing")
