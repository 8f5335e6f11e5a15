"""medvideocap: tooling for the MedVideoCap-55K medical text-to-video dataset."""

from __future__ import annotations

from typing import Any

from medvideocap.schema import SCHEMA_VERSION, Caption, Category, ClipRecord, Scores, SourceContext

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "Caption",
    "Category",
    "ClipRecord",
    "Scores",
    "SourceContext",
    "load",
    "load_latents",
]


def __getattr__(name: str) -> Any:
    # torch-heavy entry points are imported on first use so `import medvideocap` stays light.
    if name == "load":
        from medvideocap.loader import load

        return load
    if name == "load_latents":
        from medvideocap.latents import load_latents

        return load_latents
    raise AttributeError(f"module 'medvideocap' has no attribute {name!r}")
