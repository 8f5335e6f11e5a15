"""One writer per output folder: an advisory lock that a verb holds on its output (and work) folder
for its whole run.

Two runs writing one folder at once interleave shards, journals and metadata into something neither
would have written, and each resumes from state the other is changing under it. So every verb that
writes a folder (``build``, ``convert``, ``recaption``, ``encode-latents``, ``train``) holds an exclusive
``flock`` on a lock file inside it (:func:`output_lock`), and a second run on the same folder stops
before doing any work with one line naming the holder: its pid, host, verb and start time, which the
holder writes into the file.

Why ``flock`` on a file kept open, not a pid file checked by hand: the kernel drops the lock when the
holder's process ends, however it ends (SIGKILL and the OOM killer included), so a killed run never
leaves its folder locked, and no pid is ever guessed at. A lock file that still names a holder when
the lock is free is what a killed run leaves behind: the next run takes it over with a warning and
writes its own details over the old ones. The file is removed when the run ends (and the folder too,
when the lock created it and nothing else was written).

Where ranks of one job write one folder side by side (``encode-latents`` under torchrun), each takes
its own lock file (:func:`lock_name` with the split and rank), so they do not block each other while
two jobs on the same split and rank still do.

Hand-written: ``filelock`` (the maintained choice) keeps no holder details and deletes nothing a killed
run left, and the message naming the holder is the point here. On NFS, Linux turns ``flock`` into a
byte-range lock that the server arbitrates, so runs on two machines sharing an output exclude each
other too; where a file system has no locks at all (``ENOLCK``: NFS without a lock manager, some FUSE
mounts), the verb warns and runs unlocked rather than not at all.

Object storage (``s3://``, ``gs://``, ``az://``) has nothing to ``flock``, and a lock *object* would
outlive a SIGKILLed holder (no kernel to drop it), so the next run, the resume, would find its output
locked by a dead process and have to guess from timestamps. So an output given as an object-store URL is
locked by a local lock file named after the URL (:func:`url_lock_path`, in :func:`lock_dir`), with the
same holder details and the same kernel guarantees: two runs on this machine exclude each other and a
killed run never leaves it locked. Runs on *different* machines writing the same URL are not excluded;
the ranks of one multi-node job each lock their own (split, rank) name anyway, and keeping two separate
jobs off one prefix is the scheduler's job.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medvideocap.disk import writing_to
from medvideocap.locations import Location, resolve_output

log = logging.getLogger(__name__)

LOCK_FILE = ".medvideocap.lock"
"""The lock file of a folder written by one process (``lock_name()``)."""
LOCK_GLOB = ".medvideocap*.lock"
"""Matches every :func:`lock_name` (uploads and clean-ups skip these files)."""
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
"""flock's answers on a file system that has no locks (NFS without a lock manager, some FUSE mounts)."""
_DETAILS_WAIT_S = 1.0  # a holder writes its details right after taking the lock: wait that long for them


class LockedError(RuntimeError):
    """Another run holds the folder's lock; the message names it (pid, host, verb, since when)."""


def lock_name(*parts: str) -> str:
    """The lock file's name: ``.medvideocap.lock``, or ``.medvideocap-train-rank0.lock`` for the parts
    ``("train", "rank0")`` (one lock per split and rank where ranks share a folder)."""
    return "-".join((".medvideocap", *parts)) + ".lock" if parts else LOCK_FILE


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as written into the lock file."""

    pid: int
    host: str
    verb: str
    started: str

    @classmethod
    def me(cls, verb: str) -> Holder:
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), verb, started)

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The holder a lock file names, or None when it names none (empty, or not ours)."""
        try:
            found = json.loads(data)
            return cls(int(found["pid"]), str(found["host"]), str(found["verb"]), str(found["started"]))
        except (ValueError, TypeError, KeyError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return None

    def encode(self) -> bytes:
        details = {"pid": self.pid, "host": self.host, "verb": self.verb, "started": self.started}
        return (json.dumps({**details, "argv": sys.argv}) + "\n").encode()

    def describe(self) -> str:
        return f"`medvideocap {self.verb}` (pid {self.pid} on {self.host}, since {self.started})"

    def running(self) -> bool | None:
        """Whether the holder's process still runs: None when it ran on another host (unknowable here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            return True
        return True


def _read(fd: int) -> bytes:
    return os.pread(fd, 65536, 0)


def _locked_message(folder: Path | str, path: Path, fd: int) -> str:
    """Why ``folder`` cannot be taken: who holds ``path`` (the lock file open on ``fd``)."""
    deadline = time.monotonic() + _DETAILS_WAIT_S
    holder = Holder.parse(_read(fd))
    while holder is None and time.monotonic() < deadline:  # taken a moment ago: details on their way
        time.sleep(0.05)
        holder = Holder.parse(_read(fd))
    fix = "wait for it to finish or stop it, or write to another folder"
    if holder is None:
        return f"{folder} is in use by another run, which holds {path}; {fix}"
    if holder.running() is False:
        # The recorded holder is gone, yet the lock is held: a process it started inherited the lock.
        return (
            f"{folder} is locked by a process left over from {holder.describe()}, which has ended; "
            f"stop what still holds {path} (`fuser {path}` names it) and run again"
        )
    return f"{folder} is in use by {holder.describe()}, which holds {path}; {fix}"


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` is still the file open on ``fd`` (a holder that just finished removes it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(folder: Path | str, path: Path) -> int | None:
    """Open and lock ``path``: its descriptor, or :class:`LockedError` naming the holder; None (with a
    warning) where the file system cannot lock at all, which should not make the verb unusable there."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                if exc.errno not in _NO_LOCKS:
                    raise
                with suppress(OSError):
                    path.unlink()
                log.warning(
                    "%s: this file system cannot lock files (%s): a second run on this folder at the "
                    "same time would not be stopped",
                    folder,
                    os.strerror(exc.errno),
                )
                return None
            message = _locked_message(folder, path, fd)
            os.close(fd)
            raise LockedError(message) from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # we locked a file its holder removed on the way out: lock the one at the path now


def _take_over(path: Path, fd: int, me: Holder) -> None:
    """Write ``me`` into the lock file, warning first when it names an earlier holder that never let go."""
    before = Holder.parse(_read(fd))
    if before is not None and (before.pid, before.host) != (me.pid, me.host):
        running = before.running()
        state = (
            "no longer running" if running is False else "another host" if running is None else "pid reused"
        )
        log.warning(
            "%s: taking over the lock left by %s (%s): that run ended without releasing it",
            path,
            before.describe(),
            state,
        )
    data = me.encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def lock_dir() -> Path:
    """Where the lock files of object-store outputs live: ``$MEDVIDEOCAP_LOCK_DIR``, else
    ``$XDG_CACHE_HOME/medvideocap/locks`` (``~/.cache/medvideocap/locks``)."""
    if os.environ.get("MEDVIDEOCAP_LOCK_DIR"):
        return Path(os.environ["MEDVIDEOCAP_LOCK_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(cache) / "medvideocap" / "locks"


def url_lock_path(url: str, name: str = LOCK_FILE) -> Path:
    """The local lock file of ``name`` in the object-store folder ``url``: one per (URL, name), in
    :func:`lock_dir`, named by a hash of both (a URL holds characters a file name may not)."""
    digest = hashlib.sha256(f"{url.rstrip('/')}\n{name}".encode()).hexdigest()[:32]
    return lock_dir() / f"{digest}{name if name.endswith('.lock') else '.lock'}"


@contextmanager
def output_lock(folder: str | Path | Location, *, verb: str, name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold the lock file ``folder/name`` for the block (creating ``folder`` if needed); yields its path.

    ``folder`` may be an object-store URL (``s3://bucket/out``) or a :class:`~medvideocap.locations.Location`:
    then the lock file is the local :func:`url_lock_path` (see the module doc), the messages name the URL,
    and nothing is written to the store.

    Raises :class:`LockedError` naming the holder when another run holds it, and a
    :class:`~medvideocap.disk.ResourceError` when the folder is read-only or its disk full (the
    lock is the first thing a verb writes, so such a folder is refused before any work)."""
    location = resolve_output(folder)
    local = location.local
    shown: Path | str = local if local is not None else location.url
    if local is not None:
        path, lock_folder = local / name, local
    else:
        path = url_lock_path(location.url, name)
        lock_folder = path.parent
    created = local is not None and not local.exists()
    with writing_to(path):
        lock_folder.mkdir(parents=True, exist_ok=True)
        fd: int | None = None
        try:
            fd = _acquire(shown, path)
            if fd is not None:
                _take_over(path, fd, Holder.me(verb))
        except BaseException:
            _release(lock_folder, path, fd, created)
            raise
    try:
        yield path
    finally:
        _release(lock_folder, path, fd, created)


def _release(folder: Path, path: Path, fd: int | None, created: bool) -> None:
    """Remove the lock file (while still holding it, so no one can take the old file), then unlock;
    remove ``folder`` too when the lock ``created`` it and nothing else was written there."""
    if fd is not None:
        with suppress(OSError):
            if _same_file(fd, path):
                path.unlink()
        os.close(fd)
    if created:
        with suppress(OSError):  # not empty: the run wrote something, which stays
            folder.rmdir()


__all__ = [
    "LOCK_FILE",
    "LOCK_GLOB",
    "Holder",
    "LockedError",
    "lock_dir",
    "lock_name",
    "output_lock",
    "url_lock_path",
]
