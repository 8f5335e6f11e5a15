"""When the disk refuses a write: a full disk (``ENOSPC``), a used-up quota (``EDQUOT``), a read-only
file system (``EROFS``) or a folder this user may not write (``EACCES``) becomes one
:class:`ResourceError` whose message names the path, the bytes needed where the writer knows them,
and what to do next.

Why one owner: these are not bad data (no clip is to blame, so no reader may skip past one the way it
skips a :class:`~medvideocap.errors.DataError`) and not bugs (no traceback helps), and they surface at
every layer that writes: an atomic write, a shard, a journal line, an ffmpeg cut, a lock file. Each
writer wraps its write in :func:`writing_to` with the path it knows (``OSError.filename`` is empty when
``write()`` itself fails, so only the writer can name the file); the verbs wrap their whole run in it
with the output folder, so an errno raised anywhere else still comes out as one line; the CLI prints
the message. Nothing here deletes anything: each writer removes its own temporary file (see
:mod:`medvideocap.atomic`), and the resumable verbs pick up where they stopped once there is room.

``ResourceError`` is an ``OSError`` so that code which already treats an ``OSError`` as "say it in one
line" keeps doing so; code that skips bad inputs on any exception must let it through (the build's
stage runner does).

A leaf module (no torch, no other subpackage): everything that writes can import it.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""The errnos that mean the machine, not the data or the code, stopped a write: wherever they are
raised, the run stops (:func:`stops_the_run`)."""
REFUSED_ERRNOS = RESOURCE_ERRNOS | {errno.EACCES}
"""What :func:`writing_to` turns into a :class:`ResourceError`: the machine's errnos, and a permission
denied, which around a write means a folder this user may not write (a ``chmod 0555`` output). A
permission denied elsewhere (an unreadable input video) stays an ``OSError`` that a reader may skip."""

_RERUN = "run the same command again: it resumes where it stopped"
_PROBLEMS = {
    errno.ENOSPC: ("no space left on the device", f"free some space there, then {_RERUN}"),
    errno.EDQUOT: ("the disk quota is used up", f"free some space or raise the quota, then {_RERUN}"),
    errno.EROFS: (
        "the file system is read-only",
        "write to a folder on a writable disk (or remount this one read-write), then run again",
    ),
    errno.EACCES: (
        "permission denied",
        "give this user write access to it or write to another folder, then run again",
    ),
}


def _rebuild(message: str, code: int | None) -> ResourceError:
    error = ResourceError(message)
    error.errno = code  # type: ignore[assignment]  # OSError.errno is None or an int
    return error


class ResourceError(OSError):
    """A write refused for lack of space or quota, on a read-only file system or for lack of
    permission; the message names the path and what to do. ``errno`` is the original errno (it survives pickling, so a process
    pool's worker can raise it)."""

    @classmethod
    def at(cls, code: int, path: str | Path, *, needed: int | None = None) -> ResourceError:
        """The error for ``code`` (one of :data:`REFUSED_ERRNOS`) met writing ``path``."""
        return _rebuild(describe(code, path, needed=needed), code)

    def __reduce__(self) -> tuple[Any, tuple[str, int | None]]:
        return _rebuild, (str(self), self.errno)


def format_bytes(n: int) -> str:
    """``n`` for a person: ``812 bytes``, ``3.4 MB``, ``1.2 GB`` (decimal units, as ``--shard-size``)."""
    if n < 1000:
        return f"{n} bytes"
    value = n / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing folder), or None."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def describe(code: int, path: str | Path, *, needed: int | None = None) -> str:
    """The one-line message for ``code`` (one of :data:`REFUSED_ERRNOS`) at ``path``."""
    path = Path(path)
    problem, fix = _PROBLEMS[code]
    sizes = []
    if needed is not None and code in (errno.ENOSPC, errno.EDQUOT):
        sizes.append(f"{format_bytes(needed)} needed")
    free = _free_bytes(path) if code == errno.ENOSPC else None
    if free is not None:
        sizes.append(f"{format_bytes(free)} free")
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return f"{path}: {problem}{detail}; {fix}"


def resource_error(
    exc: BaseException, path: str | Path, *, needed: int | None = None
) -> ResourceError | None:
    """``exc`` as a :class:`ResourceError` naming ``path`` (or the file the OS named, when it named one)
    if it is an ``OSError`` with one of :data:`REFUSED_ERRNOS`; ``exc`` itself if it already is one;
    None for anything else."""
    if isinstance(exc, ResourceError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in REFUSED_ERRNOS:
        return None
    named = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes | os.PathLike) else None
    return ResourceError.at(exc.errno, named or path, needed=needed)


def stops_the_run(exc: BaseException) -> bool:
    """True for an error that no skip-and-continue policy may swallow: a :class:`ResourceError`, or an
    ``OSError`` with one of :data:`RESOURCE_ERRNOS` raised where no writer wrapped it. A stage or a
    caption worker that turns exceptions into a per-clip failure asks this first: recorded as the
    clip's failure, a full disk would never be retried."""
    return isinstance(exc, ResourceError) or (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS)


def errno_in_text(text: str) -> int | None:
    """The resource errno whose ``strerror`` appears in ``text`` (an external tool's error output, as
    ffmpeg prints ``Error writing trailer of X: No space left on device``), or None."""
    for code in sorted(RESOURCE_ERRNOS):
        if os.strerror(code) in text:
            return code
    return None


@contextmanager
def writing_to(path: str | Path, *, needed: int | None = None) -> Iterator[None]:
    """Turn a resource ``OSError`` raised inside the block into a :class:`ResourceError` naming ``path``
    (and ``needed`` bytes); every other exception passes unchanged."""
    try:
        yield
    except OSError as exc:
        error = resource_error(exc, path, needed=needed)
        if error is None or error is exc:
            raise
        raise error from exc


__all__ = [
    "REFUSED_ERRNOS",
    "RESOURCE_ERRNOS",
    "ResourceError",
    "describe",
    "errno_in_text",
    "format_bytes",
    "resource_error",
    "stops_the_run",
    "writing_to",
]
