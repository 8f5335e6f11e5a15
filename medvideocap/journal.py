"""Append-only JSONL journals: the one reader and appender of resume state kept one JSON line per event.

Every resumable job that records progress as JSON lines (the captioning run journal, the writer's
rejects, and the build's and latent encoder's logs once they switch) shares one policy for what a
kill can leave behind, so the same damage is handled the same way everywhere:

* **A torn last line is repaired.** A kill in the middle of an append leaves a last line without its
  newline. If it is a whole, acceptable entry only the newline was lost: it is kept and the newline
  added. Otherwise it is a fragment: it is cut off the file (with a warning) so the next append
  starts on a clean line, and the job redoes that one entry on resume.
* **A bad line in the middle is an error** (:class:`JournalError` naming the file and line number).
  A kill cannot produce one, so it means the file was edited or damaged; guessing would silently
  lose or duplicate work, and the message says which line to fix or remove.

Hand-written because no maintained library covers this: ``json``/``jsonlines`` readers either stop at
the first bad line or skip every bad line, and neither repairs the file for the next append.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvideocap.disk import writing_to

log = logging.getLogger(__name__)

Check = Callable[[Any], str | None]
"""Validates one parsed line: returns None when it is acceptable, else why not (shown in the error)."""


class JournalError(ValueError):
    """A journal line that is not the torn tail of a killed run; names the file and line."""


@dataclass
class JournalRead:
    """What :func:`read_journal` found: the accepted entries in file order, and whether a torn last line
    was cut off (``torn`` is 0 or 1)."""

    entries: list[Any] = field(default_factory=list)
    torn: int = 0


def _parse(path: Path, line: bytes, lineno: int, check: Check | None) -> Any:
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JournalError(f"{path}:{lineno}: not a JSON line ({exc}); fix or remove it") from exc
    problem = check(entry) if check is not None else None
    if problem:
        raise JournalError(f"{path}:{lineno}: {problem}")
    return entry


def read_journal(path: Path, *, check: Check | None = None, repair: bool = True) -> JournalRead:
    """Every entry of the journal at ``path`` (none when it does not exist), under the module's policy.

    Blank lines are skipped. With ``repair`` (the default) a torn last line is cut off the file, or a
    whole last entry that only lost its newline gets it back, so the next append starts on a clean
    line; ``repair=False`` reads the same entries and leaves the file as it is.
    """
    path = Path(path)
    result = JournalRead()
    if not path.exists():
        return result
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")
    for lineno, line in enumerate(complete, 1):
        if line.strip():
            result.entries.append(_parse(path, line, lineno, check))
    if not tail.strip():
        return result
    try:
        result.entries.append(_parse(path, tail, len(complete) + 1, check))
        fix = b"\n"
    except JournalError:
        result.torn = 1
        fix = b""
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(tail))
    if repair:
        with path.open("r+b") as fh:
            fh.truncate(len(data) - len(tail))
            fh.seek(0, os.SEEK_END)
            fh.write(tail + fix if fix else b"")
            fh.flush()
            os.fsync(fh.fileno())
    return result


def encode_entry(entry: Any) -> bytes:
    """One journal line: compact JSON (sorted keys, UTF-8, ``str`` for anything else) and a newline."""
    return json.dumps(entry, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8") + b"\n"


class JournalAppender:
    """Appends entries to a journal, one line each, opening the file on the first append.

    ``durable=True`` flushes and fsyncs every line before :meth:`append` returns (a clip counts as
    done only once its line is on disk); ``durable=False`` only flushes, for journals whose entries a
    rerun records again anyway (the writer's rejects), where an fsync per line would cost more than
    it saves. Read the file with :func:`read_journal` before appending, so a torn tail is repaired.

    An append that fails (a full disk) is cut back off the file before the error is raised, so a
    journal never holds half a line that its writer lived to see; the error is a
    :class:`~medvideocap.disk.ResourceError` naming the file when the disk is full or read-only.
    The file is unbuffered for that reason: every byte written is in the file, none in a buffer that
    a later flush would append after the cut.
    """

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self._fh: io.FileIO | None = None

    def append(self, entry: Any) -> None:
        line = encode_entry(entry)
        with writing_to(self.path, needed=len(line)):
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = io.FileIO(self.path, "ab")
            start = self._fh.seek(0, os.SEEK_END)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fh.fileno(), view) :]
                if self.durable:
                    os.fsync(self._fh.fileno())
            except BaseException:
                with suppress(OSError):  # the write's own error is the one to report
                    os.ftruncate(self._fh.fileno(), start)
                raise

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> JournalAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
