"""The 0.1 import paths, kept working for one minor version after the modules moved into subpackages.

0.2 grouped the thirty flat modules by the layer they belong to (``dataset/``, ``media/``, ``loading/``,
``latents/``, ``train/``; see ARCHITECTURE.md). Code written against 0.1 (``from medvideocap.probe import
probe``, as the 0.1 README showed) keeps running: importing an old path returns the *same module object*
as the new one, so monkeypatching either name patches both, and warns once with the new path to use.
The table below is the only record of the move; 0.3 drops it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    **{
        f"medvideocap.{name}": f"medvideocap.dataset.{name}"
        for name in [
            "schema",
            "layout",
            "upstream",
            "hubnative",
            "writer",
            "splits",
            "card",
            "validate",
            "stats",
            "plots",
            "push",
            "convert",
            "info",
        ]
    },
    "medvideocap.probe": "medvideocap.media.probe",
    "medvideocap.decode": "medvideocap.media.decode",
    "medvideocap.frames": "medvideocap.media.frames",
    "medvideocap.build.media": "medvideocap.media.ffmpeg",
    "medvideocap.loader": "medvideocap.loading.loader",
    "medvideocap.streaming": "medvideocap.loading.streaming",
    "medvideocap.sampler": "medvideocap.loading.sampler",
    "medvideocap.encode_latents": "medvideocap.latents.encode",
    "medvideocap.recaption": "medvideocap.caption.recaption",
    "medvideocap.caption.frames": "medvideocap.caption.sampling",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target} in medvideocap 0.2; the old path goes away in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the target module was executed when it was imported."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old 0.1 module path to the module it moved to."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import medvideocap`` calls this)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
