"""Per-process caches of open handles (file descriptors, decoders), safe across fork and spawn.

Kept free of torch and of any decoder library, so the metadata-only commands (``convert``,
``validate``, ``info``) that read tar members at known offsets do not pay for importing them."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medvideocap.errors import DataError


class ShortReadError(DataError, OSError):
    """Fewer bytes at an offset than asked for: the file was truncated after its index was written."""


_INHERITED: list[Any] = []
"""Cache entries a forked child inherited from its parent; referenced here so they are never freed."""


class PerProcessCache:
    """A small LRU that forgets everything when used from a new process.

    Entries made by a parent are dropped unclosed in a forked child (the parent still owns them); on
    pickling (spawn workers) the cache travels empty.
    """

    def __init__(self, maxsize: int = 4, on_evict: Callable[[Any], None] | None = None) -> None:
        self.maxsize = maxsize
        self._on_evict = on_evict
        self._pid = os.getpid()
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, factory: Callable[[], Any]) -> Any:
        if self.maxsize <= 0:
            return factory()
        if self._pid != os.getpid():
            # Keep the parent's objects alive, untouched: destroying them here would run their
            # destructors in the child (decord and PyAV then wait on threads or locks that only
            # exist in the parent, and the worker hangs).
            _INHERITED.append(self._items)
            self._pid = os.getpid()
            self._items = OrderedDict()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = factory()
        self._items[key] = value
        while len(self._items) > self.maxsize:
            _, old = self._items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old)
        return value

    def clear(self) -> None:
        if self._pid != os.getpid():
            _INHERITED.append(self._items)
        elif self._on_evict is not None:
            for value in self._items.values():
                self._on_evict(value)
        self._items = OrderedDict()

    def __len__(self) -> int:
        return len(self._items) if self._pid == os.getpid() else 0

    def __getstate__(self) -> dict[str, Any]:
        return {"maxsize": self.maxsize, "_on_evict": self._on_evict, "_pid": -1, "_items": OrderedDict()}


def _close_fd(fd: int) -> None:
    os.close(fd)


class FileHandles(PerProcessCache):
    """Read-only file descriptors per worker, for ``os.pread`` of tar members at known offsets."""

    def __init__(self, maxsize: int = 64) -> None:
        super().__init__(maxsize, on_evict=_close_fd)

    def pread(self, path: str | Path, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; a short read (truncated shard) is an error naming the file."""
        fd = self.get(str(path), lambda: os.open(path, os.O_RDONLY))
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise ShortReadError(
                f"{path}: wanted {size} bytes at offset {offset}, got {len(data)} (truncated shard?)"
            )
        return data
