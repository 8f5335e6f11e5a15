"""The run journal: one JSON line per captioned clip, appended, flushed and fsynced as it is written.

The journal is both the run's audit log (raw replies, rejection reasons, attempts) and its resume state:
a rerun skips every id already in it. A kill can leave a torn last line; it is cut off on reopening,
so the next append starts on a clean line and no clip is counted twice or lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvideocap.journal import JournalAppender, JournalError, read_journal

__all__ = ["Journal", "JournalError"]


def _check(entry: Any) -> str | None:
    if not isinstance(entry, dict) or "id" not in entry:
        return "journal entries are objects with an 'id'"
    return None


class Journal:
    """Append-only JSONL file of per-clip results keyed by ``id``; the last entry for an id wins.

    Reading, torn-tail repair and appending follow :mod:`medvideocap.journal`'s policy."""

    def __init__(self, path: Path):
        self.path = Path(path)
        found = read_journal(self.path, check=_check)
        self.entries: dict[str, dict[str, Any]] = {str(e["id"]): e for e in found.entries}
        self.torn = found.torn
        self._out = JournalAppender(self.path, durable=True)

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
        self._out.append(entry)
        self.entries[str(entry["id"])] = entry

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries.values())

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
