"""Upstream MedVideoCap-55K release (zips + JSON) -> hub-native layout.

Each clip is streamed out of its zip (nothing is extracted), probed so that the media facts in the
record are the file's own (and a file that disagrees with its JSON, or does not decode, is dropped
with the reason), given its split from its group key, and handed to :class:`DatasetWriter` in id
order. Everything dropped, by the upstream reader or here, lands in ``meta/rejects.parquet``.

Resuming: the writer keeps finished shards, so a rerun after a kill skips the clips they hold and
writes the rest in the same order, which gives the same bytes as a run that was never stopped.
``workers`` only parallelises probing; results are consumed in input order, so the output does not
depend on it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvideocap.probe import ProbeError, probe
from medvideocap.schema import ClipRecord
from medvideocap.splits import DEFAULT_FRACTIONS, DEFAULT_SALT, assign_split, check_fractions
from medvideocap.validate import DURATION_TOLERANCE_REL, DURATION_TOLERANCE_S, WARNING_KINDS
from medvideocap.writer import DEFAULT_SHARD_BYTES, DatasetWriter, WriterError

log = logging.getLogger(__name__)

FPS_TOLERANCE = 0.5
# A clip whose file is DURATION_TOLERANCE_S (or DURATION_TOLERANCE_REL) shorter or longer than its
# JSON says is dropped; the tolerances are validate's, so `validate` and `convert` agree on durations.
# Upstream problems that keep the clip (validate's warnings): the odd value is kept in record.extra or
# read from the video.
NOT_DROPPED = WARNING_KINDS


@dataclass
class Prepared:
    """A clip ready to write, or the reason it is not."""

    clip_id: str
    where: str
    record: ClipRecord | None = None
    video: bytes | None = None
    reason: str | None = None


@dataclass
class ConvertSummary:
    out: Path
    counts: dict[str, int]
    written: int
    skipped: int
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject_kinds(self) -> list[tuple[str, str, int, str]]:
        """(stage, kind, count, first input) per kind of drop, most frequent first."""
        counter: Counter[tuple[str, str]] = Counter()
        first: dict[tuple[str, str], str] = {}
        for row in self.rejects:
            key = (row["stage"], reject_kind(row["reason"]))
            counter[key] += 1
            first.setdefault(key, row["input"])
        return [
            (s, k, n, first[(s, k)]) for (s, k), n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        ]


def reject_kind(reason: str) -> str:
    """Reasons start with a short kind token ("duration_mismatch: ..."); that is what summaries group by."""
    head, sep, _ = reason.partition(":")
    return head.strip() if sep and " " not in head.strip() else "other"


def verify_media(record: ClipRecord, video: bytes, *, where: str) -> ClipRecord:
    """The record with media facts from the file itself; raises ValueError("kind: ...") on disagreement."""
    try:
        info = probe(video, name=where, count_frames=True)
    except ProbeError as exc:
        raise ValueError(f"unreadable_video: {exc}") from None
    if (info.width, info.height) != (record.width, record.height):
        raise ValueError(
            f"resolution_mismatch: {where}: JSON says {record.width}x{record.height}, "
            f"file is {info.width}x{info.height}"
        )
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_REL * record.duration)
    if abs(info.duration - record.duration) > tolerance:
        hint = " (truncated?)" if info.duration < record.duration else ""
        raise ValueError(
            f"duration_mismatch: {where}: JSON says {record.duration:g} s, file decodes {info.duration:g} s{hint}"
        )
    if abs(info.fps - record.fps) > FPS_TOLERANCE:
        raise ValueError(f"fps_mismatch: {where}: JSON says {record.fps:g} fps, file has {info.fps:g} fps")
    updated = record.model_copy()
    updated.duration = info.duration
    updated.fps = info.fps
    updated.num_frames = info.num_frames
    updated.codec = info.codec
    if updated.bit_rate is None:
        updated.bit_rate = info.bit_rate
    return updated


def _prepare(clip: Any) -> Prepared:
    record: ClipRecord = clip.record
    where = clip.where
    try:
        video = clip.read_bytes()
    except (
        OSError,
        ValueError,
        EOFError,
    ) as exc:  # zipfile raises BadZipFile (an OSError subclass) or zlib errors
        return Prepared(record.id, where, reason=f"unreadable_member: {where}: {exc}")
    try:
        checked = verify_media(record, video, where=where)
    except ValueError as exc:
        return Prepared(record.id, where, reason=str(exc))
    return Prepared(record.id, where, record=checked, video=video)


def _ordered(fn: Callable[[Any], Prepared], items: Sequence[Any], workers: int) -> Iterator[Prepared]:
    """``map(fn, items)`` in input order, with at most ``4 * workers`` items in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window = 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert-probe") as pool:
        pending: list[Future[Prepared]] = []
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(
    src: str | Path,
    out: str | Path,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
    workers: int = 1,
    revision: str | None = None,
    progress: bool = True,
) -> ConvertSummary:
    """Convert the upstream release at ``src`` (folder or Hub repo id) into ``out``; resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medvideocap.hubnative import is_hub_native
    from medvideocap.upstream import UpstreamRelease

    fractions = check_fractions(fractions)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if is_hub_native(Path(src)):
        raise ValueError(
            f"{src} is already a hub-native dataset; convert reads the upstream zips + JSON release"
        )
    release = UpstreamRelease.open(src, revision=revision)
    clips = list(release.clips())  # sorted by id; release.problems is complete from here on
    is_local = Path(src).expanduser().exists()
    recipe = {
        "converter": "medvideocap convert",
        "upstream": {
            "source": Path(src).name if is_local else str(src),
            "revision": revision,
            "metadata_file": release.metadata_path.name,
            "metadata_sha256": _file_sha256(release.metadata_path),
            "zips": [z.name for z in release.zips],
        },
        "split": {"key": "group", "fractions": list(fractions), "salt": salt, "hash": "sha256"},
        "verify": {
            "probe": "pyav, every packet demuxed",
            "duration_tolerance_s": DURATION_TOLERANCE_S,
            "duration_tolerance_rel": DURATION_TOLERANCE_REL,
            "fps_tolerance": FPS_TOLERANCE,
        },
    }

    def split_fn(record: ClipRecord) -> str:
        return assign_split(record.group, fractions=fractions, salt=salt)

    written = 0
    with DatasetWriter(out, shard_bytes=shard_bytes, split_fn=split_fn, recipe=recipe) as writer:
        for problem in release.problems:
            if problem.kind not in NOT_DROPPED:
                writer.reject(problem.where, "upstream", f"{problem.kind}: {problem.message}")
        todo = [c for c in clips if not writer.has(c.record.id)]
        skipped = len(clips) - len(todo)
        if skipped:
            log.info("%s: %d clips already written, %d to go", out, skipped, len(todo))
        columns = (
            TextColumn("[bold]convert"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[clip]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("convert", total=len(clips), completed=skipped, clip="")
            for prepared in _ordered(_prepare, todo, workers):
                if prepared.reason is not None:
                    writer.reject(prepared.where, "verify", prepared.reason)
                else:
                    assert prepared.record is not None and prepared.video is not None
                    try:
                        writer.write(prepared.record, prepared.video)
                        written += 1
                    except (WriterError, ValueError) as exc:
                        writer.reject(prepared.where, "write", f"invalid_record: {exc}")
                bar.update(task, advance=1, clip=prepared.clip_id)
        counts = writer.counts
        rejects = writer.rejects
    return ConvertSummary(out=Path(out), counts=counts, written=written, skipped=skipped, rejects=rejects)


def summary_table(summary: ConvertSummary) -> Any:
    """A rich table of what was written and what was dropped, by kind."""
    from rich.table import Table

    table = Table(title=f"medvideocap convert -> {summary.out}")
    table.add_column("what")
    table.add_column("kind")
    table.add_column("clips", justify="right")
    table.add_column("example")
    for split, n in summary.counts.items():
        if n:
            table.add_row("written", split, str(n), "")
    for stage, kind, n, example in summary.reject_kinds():
        table.add_row(f"dropped ({stage})", kind, str(n), example)
    return table
