"""Which distributed rank this process is."""

from __future__ import annotations

import os


def env_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise ``RANK``/``WORLD_SIZE`` as set by torchrun and accelerate."""
    r = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    w = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} / world size {w} are inconsistent")
    return r, w
