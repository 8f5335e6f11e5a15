"""medvideocap: tooling for the MedVideoCap-55K medical text-to-video dataset."""

from __future__ import annotations

from typing import Any

from medvideocap import aliases
from medvideocap.dataset.schema import SCHEMA_VERSION, Caption, Category, ClipRecord, Scores, SourceContext

__version__ = "0.2.0"

aliases.install()

__all__ = [
    "SCHEMA_VERSION",
    "Caption",
    "Category",
    "ClipRecord",
    "FrameSpec",
    "Scores",
    "SourceContext",
    "load",
    "load_latents",
]


def __getattr__(name: str) -> Any:
    # torch-heavy entry points are imported on first use so `import medvideocap` stays light.
    if name == "load":
        from medvideocap.loading.loader import load

        return load
    if name == "load_latents":
        from medvideocap.latents import load_latents

        return load_latents
    if name == "FrameSpec":
        from medvideocap.media.frames import FrameSpec

        return FrameSpec
    raise AttributeError(f"module 'medvideocap' has no attribute {name!r}")
