"""The run journal: one JSON line per captioned clip, appended, flushed and fsynced as it is written.

The journal is both the run's audit log (raw replies, rejection reasons, attempts) and its resume state:
a rerun skips every id already in it. A kill can leave a torn last line; it is cut off on reopening,
so the next append starts on a clean line and no clip is counted twice or lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


class JournalError(ValueError):
    """A journal line that is not the torn tail of a killed run; names the file and line."""


class Journal:
    """Append-only JSONL file of per-clip results keyed by ``id``; the last entry for an id wins."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn = 0
        self._fh: BinaryIO | None = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        *complete, tail = data.split(b"\n")
        for lineno, line in enumerate(complete, 1):
            if line.strip():
                self._add(line, lineno)
        if not tail.strip():
            return
        # No newline after the last line: the write a kill interrupted. Whole JSON is kept (only the
        # newline was lost); a fragment is cut off so the next append starts on a clean line.
        try:
            self._add(tail, len(complete) + 1)
            fix = b"\n"
        except JournalError:
            self.torn = 1
            fix = b""
            log.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(tail)
            )
        with self.path.open("r+b") as fh:
            fh.truncate(len(data) - len(tail))
            fh.seek(0, os.SEEK_END)
            fh.write(tail + fix if fix else b"")
            fh.flush()
            os.fsync(fh.fileno())

    def _add(self, line: bytes, lineno: int) -> None:
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JournalError(f"{self.path}:{lineno}: not a JSON line ({exc}); fix or remove it") from exc
        if not isinstance(entry, dict) or "id" not in entry:
            raise JournalError(f"{self.path}:{lineno}: journal entries are objects with an 'id'")
        self.entries[str(entry["id"])] = entry

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def ok_ids(self) -> set[str]:
        return {k for k, e in self.entries.items() if e.get("ok")}

    def settled_ids(self) -> set[str]:
        """Ids a rerun skips: captioned, or failed for good (``final``: the reply or the video was
        the problem, not the backend)."""
        return {k for k, e in self.entries.items() if e.get("ok") or e.get("final", True)}

    def failed_ids(self) -> set[str]:
        return {k for k, e in self.entries.items() if not e.get("ok")}

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry durably before returning: a clip is done only once its line is on disk."""
        if "id" not in entry:
            raise ValueError("journal entries need an 'id'")
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        fh = self._fh
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8") + b"\n"
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
        self.entries[str(entry["id"])] = entry

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
