"""Upstream MedVideoCap-55K release (zips + JSON) -> hub-native layout.

Each clip is streamed out of its zip (nothing is extracted; a large member goes through a temporary
file, never whole into memory), probed so that the media facts in the record are the file's own, given
its split from its group key, and handed to :class:`DatasetWriter` in id order. The checks are
:mod:`medvideocap.dataset.validate`'s own (:func:`~medvideocap.dataset.validate.probe_and_compare`,
:func:`~medvideocap.dataset.validate.caption_problems`, the upstream reader's problems), so a clip is kept
exactly when ``medvideocap validate`` finds no error with it, and dropped under the same problem
names. Everything dropped lands in ``meta/rejects.parquet``.

Exit status (:meth:`ConvertSummary.failure`): a run that wrote no clip, or could not read some of its
inputs (an unreadable or damaged archive, a member that does not read or decode) has failed, even
though everything it could convert is written and kept; ``max_failures`` accepts that many
unreadable inputs.

Resuming: the writer keeps finished shards, so a rerun after a kill skips the clips they hold and
writes the rest in the same order, which gives the same bytes as a run that was never stopped.
``workers`` only parallelises probing; results are consumed in input order, so the output does not
depend on it.

A release that is not on this machine (a Hub repo id, ``hf://``, ``s3://``, ``https://``...) is read
where it lies (:class:`~medvideocap.dataset.upstream.UpstreamRelease`): each archive's central
directory by a few ranged reads, then each clip by one ranged read when its turn comes, so a
``limit``/``archives`` subset reads only its own clips, memory holds at most the clips in flight
(``4 * workers``, each within ``max_clip_bytes``), and a rerun after a kill reads no clip that a
finished shard holds (only the archives' directories again). The bytes read and their rate are in
the progress line and in :attr:`ConvertSummary.transfer`. ``download=True`` snapshots a Hub repo to
the local cache first, as before.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from medvideocap.dataset.layout import REJECTS_PATH
from medvideocap.dataset.schema import ClipRecord
from medvideocap.dataset.splits import DEFAULT_FRACTIONS, DEFAULT_SALT, assign_split, check_fractions
from medvideocap.dataset.upstream import (
    DEFAULT_MAX_CLIP_BYTES,
    REMOTE_READS,
    MemberReadError,
    MemberTooLargeError,
    Transfer,
)
from medvideocap.dataset.validate import (
    DEFAULT_MAX_CAPTION_CHARS,
    DURATION_TOLERANCE_REL,
    DURATION_TOLERANCE_S,
    FPS_TOLERANCE_REL,
    WARNING_KINDS,
    caption_problems,
    probe_and_compare,
)
from medvideocap.dataset.writer import DEFAULT_SHARD_BYTES, DatasetWriter, WriterError
from medvideocap.disk import writing_to
from medvideocap.lock import output_lock
from medvideocap.paths import check_apart

log = logging.getLogger(__name__)

# Upstream problems that keep the clip (validate's warnings): the odd value is kept in record.extra,
# read from the video, or the id suffixed.
NOT_DROPPED = WARNING_KINDS
READ_FAILURE_KINDS = frozenset({"unreadable_member", "damaged_archive", "undecodable_video"})
"""Drops that mean an input could not be read (not that it was read and found wanting): these make
the run fail unless accepted with ``max_failures``."""


@dataclass
class Prepared:
    """A clip ready to write, or the reason it is not."""

    clip_id: str
    where: str
    record: ClipRecord | None = None
    video: bytes | Path | None = None  # a Path is a temporary file, deleted once written
    reason: str | None = None

    def discard(self) -> None:
        if isinstance(self.video, Path):
            self.video.unlink(missing_ok=True)


@dataclass
class ConvertSummary:
    out: Path | str
    """The output folder, or its URL when it is in object storage."""
    counts: dict[str, int]
    written: int
    skipped: int
    rejects: list[dict[str, Any]] = field(default_factory=list)
    transfer: Transfer | None = None
    """Bytes read from a remote release by this run, and their rate; None for a local folder."""

    @property
    def total(self) -> int:
        """Clips in the output, written by this run or an earlier one."""
        return sum(self.counts.values())

    @property
    def read_failures(self) -> list[dict[str, Any]]:
        """Drops of inputs that could not be read (:data:`READ_FAILURE_KINDS`)."""
        return [r for r in self.rejects if reject_kind(r["reason"]) in READ_FAILURE_KINDS]

    def failure(self, max_failures: int = 0) -> str | None:
        """Why this run must exit non-zero, or None: it left no clip in the output, or more than
        ``max_failures`` of its inputs could not be read. What was converted is kept either way."""
        if self.total == 0:
            return (
                f"{self.out}: no clip was converted ({len(self.rejects)} inputs dropped; reasons above and "
                f"in {self.out}/{REJECTS_PATH})"
            )
        failures = self.read_failures
        if len(failures) > max_failures:
            first = failures[0]
            return (
                f"{len(failures)} inputs could not be read (first: {first['reason']}); the {self.total} "
                f"clips converted are kept in {self.out}. Re-download or repair those inputs and rerun "
                f"(it resumes), or accept up to N unreadable inputs with --max-failures N"
            )
        return None

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


def verify_media(
    record: ClipRecord,
    video: bytes | Path,
    *,
    where: str,
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
) -> ClipRecord:
    """The record with media facts from the file itself. Raises ``ValueError("kind: ...; kind: ...")``
    with every problem ``validate`` would report for this clip (same checks, same names)."""
    problems = caption_problems(record, where=where, max_chars=max_caption_chars)

    def opener() -> Any:
        return io.BytesIO(video) if isinstance(video, bytes) else open(video, "rb")  # noqa: SIM115

    info, found = probe_and_compare(record, opener, where=where)
    problems += found
    if problems:
        raise ValueError("; ".join(f"{p.kind}: {p.message}" for p in problems))
    assert info is not None
    updated = record.model_copy()
    updated.duration = info.duration
    updated.fps = info.fps
    updated.num_frames = info.num_frames
    updated.codec = info.codec
    updated.rotation = info.rotation
    if updated.bit_rate is None:
        updated.bit_rate = info.bit_rate
    return updated


def _prepare(clip: Any, scratch: Path, max_caption_chars: int) -> Prepared:
    record: ClipRecord = clip.record
    where = clip.where
    try:
        with writing_to(scratch):  # a large member spills to a temporary file there
            video = clip.fetch(scratch)
    except MemberTooLargeError as exc:
        return Prepared(record.id, where, reason=f"member_too_large: {exc}")
    except MemberReadError as exc:
        return Prepared(record.id, where, reason=f"unreadable_member: {exc}")
    prepared = Prepared(record.id, where, video=video)
    try:
        prepared.record = verify_media(record, video, where=where, max_caption_chars=max_caption_chars)
    except ValueError as exc:
        prepared.discard()
        return Prepared(record.id, where, reason=str(exc))
    return prepared


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


def convert(
    src: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    archives: Sequence[str] | None = None,
    download: bool = False,
    storage_options: dict[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
    workers: int = 1,
    revision: str | None = None,
    progress: bool = True,
    max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES,
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
) -> ConvertSummary:
    """Convert the upstream release at ``src`` into ``out``; resumable. ``src`` is a folder, a Hub repo
    id or a URL (``hf://``, ``s3://``, ``https://``..., opened with ``storage_options``), read where it
    lies unless ``download=True`` (a Hub repo snapshot to the local cache first).

    ``limit`` converts only the first N clips (in id order) and ``archives`` only the clips of the
    archives named (``["videos_1.zip"]``); both are recorded in the recipe, so a rerun into the same
    ``out`` must give the same ones.

    ``max_clip_bytes`` bounds what one zip member may inflate to and ``max_caption_chars`` a caption's
    length (see :mod:`medvideocap.dataset.upstream` and :mod:`medvideocap.dataset.validate` for the defaults); past
    them a clip is dropped with the bound named. Call :meth:`ConvertSummary.failure` for the verdict.
    An ``out`` that is ``src``, lies inside it or holds it is refused first
    (:func:`medvideocap.paths.check_apart`). The run holds ``out``'s lock
    (:func:`medvideocap.lock.output_lock`): a second convert into it stops at once with
    :class:`~medvideocap.lock.LockedError`. A full disk, a used-up quota or a read-only ``out`` (or
    scratch folder) stops it with a :class:`~medvideocap.disk.ResourceError`; the same command then
    resumes into the same bytes.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medvideocap.dataset.layout import is_hub_native
    from medvideocap.dataset.upstream import UpstreamRelease
    from medvideocap.locations import resolve as resolve_location
    from medvideocap.locations import resolve_output

    check_apart(src, out, src_label="the source")
    fractions = check_fractions(fractions)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    location = resolve_location(src, revision=revision, storage_options=storage_options)
    # an object-store --out is read with the same storage options (the writer stages it locally)
    out_options = (storage_options or {}) if resolve_output(out).local is None else None
    if location.repo_id is None and is_hub_native(location):
        raise ValueError(
            f"{src} is already a hub-native dataset; convert reads the upstream zips + JSON release"
        )
    if max_caption_chars < 1:
        raise ValueError(f"max_caption_chars must be >= 1, got {max_caption_chars}")
    # One run per output (medvideocap.lock), taken before the release is read; writing_to(out) names the
    # output folder for a full disk met where no writer below named the file itself.
    with output_lock(out, verb="convert"), writing_to(out):
        mark = REMOTE_READS.mark()
        release = UpstreamRelease.open(
            location, max_clip_bytes=max_clip_bytes, archives=archives, download=download
        )
        clips = list(release.clips())  # sorted by id; release.problems is complete from here on
        if limit is not None:
            clips = clips[:limit]
        remote = release.location is not None
        upstream: dict[str, Any] = {
            "source": str(src) if remote or location.repo_id else Path(src).name,
            "revision": revision,
            "metadata_file": release.metadata_path.name,
            "metadata_sha256": release.metadata_sha256,
            "zips": [z.name for z in release.zips],
        }
        if limit is not None or archives is not None:
            upstream["subset"] = {"limit": limit, "archives": sorted(archives) if archives else None}
        recipe = {
            "converter": "medvideocap convert",
            "upstream": upstream,
            "split": {"key": "group", "fractions": list(fractions), "salt": salt, "hash": "sha256"},
            "verify": {
                "probe": "pyav, every packet demuxed",
                "duration_tolerance_s": DURATION_TOLERANCE_S,
                "duration_tolerance_rel": DURATION_TOLERANCE_REL,
                "fps_tolerance_rel": FPS_TOLERANCE_REL,
                "max_clip_bytes": max_clip_bytes,
                "max_caption_chars": max_caption_chars,
            },
        }

        def split_fn(record: ClipRecord) -> str:
            return assign_split(record.group, fractions=fractions, salt=salt)

        written = 0
        with (
            DatasetWriter(
                out, shard_bytes=shard_bytes, split_fn=split_fn, recipe=recipe, storage_options=out_options
            ) as writer,
            tempfile.TemporaryDirectory(prefix="medvideocap-convert-") as scratch,
        ):
            prepare = partial(_prepare, scratch=Path(scratch), max_caption_chars=max_caption_chars)
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
                TextColumn("{task.fields[read]}"),
                TimeRemainingColumn(),
            )

            def read_so_far() -> str:
                return REMOTE_READS.since(mark).describe() if remote else ""

            with Progress(*columns, disable=not progress, transient=False) as bar:
                task = bar.add_task(
                    "convert", total=len(clips), completed=skipped, clip="", read=read_so_far()
                )
                for prepared in _ordered(prepare, todo, workers):
                    if prepared.reason is not None:
                        writer.reject(prepared.where, "verify", prepared.reason)
                    else:
                        assert prepared.record is not None and prepared.video is not None
                        try:
                            writer.write(prepared.record, prepared.video)
                            written += 1
                        except (WriterError, ValueError) as exc:
                            writer.reject(prepared.where, "write", f"invalid_record: {exc}")
                        finally:
                            prepared.discard()
                    bar.update(task, advance=1, clip=prepared.clip_id, read=read_so_far())
            counts = writer.counts
            rejects = writer.rejects
        transfer = REMOTE_READS.since(mark) if remote else None
        if transfer is not None:
            log.info("%s: %s", release.root, transfer.describe())
        return ConvertSummary(
            out=out if out_options is not None else Path(out),
            counts=counts,
            written=written,
            skipped=skipped,
            rejects=rejects,
            transfer=transfer,
        )


def summary_table(summary: ConvertSummary) -> Any:
    """A rich table of what was written and what was dropped, by kind."""
    from rich.table import Table

    caption = f"read from the source: {summary.transfer.describe()}" if summary.transfer else None
    table = Table(title=f"medvideocap convert -> {summary.out}", caption=caption)
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
