"""The layout of a build's work directory (default ``OUT.build`` next to the output), in one place.

    state.json                 recipe fingerprint + source folder (a different recipe is not resumed)
    journal/{key}.json         one file per finished input: its outcomes and file stat (written atomically)
    clips/{key}/{name}.mp4     the cut clips, until they are written into the dataset
    inputs/{key}/{name}        an input fetched from object storage, while it is processed

The builder keeps the state and the journal, and the ``split`` and ``border`` stages cut clips under
``clips/``: each names its files through these helpers (as the dataset's own files are named by
:mod:`medvideocap.dataset.layout`), so the work directory's layout changes in one place. A leaf module:
stages import it without importing the builder.
"""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "state.json"
JOURNAL_DIR = "journal"
CLIPS_DIR = "clips"
INPUTS_DIR = "inputs"


def state_path(work: Path) -> Path:
    """``work/state.json``: which recipe (fingerprint) and source folder the work dir belongs to."""
    return Path(work) / STATE_FILE


def journal_dir(work: Path) -> Path:
    """``work/journal``: one JSON file per finished input."""
    return Path(work) / JOURNAL_DIR


def journal_path(work: Path, key: str) -> Path:
    """``work/journal/{key}.json``: the outcomes of the input whose sample key is ``key``."""
    return journal_dir(work) / f"{key}.json"


def clips_dir(work: Path) -> Path:
    """``work/clips``: every cut clip not yet written into the dataset (removed after a build)."""
    return Path(work) / CLIPS_DIR


def input_clips_dir(work: Path, key: str) -> Path:
    """``work/clips/{key}``: the clips cut from the input whose sample key is ``key``."""
    return clips_dir(work) / key


def clip_path(work: Path, key: str, name: str) -> Path:
    """``work/clips/{key}/{name}.mp4``: a clip cut from the input whose sample key is ``key``."""
    return input_clips_dir(work, key) / f"{name}.mp4"


def fetched_path(work: Path, key: str, name: str) -> Path:
    """``work/inputs/{key}/{name}``: the local copy of an input read from object storage, made by the
    process that handles the input and deleted when it is done."""
    return Path(work) / INPUTS_DIR / key / name
