"""Check a dataset end to end: every record against the schema, every video against its record.

Metadata that disagrees with the files is the failure that costs most downstream (a loader asking for
81 frames of a clip that decodes 30, a trainer bucketing by a wrong resolution), so every video is
demuxed in full (``probe(..., count_frames=True)``: real duration even when the header lies) and
compared with what its record claims. Tolerances: duration within ``max(0.5 s, 5 %)`` (containers
round, and the paper's durations are given to 0.01 s), fps within 1 % of the record's value, width
and height exact. Captions longer than :data:`DEFAULT_MAX_CAPTION_CHARS` characters are flagged
(``caption_too_long``): the paper's detailed captions average about 174 words (~1,100 characters), so
a caption past the bound is a pasted transcript or garbage, not a caption.

This module owns these checks: ``convert`` calls :func:`probe_and_compare` and
:func:`caption_problems` too, so it keeps a clip exactly when ``validate`` finds no problem with it.

Problems have a severity: ``error`` (the dataset is invalid; the CLI exits non-zero) or ``warning``
(worth knowing, nothing lost: an unknown upstream key is kept in ``extra``).
"""

from __future__ import annotations

import io
import tarfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from medvideocap.dataset.hubnative import MemberError, MemberMismatchError, read_tar_member
from medvideocap.dataset.layout import (
    INFO_PATH,
    METADATA_GLOB,
    README_PATH,
    UPSTREAM,
    locate,
    metadata_path,
)
from medvideocap.dataset.schema import (
    ClipRecord,
    InvalidRecordError,
    SchemaVersionError,
    UnknownFieldsWarning,
    arrow_schema,
)
from medvideocap.dataset.upstream import DEFAULT_MAX_CLIP_BYTES, REMOTE_READS
from medvideocap.locations import Location
from medvideocap.media.probe import MediaInfo, ProbeError, probe
from medvideocap.paths import OutsideRootError

if TYPE_CHECKING:
    from medvideocap.dataset.upstream import UpstreamClip

DURATION_TOLERANCE_S = 0.5
DURATION_TOLERANCE_REL = 0.05
FPS_TOLERANCE_REL = 0.01
DEFAULT_MAX_CAPTION_CHARS = 10_000
"""About nine times the paper's mean detailed caption; ``--max-caption-chars`` changes it."""

WARNING_KINDS = frozenset({"unknown_key", "unknown_category", "filled_from_video", "id_collision"})

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while videos are probed."""


class Problem(BaseModel):
    """One finding; ``where`` names the file and row or member, ``message`` says what and why."""

    severity: Literal["error", "warning"] = "error"
    kind: str = Field(
        description="The upstream reader's kinds (see medvideocap.dataset.upstream.UpstreamProblem) plus "
        "undecodable_video, duration_mismatch, fps_mismatch, size_mismatch, frames_mismatch, "
        "caption_too_long, offset_mismatch, count_mismatch, split_mismatch, path_outside_root, card, format"
    )
    where: str = Field(description="File and row or member the problem is about.")
    message: str


class ValidationReport(BaseModel):
    source: str
    layout: str | None
    root: str | None
    records: int = Field(0, description="Metadata records read (valid or not).")
    videos_checked: int = Field(0, description="Videos demuxed and compared with their record.")
    sampled: int | None = Field(None, description="Videos picked by --sample (None: every video).")
    bytes_read: int = Field(0, description="Bytes read from a remote upstream release (0 when local).")
    read_requests: int = Field(0, description="Ranged requests those bytes took.")
    read_seconds: float = Field(0.0, description="Seconds from the start to the end of those reads.")
    problems: list[Problem] = Field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def kinds(self) -> dict[str, int]:
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    def to_json_dict(self) -> dict[str, object]:
        data = self.model_dump(mode="json")
        data.update(ok=self.ok, errors=len(self.errors), warnings=len(self.warnings), kinds=self.kinds())
        return data

    def add(self, kind: str, where: str, message: str) -> None:
        self.problems.append(_problem(kind, where, message))


def compare_media(record: ClipRecord, info: MediaInfo, *, where: str, said_by: str = "JSON") -> list[Problem]:
    """Where the decoded facts of a video disagree with its record, beyond the tolerances."""
    label = f"clip {record.file_name}"
    found: list[Problem] = []
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_REL * record.duration)
    if abs(info.duration - record.duration) > tolerance:
        hint = "truncated?" if info.duration < record.duration else "longer than its record"
        found.append(
            Problem(
                kind="duration_mismatch",
                where=where,
                message=f"{label}: {said_by} says {record.duration:.2f} s, file decodes {info.duration:.2f} s ({hint})",
            )
        )
    if abs(info.fps - record.fps) > FPS_TOLERANCE_REL * record.fps:
        found.append(
            Problem(
                kind="fps_mismatch",
                where=where,
                message=f"{label}: {said_by} says {record.fps:g} fps, file has {info.fps:g} fps",
            )
        )
    if (info.width, info.height) != (record.width, record.height):
        found.append(
            Problem(
                kind="size_mismatch",
                where=where,
                message=f"{label}: {said_by} says {record.width}x{record.height}, file is {info.width}x{info.height}",
            )
        )
    if record.num_frames and info.num_frames and abs(info.num_frames - record.num_frames) > 1:
        found.append(
            Problem(
                kind="frames_mismatch",
                where=where,
                message=f"{label}: {said_by} says {record.num_frames} frames, file has {info.num_frames}",
            )
        )
    return found


def caption_problems(
    record: ClipRecord, *, where: str, max_chars: int = DEFAULT_MAX_CAPTION_CHARS
) -> list[Problem]:
    """A ``caption_too_long`` problem per caption of ``record`` longer than ``max_chars`` characters."""
    return [
        Problem(
            kind="caption_too_long",
            where=where,
            message=f"clip {record.file_name}: caption {c.name!r} has {len(c.text)} characters "
            f"({len(c.text.split())} words), over the bound of {max_chars} (--max-caption-chars)",
        )
        for c in record.captions
        if len(c.text) > max_chars
    ]


def probe_and_compare(
    record: ClipRecord, opener: Callable[[], IO[bytes]], *, where: str, said_by: str = "JSON"
) -> tuple[MediaInfo | None, list[Problem]]:
    """Demux the video ``opener`` gives in full and compare it with ``record``: the media facts
    (None when it cannot be read or decoded) and every problem found."""
    problems: list[Problem] = []
    info = _probe_stream(where, opener, problems)
    if info is not None:
        problems.extend(compare_media(record, info, where=where, said_by=said_by))
    return info, problems


def validate(
    path_or_repo: str | Path,
    *,
    revision: str | None = None,
    videos: bool = True,
    workers: int = 1,
    progress: Progress | None = None,
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
    max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES,
    storage_options: dict[str, Any] | None = None,
    sample: int | None = None,
) -> ValidationReport:
    """Validate an upstream release or a hub-native dataset (local folder, Hub repo id, or a URL such
    as ``s3://bucket/ds`` read with ``storage_options``, see :mod:`medvideocap.locations`).

    ``videos=False`` checks the metadata only (no download or decode of videos). ``workers`` threads
    demux videos in parallel (PyAV releases the GIL while demuxing); the report's order does not
    depend on it. ``max_caption_chars`` and ``max_clip_bytes`` (upstream zip members) are the
    bounds ``convert`` takes too. ``sample`` demuxes only that many videos, spread evenly over the
    clips in id order (:func:`sample_evenly`), while every record is still checked: with a release
    read where it lies, that reads a few clips' bytes instead of the archives (``bytes_read``).
    Never raises for bad data: everything wrong ends up in the report.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    mark = REMOTE_READS.mark()
    limits = _Limits(max_caption_chars=max_caption_chars, max_clip_bytes=max_clip_bytes)
    report = ValidationReport(
        source=str(path_or_repo),
        layout=None,
        root=None,
        records=0,
        videos_checked=0,
        sampled=None,
        bytes_read=0,
        read_requests=0,
        read_seconds=0.0,
    )
    try:
        kind, root = locate(path_or_repo, revision, videos=videos, storage_options=storage_options)
    except (ValueError, OSError) as exc:
        report.add("format", str(path_or_repo), str(exc))
        return report
    report.layout, report.root = kind, str(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownFieldsWarning)  # reported as problems instead
        if kind == UPSTREAM:
            checks = _upstream_checks(root, report, videos=videos, limits=limits)
        else:
            checks = _hub_native_checks(root, report, videos=videos, limits=limits)
        if sample is not None:
            checks = sample_evenly(checks, sample)
            report.sampled = len(checks)
        _run_checks(checks, report, workers=workers, progress=progress)
    transfer = REMOTE_READS.since(mark)
    if transfer.bytes:  # a local dataset's report stays free of timings
        report.bytes_read, report.read_requests = transfer.bytes, transfer.requests
        report.read_seconds = transfer.seconds
    return report


def sample_evenly(items: list[Any], n: int) -> list[Any]:
    """``n`` of ``items`` spread evenly from first to last (all of them when there are no more): the
    same ones on every run, and from every archive of a release rather than only the first."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


@dataclass(frozen=True)
class _Limits:
    max_caption_chars: int
    max_clip_bytes: int


VideoCheck = Callable[[], tuple[list[Problem], bool]]
"""Checks one video; returns its problems and whether it was decoded."""


def _run_checks(
    checks: list[VideoCheck], report: ValidationReport, *, workers: int, progress: Progress | None
) -> None:
    results: Iterator[tuple[list[Problem], bool]]
    if workers == 1:
        results = (check() for check in checks)
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(lambda check: check(), checks)
    try:
        for done, (problems, decoded) in enumerate(results, 1):
            report.problems.extend(problems)
            report.videos_checked += decoded
            if progress:
                progress(done, len(checks))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _problem(kind: str, where: str, message: str) -> Problem:
    return Problem(
        severity="warning" if kind in WARNING_KINDS else "error", kind=kind, where=where, message=message
    )


def _probe_stream(where: str, opener: Callable[[], IO[bytes]], problems: list[Problem]) -> MediaInfo | None:
    try:
        with opener() as stream:
            return probe(stream, name=where, count_frames=True)
    except ProbeError as exc:
        problems.append(_problem("undecodable_video", where, str(exc)))
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        problems.append(_problem("unreadable_member", where, f"{where}: cannot read the video bytes ({exc})"))
    return None


def _check_upstream_clip(clip: UpstreamClip) -> tuple[list[Problem], bool]:
    info, problems = probe_and_compare(clip.record, clip.open, where=clip.where)
    return problems, info is not None


def _upstream_checks(
    root: Location, report: ValidationReport, *, videos: bool, limits: _Limits
) -> list[VideoCheck]:
    from medvideocap.dataset.upstream import UpstreamFormatError, UpstreamRelease

    try:
        release = UpstreamRelease.open(root, require_videos=videos, max_clip_bytes=limits.max_clip_bytes)
        clips = list(release.clips())
    except (UpstreamFormatError, OSError, ValueError) as exc:
        report.add("format", str(root), str(exc))
        return []
    report.records = release.num_rows
    for p in release.problems:
        report.add(p.kind, p.where, p.message)
    wheres = {c.record.id: c.where for c in clips}
    for record in release.records():
        where = wheres.get(record.id, f"{release.metadata_path.name} ({record.file_name})")
        report.problems.extend(caption_problems(record, where=where, max_chars=limits.max_caption_chars))
    return [partial(_check_upstream_clip, clip) for clip in clips] if videos else []


def _hub_native_checks(
    root: Location, report: ValidationReport, *, videos: bool, limits: _Limits
) -> list[VideoCheck]:
    import polars as pl

    from medvideocap.dataset.hubnative import HubNativeDataset

    try:
        ds = HubNativeDataset(root)
    except SchemaVersionError as exc:
        report.add("schema_version", root.path(INFO_PATH), str(exc))
        return []
    except (ValueError, OSError) as exc:
        report.add("format", str(root), str(exc))
        return []
    _check_card(root, report)
    names = arrow_schema().names
    counts = ds.info.get("counts", {})
    on_disk = sorted(PurePosixPath(p).stem for p in root.glob(METADATA_GLOB))
    for split in sorted(set(on_disk) - set(ds.splits)):
        where = metadata_path(split)
        report.add("count_mismatch", where, f"{where}: split not in {INFO_PATH} counts")
    checks: list[VideoCheck] = []
    for split in ds.splits:
        where_table = metadata_path(split)
        try:
            table = ds.metadata(split)
        except (ValueError, pl.exceptions.PolarsError, OSError) as exc:  # garbage or cut-off parquet
            report.add("format", where_table, str(exc))
            continue
        if table.height != counts.get(split):
            report.add(
                "count_mismatch",
                where_table,
                f"{where_table}: {table.height} rows, {INFO_PATH} says {counts.get(split)}",
            )
        seen: set[str] = set()
        for i, row in enumerate(table.iter_rows(named=True)):
            report.records += 1
            clip_id = str(row.get("id"))
            where = f"{where_table} row {i} ({clip_id})"
            if clip_id in seen:
                report.add("duplicate_name", where, f"{where}: id {clip_id!r} appears twice")
            seen.add(clip_id)
            record: ClipRecord | None = None
            try:
                record = ClipRecord.from_json_dict({k: row.get(k) for k in names}, where=where)
            except SchemaVersionError as exc:
                report.add("schema_version", where, str(exc))
            except InvalidRecordError as exc:
                report.add("invalid_record", where, str(exc))
            if record is not None and record.split != split:
                report.add("split_mismatch", where, f"{where}: record says split {record.split!r}")
            if record is not None:
                report.problems.extend(
                    caption_problems(record, where=where, max_chars=limits.max_caption_chars)
                )
            try:  # checked with or without videos: such a row is never read, by load() or here
                shard = root.join(str(row.get("shard")), where=where, what="shard")
            except OutsideRootError as exc:
                report.add("path_outside_root", where, str(exc))
                continue
            if videos:
                member = _TarMember(root, shard, clip_id, row.get("offset"), row.get("size"), where)
                checks.append(partial(_check_tar_member, member, record))
    return checks


def _check_card(root: Location, report: ValidationReport) -> None:
    """A ``card`` problem when README.md's YAML header is one the Hub or ``load_dataset`` refuses
    (:func:`medvideocap.dataset.card.read_card_header` owns the rule); a dataset written without a
    card has nothing to check."""
    from medvideocap.dataset.card import CardError, read_card_header

    card = root.path(README_PATH)
    if not root.is_file(card):
        return
    try:
        read_card_header(card, location=root)
    except CardError as exc:
        report.add("card", exc.where, str(exc))


@dataclass(frozen=True)
class _TarMember:
    location: Location
    shard: str
    clip_id: str
    offset: int | None
    size: int | None
    where: str


def _check_tar_member(member: _TarMember, record: ClipRecord | None) -> tuple[list[Problem], bool]:
    problems: list[Problem] = []
    data = _read_tar_member(member, problems)
    if data is None:
        return problems, False
    shard = PurePosixPath(member.shard)
    label = f"{shard.parent.name}/{shard.name}:{member.clip_id}.mp4"
    info = _probe_stream(label, partial(io.BytesIO, data), problems)
    if info is None:
        return problems, False
    if record is not None:
        problems.extend(compare_media(record, info, where=label, said_by="metadata"))
    return problems, True


def _read_tar_member(member: _TarMember, problems: list[Problem]) -> bytes | None:
    """The member's bytes through the loader's own checked read (:func:`hubnative.read_tar_member`),
    so a wrong offset is reported here exactly when ``load()`` would refuse it."""
    where, offset, size = member.where, member.offset, member.size
    if offset is None or size is None:
        problems.append(
            _problem("offset_mismatch", where, f"{where}: no usable offset/size ({offset}, {size})")
        )
        return None
    try:  # the location reads safely from several threads (members are checked from a pool)
        return read_tar_member(
            member.shard, offset, size, f"{member.clip_id}.mp4", files=member.location, where=where
        )
    except MemberMismatchError as exc:
        problems.append(_problem("offset_mismatch", where, str(exc)))
    except MemberError as exc:
        problems.append(_problem("unreadable_member", where, str(exc)))
    return None
