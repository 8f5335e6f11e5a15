"""The drop log of a latent cache: clips a rank could not encode, and with the shards what a resume skips.

It lives under ``meta/`` as JSON lines, not parquet, because every ``*.parquet`` under a cache is read
as a shard by FastVideo and Ray Data (see :mod:`medvideocap.latents.format`). It is a resume journal
(:mod:`medvideocap.journal`): a recorded id counts as done, so its policy is the journal's: a line torn
by a kill is repaired by the next run of that rank (which encodes that clip again), a bad line in the
middle is an error naming ``file:line``.

In object storage nothing can be appended to, and a kill cannot tear an object (it is uploaded whole or
not at all): there each drop rewrites the rank's whole log through a temporary key
(:func:`medvideocap.atomic.atomic_write_to`). Drops are rare, so that costs nothing a run would notice,
and the clip counts as dropped exactly when the new log is published.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from medvideocap.atomic import atomic_write_bytes, atomic_write_to
from medvideocap.journal import JournalAppender, JournalError, encode_entry, read_journal
from medvideocap.latents.format import (
    META_DIR,
    CacheRoot,
    LatentCacheError,
    ShardPath,
    cache_location,
    fresh,
    open_shard,
    reaching,
    reading_shard,
    shard_files,
)
from medvideocap.locations import Location

log = logging.getLogger(__name__)

DROPPED_NAME = "dropped-{split}-rank-{rank}.jsonl"
#: Where medvideocap 0.1 kept the drop log (inside the split folder, where FastVideo and Ray Data read it
#: as a shard); still read for resume, and moved to :func:`dropped_path` by the next run of that rank.
LEGACY_DROPPED_NAME = "rank-{rank}-dropped.parquet"


def dropped_path(root: CacheRoot, split: str, rank: int) -> ShardPath:
    """The drop log of one (split, rank): outside the split folder and not parquet (see module doc); a
    path in a local cache, a URL in object storage."""
    location = cache_location(root)
    path = location.path(f"{META_DIR}/{DROPPED_NAME.format(split=split, rank=rank)}")
    return Path(path) if location.local is not None else path


def _check_row(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return "expected an object with a string 'id'; fix the line, or delete it to re-encode that clip"
    return None


def read_dropped(
    path: ShardPath, *, repair: bool = False, location: Location | None = None
) -> list[dict[str, Any]]:
    """Rows of a drop log (``.jsonl``, or a legacy ``rank-R-dropped.parquet``); none when it is absent.

    A torn last line (a kill during an append) is left out; ``repair=True`` also cuts it off the file,
    which only the rank about to append to it does (readers may look at a cache they cannot write).
    A bad line anywhere else raises :class:`LatentCacheError` naming ``file:line``. ``location`` is the
    cache's, for a log in object storage (``path`` is then its URL)."""
    if location is not None and location.local is None:
        return _read_remote(location, str(path))
    path = Path(path)
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    try:
        entries: list[dict[str, Any]] = read_journal(path, check=_check_row, repair=repair).entries
    except JournalError as exc:
        raise LatentCacheError(str(exc)) from exc
    return entries


def _read_remote(location: Location, url: str) -> list[dict[str, Any]]:
    """A drop log in object storage: read whole, then parsed by the one journal reader (from a local
    copy; its errors name the URL). A legacy parquet log is read as it is."""
    with reaching(location, "read the latent cache"):
        if not location.exists(url):
            return []
        data = location.read_bytes(url)
    if url.endswith(".parquet"):
        with reading_shard(url), location.open(url) as fh:
            rows: list[dict[str, Any]] = pq.read_table(fh).to_pylist()
        return rows
    with tempfile.TemporaryDirectory(prefix="medvideocap-") as staging:
        local = Path(staging) / url.rpartition("/")[2]
        local.write_bytes(data)
        try:
            return read_journal(local, check=_check_row, repair=False).entries
        except JournalError as exc:
            raise LatentCacheError(str(exc).replace(str(local), url)) from exc


def dropped_logs(root: CacheRoot, split: str) -> list[ShardPath]:
    """Every rank's drop log of a split, including legacy ones an older version left in the split folder."""
    location = cache_location(root)
    pattern = DROPPED_NAME.format(split=split, rank="*")
    legacy = LEGACY_DROPPED_NAME.format(rank="*")
    local = location.local
    if local is not None:
        return [*sorted((local / META_DIR).glob(pattern)), *sorted((local / split).glob(legacy))]
    with reaching(fresh(location), "list the latent cache"):
        return [*location.glob(f"{META_DIR}/{pattern}"), *location.glob(f"{split}/{legacy}")]


def finished_ids(root: CacheRoot, split: str) -> set[str]:
    """Ids already in finished shards (any rank) or recorded as dropped: what a resume skips."""
    location = cache_location(root)
    done: set[str] = set()
    for path in shard_files(location, split):
        with reading_shard(path), reaching(location, "read the latent cache"):
            done.update(pq.read_table(open_shard(location, path), columns=["id"]).column("id").to_pylist())
    for path in dropped_logs(location, split):
        done.update(row["id"] for row in read_dropped(path, location=location))
    return done


class DroppedLog:
    """The writer of one rank's drop log: :meth:`add` appends a line and fsyncs it before returning, so a
    clip counts as dropped (and is skipped on resume) only once that is on disk.

    Opening it repairs a torn last line. A legacy ``rank-R-dropped.parquet`` in the split folder is moved
    here on open (the new log is written whole, atomically, before the legacy file goes), so resuming an
    old cache also makes it readable by FastVideo and Ray Data. Drops are rare, so each append opens the
    file anew rather than holding a handle for a day-long run."""

    def __init__(self, root: CacheRoot, split: str, rank: int):
        self.location = fresh(cache_location(root, write=True))
        self.path = dropped_path(self.location, split, rank)
        self.rows: list[dict[str, Any]] = read_dropped(self.path, repair=True, location=self.location)
        local = self.location.local
        if local is None:
            return  # caches in object storage were never written by 0.1: no legacy log to move
        self.path = Path(self.path)
        legacy = local / split / LEGACY_DROPPED_NAME.format(rank=rank)
        if legacy.exists():
            known = {r["id"] for r in self.rows}
            self.rows += [r for r in read_dropped(legacy) if r["id"] not in known]
            atomic_write_bytes(self.path, b"".join(encode_entry(r) for r in self.rows))
            legacy.unlink()
            log.info("moved %s to %s (parquet readers took it for a shard)", legacy, self.path)

    def add(self, clip_id: str, stage: str, reason: str) -> None:
        """Record that ``clip_id`` failed at ``stage`` (``load``, ...) and why."""
        log.warning("dropping %s at %s: %s", clip_id, stage, reason)
        row = {"id": clip_id, "stage": stage, "reason": reason}
        if self.location.local is None:
            data = b"".join(encode_entry(r) for r in [*self.rows, row])
            with reaching(self.location, "write the latent cache"):
                atomic_write_to(self.location, str(self.path), data)
        else:
            with JournalAppender(Path(self.path), durable=True) as journal:
                journal.append(row)
        self.rows.append(row)
