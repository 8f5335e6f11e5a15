"""Synthetic frames the metric tests score: one smooth, colourful scene that can pan by any amount (sub-pixel
included), so a test builds still, moving, fading or shuffled videos from one definition. Imported as
``from scenes import scene`` (``conftest.py`` puts this folder on the path), like ``videos.py``."""

from __future__ import annotations

import numpy as np


def scene(shift: float = 0.0, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colourful ``uint8 (h, w, 3)`` frame; ``shift`` pans it horizontally (sub-pixel allowed)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            128 + 100 * np.sin((x + shift) / 7),
            128 + 100 * np.cos(y / 5 + (x + shift) / 11),
            128 + 80 * np.sin((x + y + shift) / 9),
        ],
        -1,
    )
    return img.clip(0, 255).astype(np.uint8)
