"""Files that ship inside the wheel (recipes, schemas, card templates, prompts).

In the wheel they live under ``medvideocap/_data/``; in a source checkout they are the top-level
``builders/``, ``schemas/`` and ``cards/`` folders, so edits there are seen without a reinstall."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(kind: str) -> Path:
    """Folder of shipped ``kind`` files: 'builders', 'schemas' or 'cards'."""
    for candidate in (_PACKAGE.parent / kind, _PACKAGE / "_data" / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped folder {kind!r} not found next to {_PACKAGE} (broken install?)")


def resource(kind: str, name: str) -> Path:
    """The shipped file ``name`` of ``kind``; ``name`` is a bare file name, never a path out of the folder."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a file name: shipped {kind} files are named without a folder")
    path = resource_dir(kind) / name
    if not path.exists():
        known = ", ".join(sorted(p.name for p in resource_dir(kind).iterdir()))
        raise FileNotFoundError(f"no {kind} file {name!r}; shipped: {known}")
    return path
