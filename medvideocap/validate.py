"""Check a dataset end to end: every record against the schema, every video against its record.

Metadata that disagrees with the files is the failure that costs most downstream (a loader asking for
81 frames of a clip that decodes 30, a trainer bucketing by a wrong resolution), so every video is
demuxed in full (``probe(..., count_frames=True)``: real duration even when the header lies) and
compared with what its record claims. Tolerances: duration within ``max(0.5 s, 5 %)`` (containers
round, and the paper's durations are given to 0.01 s), fps within 1 %, width and height exact.

Problems have a severity: ``error`` (the dataset is invalid; the CLI exits non-zero) or ``warning``
(worth knowing, nothing lost: an unknown upstream key is kept in ``extra``).
"""

from __future__ import annotations

import tarfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from medvideocap.layout import HUB_NATIVE, UPSTREAM, resolve
from medvideocap.probe import MediaInfo, ProbeError, probe
from medvideocap.schema import (
    ClipRecord,
    InvalidRecordError,
    SchemaVersionError,
    UnknownFieldsWarning,
    arrow_schema,
)

DURATION_TOLERANCE_S = 0.5
DURATION_TOLERANCE_REL = 0.05
FPS_TOLERANCE_REL = 0.01

WARNING_KINDS = frozenset({"unknown_key"})

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while videos are probed."""


class Problem(BaseModel):
    severity: Literal["error", "warning"] = "error"
    kind: str = Field(
        description="record_without_video, video_without_record, duplicate_name, unsafe_member_name, "
        "invalid_record, schema_version, unknown_key, unreadable_member, undecodable_video, "
        "duration_mismatch, fps_mismatch, size_mismatch, frames_mismatch, offset_mismatch, "
        "count_mismatch, split_mismatch, format"
    )
    where: str = Field(description="File and row or member the problem is about.")
    message: str


class ValidationReport(BaseModel):
    source: str
    layout: str | None
    root: str | None
    records: int = Field(0, description="Metadata records read (valid or not).")
    videos_checked: int = Field(0, description="Videos demuxed and compared with their record.")
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
        severity: Literal["error", "warning"] = "warning" if kind in WARNING_KINDS else "error"
        self.problems.append(Problem(severity=severity, kind=kind, where=where, message=message))


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


def validate(
    path_or_repo: str | Path,
    *,
    revision: str | None = None,
    videos: bool = True,
    progress: Progress | None = None,
) -> ValidationReport:
    """Validate an upstream release or a hub-native dataset (local folder or Hub repo id).

    ``videos=False`` checks the metadata only (no download or decode of videos). Never raises for
    bad data: everything wrong ends up in the report.
    """
    report = ValidationReport(source=str(path_or_repo), layout=None, root=None)
    try:
        kind, root = resolve(path_or_repo, revision, videos=videos)
    except (ValueError, OSError) as exc:
        report.add("format", str(path_or_repo), str(exc))
        return report
    report.layout, report.root = kind, str(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownFieldsWarning)  # reported as problems instead
        if kind == UPSTREAM:
            _validate_upstream(root, report, videos=videos, progress=progress)
        elif kind == HUB_NATIVE:
            _validate_hub_native(root, report, videos=videos, progress=progress)
    return report


def _probe_stream(report: ValidationReport, where: str, opener: Callable[[], object]) -> MediaInfo | None:
    try:
        with opener() as stream:  # type: ignore[attr-defined]
            return probe(stream, name=where, count_frames=True)
    except ProbeError as exc:
        report.add("undecodable_video", where, str(exc))
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        report.add("unreadable_member", where, f"{where}: cannot read the video bytes ({exc})")
    return None


def _validate_upstream(root: Path, report: ValidationReport, *, videos: bool, progress: Progress | None) -> None:
    from medvideocap.upstream import UpstreamFormatError, UpstreamRelease

    try:
        release = UpstreamRelease.from_folder(root, require_videos=videos)
        clips = list(release.clips())
    except (UpstreamFormatError, OSError, ValueError) as exc:
        report.add("format", str(root), str(exc))
        return
    report.records = release.num_rows
    for p in release.problems:
        report.add(p.kind, p.where, p.message)
    if not videos:
        return
    for done, clip in enumerate(clips, 1):
        info = _probe_stream(report, clip.where, clip.open)
        if info is not None:
            report.videos_checked += 1
            report.problems.extend(compare_media(clip.record, info, where=clip.where))
        if progress:
            progress(done, len(clips))


def _validate_hub_native(root: Path, report: ValidationReport, *, videos: bool, progress: Progress | None) -> None:
    import io

    from medvideocap.hubnative import HubNativeDataset

    try:
        ds = HubNativeDataset(root)
    except SchemaVersionError as exc:
        report.add("schema_version", str(root / "meta" / "info.json"), str(exc))
        return
    except (ValueError, OSError) as exc:
        report.add("format", str(root), str(exc))
        return
    names = arrow_schema().names
    counts = ds.info.get("counts", {})
    on_disk = sorted(p.stem for p in (root / "metadata").glob("*.parquet"))
    for split in sorted(set(on_disk) - set(ds.splits)):
        report.add("count_mismatch", f"metadata/{split}.parquet", f"metadata/{split}.parquet: split not in meta/info.json counts")
    work: list[tuple[ClipRecord | None, str, str, str, int, int]] = []
    for split in ds.splits:
        table = ds.metadata(split)
        where_table = f"metadata/{split}.parquet"
        if table.height != counts.get(split):
            report.add(
                "count_mismatch",
                where_table,
                f"{where_table}: {table.height} rows, meta/info.json says {counts.get(split)}",
            )
        seen: set[str] = set()
        for i, row in enumerate(table.iter_rows(named=True)):
            report.records += 1
            where = f"{where_table} row {i} ({row.get('id')})"
            if row.get("id") in seen:
                report.add("duplicate_name", where, f"{where}: id {row.get('id')!r} appears twice")
            seen.add(row.get("id"))
            record: ClipRecord | None = None
            try:
                record = ClipRecord.from_json_dict({k: row.get(k) for k in names}, where=where)
            except SchemaVersionError as exc:
                report.add("schema_version", where, str(exc))
            except InvalidRecordError as exc:
                report.add("invalid_record", where, str(exc))
            if record is not None and record.split != split:
                report.add("split_mismatch", where, f"{where}: record says split {record.split!r}")
            work.append((record, where, str(row.get("id")), str(row.get("shard")), row.get("offset"), row.get("size")))
    if not videos:
        return
    for done, (record, where, clip_id, shard, offset, size) in enumerate(work, 1):
        shard_path = root / shard
        data = _read_tar_member(report, shard_path, clip_id, offset, size, where)
        if data is not None:
            info = _probe_stream(report, f"{shard}:{clip_id}.mp4", lambda d=data: io.BytesIO(d))
            if info is not None:
                report.videos_checked += 1
                if record is not None:
                    report.problems.extend(
                        compare_media(record, info, where=f"{shard}:{clip_id}.mp4", said_by="metadata")
                    )
        if progress:
            progress(done, len(work))


def _read_tar_member(
    report: ValidationReport, shard: Path, clip_id: str, offset: int | None, size: int | None, where: str
) -> bytes | None:
    """The member's bytes at the recorded offset, after checking the tar header just before them
    names ``{id}.mp4`` (a wrong offset would otherwise decode some other clip without complaint)."""
    if offset is None or size is None or offset < 512:
        report.add("offset_mismatch", where, f"{where}: no usable offset/size ({offset}, {size})")
        return None
    try:
        with open(shard, "rb") as fh:
            fh.seek(offset - 512)
            header = fh.read(512)
            data = fh.read(size)
    except OSError as exc:
        report.add("unreadable_member", where, f"{where}: cannot read {shard.name} ({exc})")
        return None
    try:
        name = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name
    except tarfile.TarError:
        name = ""
    if name.rsplit("/", 1)[-1] != f"{clip_id}.mp4" and len(name) < 99:
        report.add("offset_mismatch", where, f"{where}: offset {offset} in {shard.name} points at {name!r}, not {clip_id}.mp4")
        return None
    if len(data) != size:
        report.add("unreadable_member", where, f"{where}: {shard.name} is cut short ({len(data)} of {size} bytes)")
        return None
    return data
