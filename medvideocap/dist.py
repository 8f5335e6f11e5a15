"""Where this process runs: its distributed rank, and the one way any job joins or starts Ray.

Ray is optional (``medvideocap[ray]``) and heavy to import, so it is imported only inside
:func:`ray_session`; a missing install is one clear error naming the extra, whichever verb asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The environment variable Ray itself reads; honoured here so every verb agrees with ``ray`` on it.
RAY_ADDRESS_ENV = "RAY_ADDRESS"


def env_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise ``RANK``/``WORLD_SIZE`` as set by torchrun and accelerate."""
    r = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    w = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} / world size {w} are inconsistent")
    return r, w


def ray_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address`` (``--ray-address``) when given, else ``$RAY_ADDRESS``, else None
    (start a local Ray for this job). Blank values count as unset, so ``--ray-address ""`` or an empty
    variable in a job script means "local", not an address Ray cannot parse."""
    for value in (address, os.environ.get(RAY_ADDRESS_ENV)):
        if value is not None and value.strip():
            return value.strip()
    return None


def import_ray(what: str = "--engine ray") -> Any:
    """The ``ray`` module with Ray Data loaded, or a RuntimeError saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - every engine here runs Ray Data
    except ImportError as exc:
        raise RuntimeError(f"{what} needs Ray Data: pip install 'medvideocap[ray]' ({exc})") from exc
    return ray


@contextmanager
def ray_session(address: str | None = None, *, what: str = "--engine ray") -> Iterator[Any]:
    """Ray, initialised for the block: the cluster at :func:`ray_address` (``address`` or ``$RAY_ADDRESS``),
    or a local one. A Ray the caller (or a test) already initialised is used as it is and left running;
    one started here is shut down when the block ends, so a finished job leaves no raylets behind.

    The dashboard is off and worker logs stay in the workers: jobs here print one JSON summary on
    stdout and a progress bar on stderr, which Ray's log forwarding would interleave."""
    ray = import_ray(what)
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=ray_address(address),
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
