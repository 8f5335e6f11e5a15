"""Reader for the upstream MedVideoCap-55K release: ``videos_*.zip`` archives + one JSON metadata file.

The upstream JSON key names are not documented, so every key goes through an alias table instead of
being hard-coded. A key is first *normalised* (lower-cased, every non-alphanumeric character removed:
``"Video Name"``, ``"video_name"`` and ``"VideoName"`` all become ``videoname``) and then looked up in
:data:`ALIASES`, which maps it to a schema path:

=====================  =========================================================================
schema path            normalised upstream keys (example spellings)
=====================  =========================================================================
file_name              videoname, video, videofile, videopath, path, filename, clipname, clip, name
resolution -> w, h     resolution, videoresolution, framesize ("720*480", "720x480", "720 × 480", [720, 480])
width / height         width, videowidth / height, videoheight
duration               duration, videoduration, length, durations ("8.99", "8.99 s", "00:00:08.99")
fps                    fps, framerate, videofps, frameratefps ("29.97", "30000/1001", "25 fps")
bit_rate               videobitrate, bitrate ("1.2 Mbps", "1200 kb/s", "850kbps", bare numbers = bit/s)
num_frames / codec     numframes, framecount, nbframes / codec, videocodec
scores.aesthetic       aestheticscore, aesthetic, aestheticsscore, laionaesthetic
scores.technical       doverscore, dover, technicalscore, technical, technicalquality, dovertechnical
camera_motion          cameramotiontype, cameramotion, motiontype, cameramovement
category               videocategories, videocategory, category, categories, type (list -> first;
                       a value outside the paper's five -> ``other``, raw value kept in ``extra``)
captions.brief         briefcaption, shortcaption, brief, short, summary
captions.detailed      detailedcaption, caption, detailed, longcaption, densecaption
source.title           title, videotitle, sourcetitle
source.description     description, videodescription, sourcedescription
source.transcript      transcript, cliptranscript, subtitles, subtitle, asr
source.url             url, videourl, sourceurl, youtubeurl, link
source.video_id        sourcevideo, sourcevideoid, videoid, youtubeid, sourceid, ytid
source.start / end     start, starttime, clipstart / end, endtime, clipend (seconds)
schema_version         schemaversion
=====================  =========================================================================

Keys with no alias are kept verbatim in ``record.extra`` and reported once per key (an ``unknown_key``
problem and an :class:`~medvideocap.dataset.schema.UnknownFieldsWarning`). Captions taken from the JSON are
``Caption(name="detailed"|"brief", source="upstream", model="gpt-4o")``: the paper wrote them with GPT-4o.

Videos are joined to records by base name (members may sit in folders inside the zips; the record's
``file_name`` is the member's full name) and read by streaming :meth:`zipfile.ZipFile.open` in 1 MiB
chunks: nothing is extracted, and a member is never held whole in memory past
:data:`SPOOL_MEMORY_BYTES` nor read past :data:`DEFAULT_MAX_CLIP_BYTES` (a clip's size bound). A zip
whose central directory is cut off is walked by its local file headers instead, so its intact members
are still read. Names that clean up to the same id get distinct ids by a fixed rule. Every
inconsistency (record without video, video without record, duplicate names, member names escaping
the archive root, members too large or cut short, damaged archives, records that do not fit the
schema) is collected in :attr:`UpstreamRelease.problems`, never silently dropped. Media facts the JSON lacks altogether
(duration, fps, width, height) are read from the video's header instead (a ``filled_from_video``
note), so an unexpected JSON shape costs a probe per clip rather than every clip.

A release that is not on this machine (a Hub repo id or ``hf://``, ``s3://``/``gs://``/``az://``, an
``https://`` folder; :mod:`medvideocap.locations` opens them) is read where it lies, never downloaded
whole: a zip keeps its central directory at its end, so :mod:`zipfile` over a ranged file
(:func:`list_remote_archive`) lists an archive in a few ranged reads whatever its size, and each clip
is then one ranged read of its local header and data (:class:`RemoteMember`), stored members as they
are and deflated ones through the same inflate-with-a-bound as recovered members. Every remote byte is
counted in one place (:data:`REMOTE_READS`), which is what the verbs report as bytes read and rate.
Recovering a damaged archive from its local headers walks it from its start, which would be a whole
download: a remote archive without a readable central directory is reported as such instead.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import struct
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from medvideocap.dataset.schema import (
    Category,
    ClipRecord,
    DataError,
    SchemaVersionError,
    UnknownFieldsWarning,
    check_schema_version,
)
from medvideocap.locations import Location
from medvideocap.locations import resolve as resolve_location

log = logging.getLogger(__name__)

UPSTREAM_REPO = "FreedomIntelligence/MedVideoCap-55K"
UPSTREAM_PATTERNS = ["*.json", "*.jsonl", "videos_*.zip"]
CAPTION_MODEL = "gpt-4o"
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")


@functools.lru_cache(maxsize=4096)
def normalise_key(key: str) -> str:
    """``"Video Name"`` -> ``"videoname"``: the form :data:`ALIASES` is keyed by."""
    return re.sub(r"[^a-z0-9]+", "", str(key).lower())


def _aliases(target: str, *keys: str) -> dict[str, str]:
    return {normalise_key(k): target for k in keys}


ALIASES: dict[str, str] = {
    **_aliases(
        "file_name",
        "Video Name",
        "video",
        "video_file",
        "video_path",
        "path",
        "file_name",
        "clip_name",
        "clip",
        "name",
    ),
    **_aliases("resolution", "Resolution", "video_resolution", "frame_size"),
    **_aliases("width", "width", "video_width"),
    **_aliases("height", "height", "video_height"),
    **_aliases("duration", "Duration", "video_duration", "length", "durations"),
    **_aliases("fps", "FPS", "frame_rate", "video_fps", "frame rate (fps)"),
    **_aliases("bit_rate", "Video Bit Rate", "bitrate"),
    **_aliases("num_frames", "num_frames", "frame_count", "nb_frames"),
    **_aliases("codec", "codec", "video_codec"),
    **_aliases("scores.aesthetic", "Aesthetic Score", "aesthetic", "aesthetics score", "laion_aesthetic"),
    **_aliases(
        "scores.technical",
        "Dover Score",
        "DOVER",
        "technical score",
        "technical",
        "technical_quality",
        "dover_technical",
    ),
    **_aliases("camera_motion", "Camera Motion Type", "camera_motion", "motion_type", "camera_movement"),
    **_aliases("category", "Video Categories", "video_category", "category", "categories", "type"),
    **_aliases("captions.brief", "Brief Caption", "Short Caption", "brief", "short", "summary"),
    **_aliases(
        "captions.detailed", "Detailed Caption", "Caption", "detailed", "long_caption", "dense_caption"
    ),
    **_aliases("source.title", "title", "video_title", "source_title"),
    **_aliases("source.description", "description", "video_description", "source_description"),
    **_aliases("source.transcript", "transcript", "clip_transcript", "subtitles", "subtitle", "asr"),
    **_aliases("source.url", "url", "video_url", "source_url", "youtube_url", "link"),
    **_aliases(
        "source.video_id", "Source Video", "source_video_id", "video_id", "youtube_id", "source_id", "yt_id"
    ),
    **_aliases("source.start", "start", "start_time", "clip_start"),
    **_aliases("source.end", "end", "end_time", "clip_end"),
    **_aliases("schema_version", "schema_version"),
}
"""Normalised upstream key -> schema path (see the module docstring for the table)."""

FILE_NAME_ALIASES = sorted(k for k, v in ALIASES.items() if v == "file_name")


class UpstreamFormatError(ValueError):
    """The release as a whole cannot be read (no metadata file, no video-name field, ...)."""


class UpstreamProblem(BaseModel):
    """One thing wrong with the release. ``kind`` is one of: record_without_video, video_without_record,
    duplicate_name, unsafe_member_name, invalid_record, schema_version, unknown_key, unknown_category,
    filled_from_video, id_collision, unreadable_member, member_too_large, damaged_archive.
    ``unknown_key``, ``unknown_category``, ``filled_from_video`` and ``id_collision`` lose nothing
    (values are kept in ``record.extra``, read from the video, or the id is suffixed); the others mean a
    clip (or, for ``damaged_archive``, part of an archive) cannot be used as is."""

    kind: str
    where: str
    message: str


# ---------------------------------------------------------------------------------------------------
# Value parsing: upstream values are strings with units as often as numbers.

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class _ValueError(ValueError):
    pass


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise _ValueError(f"{value!r} is not a number ({what})")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*({_NUMBER})\s*", value)
        if m:
            return float(m.group(1))
    raise _ValueError(f"{value!r} is not a number ({what})")


def parse_resolution(value: Any) -> tuple[int, int]:
    """``"720*480"``, ``"720x480"``, ``"720 × 480"``, ``[720, 480]`` or ``{"width":, "height":}``."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(_number(value[0], "width")), int(_number(value[1], "height"))
    if isinstance(value, dict) and {"width", "height"} <= set(value):
        return int(_number(value["width"], "width")), int(_number(value["height"], "height"))
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[x*×X,:]\s*(\d+)\s*(?:p(?:x|ixels?)?)?\s*", value)
        if m:
            return int(m.group(1)), int(m.group(2))
    raise _ValueError(f"{value!r} is not a resolution like '720*480'")


def parse_duration(value: Any) -> float:
    """Seconds from ``8.99``, ``"8.99"``, ``"8.99 s"``, ``"8.99sec"`` or ``"00:00:08.99"``."""
    if isinstance(value, str):
        text = value.strip().lower()
        m = re.fullmatch(rf"({_NUMBER})\s*(s|sec|secs|second|seconds)?", text)
        if m:
            return float(m.group(1))
        m = re.fullmatch(r"(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)", text)
        if m:
            return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return _number(value, "seconds")


def parse_fps(value: Any) -> float:
    """Frames per second from ``25``, ``"29.97"``, ``"25 fps"`` or ``"30000/1001"``."""
    if isinstance(value, str):
        text = value.strip().lower()
        m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
        if m and int(m.group(2)):
            return int(m.group(1)) / int(m.group(2))
        m = re.fullmatch(rf"({_NUMBER})\s*(fps|frames/s|f/s)?", text)
        if m:
            return float(m.group(1))
    return _number(value, "frames per second")


_RATE_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_bit_rate(value: Any) -> int:
    """Bits per second from ``"1.2 Mbps"``, ``"1200 kb/s"``, ``"850kbps"``, ``"1200 kbit/s"``;
    a bare number is taken as bits per second (the unit ffprobe reports)."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        m = re.fullmatch(rf"({_NUMBER})([kmg]?)(?:bps|b/s|bit/s|bits/s|bit|b)?", text)
        if m:
            return round(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    return round(_number(value, "bits per second"))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _category(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        Category.parse(value)
    except ValueError as exc:
        raise _ValueError(str(exc)) from None
    return None if value is None else str(value)  # the record parses it and keeps it in category_raw


_PARSERS = {
    "duration": parse_duration,
    "fps": parse_fps,
    "bit_rate": parse_bit_rate,
    "width": lambda v: int(_number(v, "pixels")),
    "height": lambda v: int(_number(v, "pixels")),
    "num_frames": lambda v: int(_number(v, "frames")),
    "scores.aesthetic": lambda v: _number(v, "score"),
    "scores.technical": lambda v: _number(v, "score"),
    "source.start": parse_duration,
    "source.end": parse_duration,
}


def sanitize_id(stem: str) -> str:
    """A webdataset-safe key from a file stem: other characters become ``_``."""
    clean = re.sub(r"[^A-Za-z0-9_\-]", "_", stem)
    return clean if clean[:1].isalnum() else f"c{clean}"


def is_unsafe_member_name(name: str) -> bool:
    """True for names that would land outside the archive root if extracted (``../x``, ``/x``, ``C:\\x``)."""
    if ".." not in name and not name.startswith(("/", "\\")) and name[1:2] != ":":
        return False  # the common case, without building a path object
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return True
    return ".." in PurePosixPath(posix).parts


# ---------------------------------------------------------------------------------------------------
# Records


def mapped_fields(raw: dict[str, Any]) -> tuple[dict[str, tuple[str, Any]], dict[str, Any], list[str]]:
    """Split one upstream object into ``{schema path: (original key, value)}``, the unmapped keys
    (for ``extra``) and the keys that repeat an already-mapped schema path (also kept in ``extra``)."""
    mapped: dict[str, tuple[str, Any]] = {}
    extra: dict[str, Any] = {}
    repeated: list[str] = []
    for key, value in raw.items():
        target = ALIASES.get(normalise_key(key))
        if target is None:
            extra[key] = value
        elif target in mapped:
            extra[key] = value
            repeated.append(key)
        else:
            mapped[target] = (key, value)
    return mapped, extra, repeated


def build_record(
    mapped: dict[str, tuple[str, Any]],
    extra: dict[str, Any],
    *,
    file_name: str,
    where: str,
    notes: list[str] | None = None,
) -> ClipRecord:
    """Turn mapped upstream fields into a validated :class:`ClipRecord`.

    Raises :class:`~medvideocap.dataset.schema.SchemaVersionError` for another major version and
    ``ValueError`` naming ``where`` and each upstream field that does not fit. A category outside
    the paper's five does not lose the clip: it becomes ``other``, the raw value is kept in
    ``extra`` under its upstream key, and a note is appended to ``notes``.
    """
    if "schema_version" in mapped:
        check_schema_version(str(mapped["schema_version"][1]), where=where)
    errors: list[str] = []
    values: dict[str, Any] = {}
    for target, (key, value) in mapped.items():
        if target in ("file_name", "schema_version") or value is None:
            continue
        try:
            if target == "resolution":
                values["width"], values["height"] = parse_resolution(value)
            elif target == "category":
                try:
                    values[target] = _category(value)
                except _ValueError as exc:
                    values[target] = Category.other
                    extra = {**extra, key: value}
                    if notes is not None:
                        notes.append(f"{where}: {exc}; stored as 'other', raw value kept in extra[{key!r}]")
            elif target in _PARSERS:
                values[target] = _PARSERS[target](value)
            else:
                values[target] = _text(value)
        except (_ValueError, ValueError, TypeError) as exc:
            errors.append(f"field {key!r} = {value!r}: {exc}")
    if errors:
        raise ValueError(f"{where}: " + "; ".join(errors))

    stem = PurePosixPath(file_name.replace("\\", "/")).stem
    video_id = values.get("source.video_id")
    data: dict[str, Any] = {
        "id": sanitize_id(stem),
        "group": sanitize_id(video_id) if video_id else sanitize_id(stem),
        "file_name": file_name,
        "scores": {},
        "source": {},
        "captions": [],
        "extra": extra,
    }
    if "schema_version" in mapped:
        data["schema_version"] = str(mapped["schema_version"][1])
    for target, value in values.items():
        if value is None:
            continue
        if target.startswith("scores."):
            data["scores"][target.split(".", 1)[1]] = value
        elif target.startswith("source."):
            data["source"][target.split(".", 1)[1]] = value
        elif target.startswith("captions."):
            style = target.split(".", 1)[1]
            data["captions"].append(
                {"name": style, "text": value, "style": style, "source": "upstream", "model": CAPTION_MODEL}
            )
        else:
            data[target] = value
    try:
        return ClipRecord.model_validate(data)
    except ValidationError as exc:
        reverse = {t.replace("resolution", "width"): k for t, (k, _) in mapped.items()}
        if "resolution" in mapped:
            reverse["height"] = mapped["resolution"][0]
        parts = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"])
            key = reverse.get(path) or reverse.get(".".join(str(p) for p in err["loc"][:2])) or ""
            label = f"field {key!r}" if key else f"schema field {path or '<record>'!r}"
            if not key and path in ("duration", "fps", "width", "height"):
                label += " (missing from the JSON)"
            parts.append(f"{label}: {err['msg']}")
        raise ValueError(f"{where}: " + "; ".join(parts)) from None


def load_metadata_rows(path: Path) -> list[tuple[str | None, dict[str, Any]]]:
    """The records of a metadata file as ``(key, object)`` pairs.

    Accepts a JSON list of objects, an object holding one such list (``{"data": [...]}``), an object
    keyed by video name (``{"00003.mp4": {...}}``: the key is the file name) or JSON lines.
    """
    return parse_metadata_rows(path.read_bytes(), path)


def parse_metadata_rows(data: bytes, path: Path | RemoteFile) -> list[tuple[str | None, dict[str, Any]]]:
    """:func:`load_metadata_rows` of a file's bytes (read from disk or from a remote location);
    ``path`` names it in errors and its suffix says JSON lines or not."""
    text = data.decode("utf-8-sig")
    if path.name.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        doc: Any = rows
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UpstreamFormatError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(doc, dict):
        lists = {
            k: v for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        }
        if len(lists) == 1:
            doc = next(iter(lists.values()))
        elif not lists and doc and all(isinstance(v, dict) for v in doc.values()):
            return [(str(k), v) for k, v in doc.items()]
        else:
            raise UpstreamFormatError(
                f"{path}: expected a list of records or an object holding one list; found keys "
                f"{sorted(doc)[:20]} with {len(lists)} lists of objects"
            )
    if not isinstance(doc, list) or not all(isinstance(x, dict) for x in doc):
        raise UpstreamFormatError(f"{path}: expected a JSON list of objects")
    return [(None, row) for row in doc]


# ---------------------------------------------------------------------------------------------------
# Release


_ZIP_HANDLES: OrderedDict[tuple[int, str, int, int], zipfile.ZipFile] = OrderedDict()
_RECOVERED: OrderedDict[tuple[int, str, int, int], dict[str, LocalEntry]] = OrderedDict()
_ZIP_LOCK = threading.Lock()
_MAX_ZIP_HANDLES = 16

DEFAULT_MAX_CLIP_BYTES = 64 * 1024 * 1024
"""The largest member read as one clip: 720x480 for 10 s at 50 Mbit/s (five times DVD-Video's
9.8 Mbit/s peak for that frame size) is 62.5 MB, rounded up to 64 MiB. A member declaring or
inflating to more is not a clip of this dataset (``--max-clip-bytes`` raises the bound)."""
SPOOL_MEMORY_BYTES = 16 * 1024 * 1024
"""A member up to this size is held in memory; a larger one (within the clip bound) is spooled to
a temporary file, so memory per clip in flight stays bounded whatever the archive holds."""
_CHUNK = 1 << 20


class MemberReadError(DataError, OSError):
    """A zip member's bytes cannot be read as a clip; the message names the archive and member."""


class MemberTooLargeError(MemberReadError):
    """A member inflates past the clip size bound."""


def _archive_key(path: Path) -> tuple[int, str, int, int]:
    stat = path.stat()
    return (os.getpid(), str(path), stat.st_size, stat.st_mtime_ns)


def _zip_handle(path: Path) -> zipfile.ZipFile:
    """A cached open ZipFile: the central directory of a big zip is slow to parse. Keyed by process
    (a handle inherited across ``fork`` would share its file offset with the parent) and by the
    file's size and mtime (a rewritten archive gets a fresh handle). Evicting a handle is safe while
    members are still open: each open member keeps the underlying file alive."""
    key = _archive_key(path)
    with _ZIP_LOCK:
        handle = _ZIP_HANDLES.get(key)
        if handle is None or handle.fp is None:
            handle = _ZIP_HANDLES[key] = zipfile.ZipFile(path)
        _ZIP_HANDLES.move_to_end(key)
        while len(_ZIP_HANDLES) > _MAX_ZIP_HANDLES:
            _, old = _ZIP_HANDLES.popitem(last=False)
            old.close()
        return handle


# ---------------------------------------------------------------------------------------------------
# Archives elsewhere (object storage, the Hub, a web server): read by ranged reads, never downloaded

LIST_BLOCK_BYTES = 64 * 1024
"""Read-ahead of the ranged file that :mod:`zipfile` lists an archive through: the end-of-archive
record is found in one read of at most this much, and the central directory is read in one more."""
_HEADER_SLACK = 256
"""Bytes read past a member's data offset as the central directory predicts it, in case its local
header carries a longer extra field than the central one (then a second read fetches the rest)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a release that is not on this machine: its URL in its location's scheme."""

    url: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    def __str__(self) -> str:
        return self.url


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Transfer:
    """Bytes read from remote locations between two points of a run, and how long that took."""

    bytes: int
    requests: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second over the whole interval (reads and the work between them)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """``12.3 MB read in 40 requests (4.1 MB/s)``: what progress lines and summaries print."""
        return f"{_human(self.bytes)} read in {self.requests} requests ({_human(self.rate)}/s)"


class RemoteReads:
    """Every byte the upstream reader fetches from a remote location, counted at the one place it is
    fetched (:func:`remote_pread` and :func:`remote_read`), per process and thread-safe. A verb takes
    a :meth:`mark` when it starts and reports :meth:`since` that mark in its progress line and summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = 0
        self._requests = 0
        self._first: float | None = None

    def add(self, n: int) -> None:
        with self._lock:
            self._bytes += n
            self._requests += 1
            if self._first is None:
                self._first = time.monotonic()

    def so_far(self) -> Transfer:
        """Everything this process read, timed from its first read."""
        with self._lock:
            first = time.monotonic() if self._first is None else self._first
            return Transfer(self._bytes, self._requests, time.monotonic() - first)

    def mark(self) -> tuple[int, int, float]:
        with self._lock:
            return self._bytes, self._requests, time.monotonic()

    def since(self, mark: tuple[int, int, float]) -> Transfer:
        with self._lock:
            return Transfer(self._bytes - mark[0], self._requests - mark[1], time.monotonic() - mark[2])


REMOTE_READS = RemoteReads()
"""This process's count of bytes read from remote upstream archives and metadata."""
_first_clip_logged = threading.Event()


def remote_pread(location: Location, url: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of ``url`` in one ranged read (:meth:`Location.pread`), counted."""
    data = location.pread(url, offset, size)
    REMOTE_READS.add(len(data))
    return data


def remote_read(location: Location, url: str) -> bytes:
    """The whole of ``url`` (a metadata file), counted."""
    data = location.read_bytes(url)
    REMOTE_READS.add(len(data))
    return data


class _RangedFile(io.RawIOBase):
    """A seekable read-only file over :func:`remote_pread`: what :mod:`zipfile` lists a remote archive
    through. Each read is one ranged request; its size comes from one metadata request (HEAD)."""

    def __init__(self, location: Location, url: str) -> None:
        self.location, self.url = location, url
        self.size = location.size(url)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"{self.url}: seek to {base + offset}, before the start of the file")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), max(0, self.size - self.pos))
        if n == 0:
            return 0
        data = remote_pread(self.location, self.url, self.pos, n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


@dataclass(frozen=True)
class RemoteMember:
    """Where one member of a remote archive lies, from the archive's central directory: enough to read
    it with one ranged request (local header and data together) in any process, without listing the
    archive again. Pickles without a filesystem (see :class:`~medvideocap.locations.Location`)."""

    location: Location
    url: str
    archive_size: int
    name: str
    header_offset: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    extra_len: int
    flags: int = 0


def list_remote_archive(location: Location, url: str) -> list[RemoteMember]:
    """The file members of a remote zip, read from its central directory by ranged reads (zipfile over
    :class:`_RangedFile`: the end record, then the directory, a few requests whatever the archive's
    size). Raises :class:`zipfile.BadZipFile` or ``OSError`` for an archive without a readable one."""
    raw = _RangedFile(location, url)
    with zipfile.ZipFile(io.BufferedReader(raw, buffer_size=LIST_BLOCK_BYTES)) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
    return [
        RemoteMember(
            location=location,
            url=url,
            archive_size=raw.size,
            name=i.filename,
            header_offset=i.header_offset,
            method=i.compress_type,
            crc=i.CRC,
            compress_size=i.compress_size,
            file_size=i.file_size,
            extra_len=len(i.extra),
            flags=i.flag_bits,
        )
        for i in infos
    ]


def remote_member_problem(member: RemoteMember) -> str | None:
    """Why a remote member cannot be read as it is listed, or None."""
    if member.flags & 0x1:
        return "encrypted"
    if member.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"compression method {member.method} is not supported"
    return None


def _remote_chunks(member: RemoteMember, where: str, max_bytes: int) -> Iterator[bytes]:
    """The member's bytes out of one ranged read (local header + data; a second only when its local
    extra field outgrows :data:`_HEADER_SLACK`), inflated and checked as a recovered member is."""
    problem = remote_member_problem(member)
    if problem:
        raise MemberReadError(f"{where}: {problem}")
    # deflate grows incompressible data by a few bytes per 16 KiB block: past this, it inflates past the bound
    if member.compress_size > max_bytes + max_bytes // 1000 + 1024:
        raise MemberTooLargeError(
            f"{where}: {member.compress_size} compressed bytes, over the {max_bytes}-byte bound for one clip "
            "(--max-clip-bytes); not read"
        )
    want = _LOCAL_HEADER.size + len(member.name.encode()) + member.extra_len + _HEADER_SLACK
    want = min(want + member.compress_size, member.archive_size - member.header_offset)
    try:
        buf = remote_pread(member.location, member.url, member.header_offset, want)
    except OSError as exc:
        raise MemberReadError(f"{where}: cannot read its bytes from {member.url} ({exc})") from None
    if len(buf) < _LOCAL_HEADER.size or buf[:4] != _LOCAL_SIGNATURE:
        raise MemberReadError(f"{where}: no local file header at offset {member.header_offset}")
    name_len, extra_len = struct.unpack_from("<2H", buf, 26)
    start = _LOCAL_HEADER.size + name_len + extra_len
    end = start + member.compress_size
    if len(buf) < end:
        try:
            buf += remote_pread(member.location, member.url, member.header_offset + len(buf), end - len(buf))
        except OSError as exc:
            raise MemberReadError(f"{where}: the archive ends inside this member ({exc})") from None
    if not _first_clip_logged.is_set():
        _first_clip_logged.set()
        log.info("%s: first clip read; %s so far", where, REMOTE_READS.so_far().describe())
    entry = LocalEntry(
        member.name,
        member.header_offset,
        member.header_offset + start,
        member.method,
        member.crc,
        member.compress_size,
        member.file_size,
    )
    view = memoryview(buf)[start:end]
    yield from _inflated((view[i : i + _CHUNK] for i in range(0, len(view), _CHUNK)), entry, where)


# ---------------------------------------------------------------------------------------------------
# Recovery of archives whose central directory is gone (a download cut short)

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class LocalEntry:
    """One member found by walking the local file headers. ``problem`` says why its bytes cannot be
    read (cut short, encrypted, ...); an entry without one has all its compressed bytes present
    (whether they inflate to the size and CRC its header declares is checked while reading)."""

    name: str
    header_offset: int
    data_offset: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    problem: str | None = None


def _zip64_sizes(extra: bytes, file_size: int, compress_size: int) -> tuple[int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == _ZIP64_EXTRA:
            values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if file_size == _U32_MAX and values:
                file_size = values.pop(0)
            if compress_size == _U32_MAX and values:
                compress_size = values.pop(0)
            break
        pos += 4 + length
    return file_size, compress_size


def scan_local_headers(path: Path) -> list[LocalEntry]:
    """The members of a zip found by walking its local file headers from the start.

    Why this exists: :mod:`zipfile` (and every maintained reader) needs the central directory at
    the end of the archive, so a download cut short loses every member although most of their
    bytes are intact. Each local header gives the member's name and sizes, so the walk can hop from
    member to member. It stops at the central directory, at bytes that are not a local header, at a
    member whose data runs past the end of the file (reported as cut short) and at a member written
    with a data descriptor (its length is only known from the central directory; reported). Nothing
    is extracted: names are only ever used as labels.
    """
    entries: list[LocalEntry] = []
    total = path.stat().st_size
    with open(path, "rb") as fh:
        pos = 0
        while pos + _LOCAL_HEADER.size <= total:
            fh.seek(pos)
            head = fh.read(_LOCAL_HEADER.size)
            if head[:4] != _LOCAL_SIGNATURE:
                break
            _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL_HEADER.unpack(head)
            raw_name, extra = fh.read(name_len), fh.read(extra_len)
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            data = pos + _LOCAL_HEADER.size + name_len + extra_len
            usize, csize = _zip64_sizes(extra, usize, csize)
            entry = LocalEntry(name, pos, data, method, crc, csize, usize)
            if len(raw_name) < name_len or len(extra) < extra_len or data + csize > total:
                missing = max(data + csize - total, 1)
                cut = f"cut short: the archive ends {missing} bytes before this member's data does"
                entries.append(replace(entry, problem=cut))
                break
            if flags & 0x8:
                why = "written with a data descriptor: its length is only known from the central directory"
                entries.append(replace(entry, problem=why))
                break
            if flags & 0x1:
                entry = replace(entry, problem="encrypted")
            elif method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                entry = replace(entry, problem=f"compression method {method} is not supported")
            entries.append(entry)
            pos = data + csize
    return entries


def _recovered_entries(path: Path) -> dict[str, LocalEntry] | None:
    """None when :mod:`zipfile` reads ``path``; else its members found by :func:`scan_local_headers`
    (cached like the handles). Raises :class:`zipfile.BadZipFile` when no member is found either."""
    key = _archive_key(path)
    with _ZIP_LOCK:
        if key in _RECOVERED:
            return _RECOVERED[key]
    try:
        _zip_handle(path)
        return None
    except zipfile.BadZipFile as exc:
        entries = scan_local_headers(path)
        if not entries:
            raise zipfile.BadZipFile(f"{exc}; no member found by scanning its local file headers") from exc
        by_name = {e.name: e for e in reversed(entries)}  # the first of a repeated name wins
        with _ZIP_LOCK:
            _RECOVERED[key] = by_name
            while len(_RECOVERED) > _MAX_ZIP_HANDLES:
                _RECOVERED.popitem(last=False)
        return by_name


def _local_chunks(path: Path, entry: LocalEntry, where: str) -> Iterator[bytes]:
    """The inflated bytes of a recovered member, checked against its header's size and CRC."""
    if entry.problem:
        raise MemberReadError(f"{where}: {entry.problem}")

    def raw() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            fh.seek(entry.data_offset)
            left = entry.compress_size
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    raise MemberReadError(f"{where}: the archive ends inside this member")
                left -= len(chunk)
                yield chunk

    yield from _inflated(raw(), entry, where)


def _inflated(raw: Iterator[bytes | memoryview], entry: LocalEntry, where: str) -> Iterator[bytes]:
    """``raw`` (a member's stored or deflated bytes) as the member's bytes, at most 1 MiB per chunk,
    checked against the size and CRC ``entry`` declares: a recovered member read from disk and a
    remote member read by a ranged request go through the same checks."""
    inflate = zlib.decompressobj(-zlib.MAX_WBITS) if entry.method == zipfile.ZIP_DEFLATED else None
    crc, size = 0, 0

    def checked(out: bytes) -> bytes:
        nonlocal crc, size
        crc, size = zlib.crc32(out, crc), size + len(out)
        if size > entry.file_size:
            raise MemberReadError(f"{where}: inflates past the {entry.file_size} bytes its header declares")
        return out

    try:
        for chunk in raw:
            pending: bytes | memoryview = chunk
            while pending:
                # max_length bounds what one call inflates: a bomb comes out 1 MiB at a time
                out = checked(bytes(pending) if inflate is None else inflate.decompress(pending, _CHUNK))
                pending = b"" if inflate is None else inflate.unconsumed_tail
                if out:
                    yield out
        if inflate is not None:
            out = checked(inflate.flush())
            if out:
                yield out
            if not inflate.eof:
                raise MemberReadError(f"{where}: its compressed data ends before the stream does")
    except zlib.error as exc:
        raise MemberReadError(f"{where}: corrupt compressed data ({exc})") from None
    if size != entry.file_size or crc != entry.crc:
        raise MemberReadError(
            f"{where}: {size} bytes with CRC {crc:08x}; its header declares {entry.file_size} bytes, "
            f"CRC {entry.crc:08x}"
        )


def _member_chunks(
    zip_path: Path | RemoteFile,
    member: str,
    *,
    remote: RemoteMember | None = None,
    max_bytes: int = DEFAULT_MAX_CLIP_BYTES,
) -> Iterator[bytes]:
    """The member's bytes in chunks of at most 1 MiB, CRC-checked at the end; from the central
    directory when the archive has one, else from its local header; a remote member (``remote``)
    by one ranged read. Raises MemberReadError."""
    where = f"{zip_path.name}:{member}"
    if remote is not None:
        yield from _remote_chunks(remote, where, max_bytes)
        return
    if not isinstance(zip_path, Path):
        raise MemberReadError(f"{where}: a remote archive's member is read through its RemoteMember")
    try:
        recovered = _recovered_entries(zip_path)
        if recovered is not None:
            entry = recovered.get(member)
            if entry is None:
                raise MemberReadError(f"{where}: no such member in the recovered archive")
            yield from _local_chunks(zip_path, entry, where)
            return
        with _zip_handle(zip_path).open(member) as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk
    except MemberReadError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        raise MemberReadError(f"{where}: {exc}") from None


def fetch_member(
    zip_path: Path | RemoteFile,
    member: str,
    *,
    max_bytes: int = DEFAULT_MAX_CLIP_BYTES,
    scratch: Path | None = None,
    memory_bytes: int = SPOOL_MEMORY_BYTES,
    remote: RemoteMember | None = None,
) -> bytes | Path:
    """The member's bytes, streamed: in memory up to ``memory_bytes``, past that in a new file under
    ``scratch`` (the caller deletes it; without ``scratch`` the bytes stay in memory). Raises
    :class:`MemberTooLargeError` as soon as more than ``max_bytes`` have come out, so neither memory
    nor disk ever holds more than one clip's bound however large the member inflates. ``remote``: the
    member of a remote archive, read by one ranged request (see :class:`RemoteMember`)."""
    zip_path = zip_path if isinstance(zip_path, RemoteFile) else Path(zip_path)
    where = f"{zip_path.name}:{member}"
    parts: list[bytes] = []
    total = 0
    spill: IO[bytes] | None = None
    try:
        for chunk in _member_chunks(zip_path, member, remote=remote, max_bytes=max_bytes):
            total += len(chunk)
            if total > max_bytes:
                raise MemberTooLargeError(
                    f"{where}: inflates past {max_bytes} bytes, the bound for one clip (--max-clip-bytes)"
                )
            if spill is None and (scratch is None or total <= memory_bytes):
                parts.append(chunk)
                continue
            if spill is None:
                assert scratch is not None
                spill = tempfile.NamedTemporaryFile(dir=scratch, suffix=".mp4", delete=False)  # noqa: SIM115
                spill.writelines(parts)
                parts = []
            spill.write(chunk)
    except BaseException:
        if spill is not None:
            spill.close()
            Path(spill.name).unlink(missing_ok=True)
        raise
    if spill is None:
        return b"".join(parts)
    spill.close()
    return Path(spill.name)


def open_member(
    zip_path: Path | RemoteFile,
    member: str,
    *,
    max_bytes: int = DEFAULT_MAX_CLIP_BYTES,
    remote: RemoteMember | None = None,
) -> IO[bytes]:
    """A seekable stream of the member (what a demuxer needs): zipfile's own stream when the archive
    is on disk with a central directory, else a spooled copy of the member (bounded memory): a
    recovered member, or a remote one read by one ranged request."""
    if remote is None:
        zip_path = Path(zip_path) if not isinstance(zip_path, RemoteFile) else zip_path
        if isinstance(zip_path, Path):
            try:
                recovered = _recovered_entries(zip_path)
            except zipfile.BadZipFile as exc:
                raise MemberReadError(f"{zip_path.name}:{member}: {exc}") from None
            if recovered is None:
                return _zip_handle(zip_path).open(member)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115  # returned open
    try:
        total = 0
        for chunk in _member_chunks(zip_path, member, remote=remote, max_bytes=max_bytes):
            total += len(chunk)
            if total > max_bytes:
                raise MemberTooLargeError(f"{zip_path.name}:{member}: inflates past {max_bytes} bytes")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool  # type: ignore[return-value]


def read_member(
    zip_path: Path | RemoteFile,
    member: str,
    *,
    max_bytes: int = DEFAULT_MAX_CLIP_BYTES,
    remote: RemoteMember | None = None,
) -> bytes:
    """The bytes of one zip member (at most ``max_bytes``), through the per-process handle cache, or
    by one ranged read for a member of a remote archive (``remote``)."""
    data = fetch_member(zip_path, member, max_bytes=max_bytes, remote=remote)
    assert isinstance(data, bytes)  # no scratch folder: always in memory
    return data


@dataclass
class UpstreamClip:
    """One record joined to its zip member. ``zip_path`` is the archive on disk, or a
    :class:`RemoteFile` when the release is read where it lies; then ``remote`` says where the member
    lies in it, and every read is one ranged request."""

    record: ClipRecord
    zip_path: Path | RemoteFile
    member: str
    max_bytes: int = DEFAULT_MAX_CLIP_BYTES
    remote: RemoteMember | None = None

    def open(self) -> IO[bytes]:
        """A seekable stream of the member's bytes, read straight out of the zip."""
        return open_member(self.zip_path, self.member, max_bytes=self.max_bytes, remote=self.remote)

    def read_bytes(self) -> bytes:
        return read_member(self.zip_path, self.member, max_bytes=self.max_bytes, remote=self.remote)

    def fetch(self, scratch: Path | None = None) -> bytes | Path:
        """The member's bytes, or a temporary file under ``scratch`` holding them (see :func:`fetch_member`)."""
        return fetch_member(
            self.zip_path, self.member, max_bytes=self.max_bytes, scratch=scratch, remote=self.remote
        )

    @property
    def where(self) -> str:
        return f"{self.zip_path.name}:{self.member}"


@dataclass
class UpstreamRelease:
    """A release of ``videos_*.zip`` + metadata JSON: a local folder, or any location
    (:mod:`medvideocap.locations`: a Hub repo, object storage, a web server) read where it lies.

    Read where it lies, each archive is listed from its central directory by a few ranged reads and
    each clip is one more ranged read when it is asked for: nothing is downloaded whole (``open(...,
    download=True)`` snapshots a Hub repo to the local cache first instead). ``root`` is then the URL,
    ``zips`` and ``metadata_path`` are :class:`RemoteFile` and ``location`` reads them."""

    root: Path | str
    metadata_path: Path | RemoteFile
    zips: list[Path] | list[RemoteFile]
    problems: list[UpstreamProblem] = field(default_factory=list)
    max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES
    location: Location | None = None
    """Where a remote release's files are read; None for a local folder."""
    partial: bool = False
    """Only some of the release's archives were opened (``archives=``): a record whose video is in
    another archive is not a ``record_without_video``."""
    metadata_sha256: str | None = None
    """SHA-256 of the metadata file's bytes, once :meth:`scan` has read it."""
    _clips: dict[str, UpstreamClip] | None = field(default=None, repr=False)
    _records: dict[str, ClipRecord] = field(default_factory=dict, repr=False)
    _invalid_names: set[str] = field(default_factory=set, repr=False)
    _dropped_members: set[str] = field(default_factory=set, repr=False)
    _remote: dict[tuple[str, str], RemoteMember] = field(default_factory=dict, repr=False)
    _rows: int = 0

    @classmethod
    def open(
        cls,
        path_or_repo: str | Path | Location,
        *,
        revision: str | None = None,
        metadata: str | Path | None = None,
        max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES,
        require_videos: bool = True,
        archives: Sequence[str] | None = None,
        download: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> UpstreamRelease:
        """Open a release: a local folder, a Hub dataset repo id or ``hf://`` URL, an object-store URL
        (``s3://``, ``gs://``, ``az://``) or an ``https://`` folder URL (see :mod:`medvideocap.locations`).

        Anything not on this machine is read where it lies (:meth:`from_location`); ``download=True``
        snapshots a Hub repo's JSON and zips to the local cache first (resumable) and reads that.
        ``metadata`` picks the JSON file when the folder holds several candidates (and names it on a web
        server, which cannot be listed); ``archives`` (``["videos_1.zip", ...]``) opens only those; a
        member larger than ``max_clip_bytes`` is a ``member_too_large`` problem and never read.
        """
        from medvideocap.dataset.layout import download as snapshot

        location = resolve_location(path_or_repo, revision=revision, storage_options=storage_options)
        if download:
            if location.repo_id is None and location.local is None:
                raise UpstreamFormatError(
                    f"{location}: --download snapshots a Hub repo id; a release at a URL is read where it "
                    "lies (copy it to a local folder yourself to keep one)"
                )
            location = snapshot(location, UPSTREAM_PATTERNS, in_place=False)
        kwargs: dict[str, Any] = dict(
            metadata=metadata, require_videos=require_videos, max_clip_bytes=max_clip_bytes, archives=archives
        )
        if location.local is not None:
            if not location.local.is_dir():
                raise UpstreamFormatError(
                    f"{path_or_repo}: no such folder, and not a Hub repo id like 'owner/name'"
                )
            return cls.from_folder(location.local, **kwargs)
        return cls.from_location(location, **kwargs)

    @classmethod
    def from_folder(
        cls,
        root: Path,
        *,
        metadata: str | Path | None = None,
        require_videos: bool = True,
        max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES,
        archives: Sequence[str] | None = None,
    ) -> UpstreamRelease:
        """Open a local folder; ``require_videos=False`` accepts a metadata-only download (for
        ``info``/``stats``): then only :meth:`records` is meaningful and no join problems are reported."""
        root = Path(root)
        zips = sorted(root.glob("videos_*.zip"), key=_natural_key) or sorted(
            root.glob("*.zip"), key=_natural_key
        )
        if metadata is not None:
            metadata_path = Path(metadata) if Path(metadata).is_absolute() else root / metadata
        else:
            metadata_path = find_metadata_file(root)
        zips = _pick_archives(zips, archives, root)
        if not zips and require_videos:
            raise UpstreamFormatError(f"{root}: no videos_*.zip archives found")
        if max_clip_bytes < 1:
            raise ValueError(f"max_clip_bytes must be >= 1, got {max_clip_bytes}")
        return cls(
            root=root,
            metadata_path=metadata_path,
            zips=zips,
            max_clip_bytes=max_clip_bytes,
            partial=archives is not None,
        )

    @classmethod
    def from_location(
        cls,
        location: Location,
        *,
        metadata: str | Path | None = None,
        require_videos: bool = True,
        max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES,
        archives: Sequence[str] | None = None,
    ) -> UpstreamRelease:
        """Open a release that is not on this machine, to read it where it lies.

        The archives are found by listing the location; a web server (``http(s)://``) cannot be listed
        when it serves no index page, so there ``videos_1.zip``, ``videos_2.zip``, ... are tried in
        order until one is missing, and the metadata file must be named (``metadata=``) unless the
        server lists it."""
        if max_clip_bytes < 1:
            raise ValueError(f"max_clip_bytes must be >= 1, got {max_clip_bytes}")
        web = location.scheme in ("http", "https")
        names = _remote_listing(location, web)
        zips = sorted(
            (RemoteFile(u) for u in names if _matches(u, "videos_*.zip")), key=_natural_key
        ) or sorted((RemoteFile(u) for u in names if _matches(u, "*.zip")), key=_natural_key)
        if not zips and web:
            zips = _probe_numbered_archives(location)
        if metadata is not None:
            metadata_file = RemoteFile(
                location.join(str(metadata), where=str(location), what="metadata file")
            )
        else:
            candidates = sorted(u for u in names if _matches(u, "*.json") or _matches(u, "*.jsonl"))
            metadata_file = _pick_remote_metadata(location, candidates, web)
        zips = _pick_archives(zips, archives, location.url)
        if not zips and require_videos:
            hint = " (a web server that lists no folder: are they named videos_1.zip, videos_2.zip, ...?)"
            raise UpstreamFormatError(f"{location}: no videos_*.zip archives found{hint if web else ''}")
        return cls(
            root=location.url,
            metadata_path=metadata_file,
            zips=zips,
            max_clip_bytes=max_clip_bytes,
            location=location,
            partial=archives is not None,
        )

    def scan(self) -> UpstreamRelease:
        """Read the metadata, list the zips and join them; fills :attr:`problems`. Idempotent."""
        if self._clips is not None:
            return self
        self.problems = []
        mark = REMOTE_READS.mark()
        members = self._list_members()
        records = self._read_records(members)
        self._records = dict(sorted((r.id, r) for r, _ in records.values()))
        clips: dict[str, UpstreamClip] = {}
        if not self.zips:
            self._clips = {}
            return self
        elsewhere = 0
        for base, (record, where) in sorted(records.items()):
            if base in self._dropped_members:
                continue  # its member is already reported (too large, cut short)
            if base not in members:
                if self.partial:
                    elsewhere += 1  # in an archive that was not opened
                    continue
                self._problem("record_without_video", where, f"{where}: no member named {base!r} in any zip")
                continue
            zip_path, member = members[base]
            clips[record.id] = UpstreamClip(
                record=record,
                zip_path=zip_path,
                member=member,
                max_bytes=self.max_clip_bytes,
                remote=self._remote.get((str(zip_path), member)),
            )
        if elsewhere:
            log.info(
                "%s: %d records name videos outside %s", self.root, elsewhere, [z.name for z in self.zips]
            )
        for base, (zip_path, member) in sorted(members.items()):
            if base not in records and base not in self._invalid_names and base not in self._dropped_members:
                self._problem(
                    "video_without_record",
                    f"{zip_path.name}:{member}",
                    f"{zip_path.name}:{member}: no metadata record names {base!r}",
                )
        self._clips = dict(sorted(clips.items()))
        if self.location is not None:
            log.info(
                "%s: %d archives listed, %d clips joined; %s",
                self.root,
                len(self.zips),
                len(self._clips),
                REMOTE_READS.since(mark).describe(),
            )
        return self

    def clips(self) -> Iterator[UpstreamClip]:
        """Joined clips sorted by id; :attr:`problems` is complete once this has been called."""
        self.scan()
        assert self._clips is not None
        yield from self._clips.values()

    def records(self) -> Iterator[ClipRecord]:
        """Every valid metadata record sorted by id, whether or not a video was found for it."""
        self.scan()
        yield from self._records.values()

    def get(self, clip_id: str) -> UpstreamClip:
        self.scan()
        assert self._clips is not None
        try:
            return self._clips[clip_id]
        except KeyError:
            raise KeyError(f"{self.root}: no clip with id {clip_id!r}") from None

    def __len__(self) -> int:
        self.scan()
        assert self._clips is not None
        return len(self._clips)

    @property
    def num_rows(self) -> int:
        """Records in the metadata file, valid or not."""
        self.scan()
        return self._rows

    # -- internals ------------------------------------------------------------------------------

    def _problem(self, kind: str, where: str, message: str) -> None:
        self.problems.append(UpstreamProblem(kind=kind, where=where, message=message))

    def _list_members(self) -> dict[str, tuple[Path | RemoteFile, str]]:
        members: dict[str, tuple[Path | RemoteFile, str]] = {}
        self._dropped_members = set()
        for zip_path in self.zips:
            listed = self._archive_members(zip_path)
            for name, size, unreadable in listed:
                base = name.replace("\\", "/").rsplit("/", 1)[-1]
                if base.startswith("._") or "__MACOSX" in name or not base.lower().endswith(VIDEO_SUFFIXES):
                    log.debug("%s:%s: not a video member, ignored", zip_path.name, name)
                    continue
                where = f"{zip_path.name}:{name}"
                if is_unsafe_member_name(name):
                    self._problem(
                        "unsafe_member_name",
                        where,
                        f"{where}: member name escapes the archive root; skipped",
                    )
                    continue
                if base in members:
                    first = members[base]
                    self._problem(
                        "duplicate_name",
                        where,
                        f"{where}: {base!r} already in {first[0].name}:{first[1]}; kept the first",
                    )
                    continue
                if unreadable:
                    self._dropped_members.add(base)
                    self._problem("unreadable_member", where, f"{where}: {unreadable}")
                    continue
                if size > self.max_clip_bytes:
                    self._dropped_members.add(base)
                    self._problem(
                        "member_too_large",
                        where,
                        f"{where}: declares {size} bytes, over the {self.max_clip_bytes}-byte bound for one "
                        "clip (--max-clip-bytes); not read",
                    )
                    continue
                members[base] = (zip_path, name)
        return members

    def _archive_members(self, zip_path: Path | RemoteFile) -> list[tuple[str, int, str | None]]:
        """(name, declared size, why unreadable) of every file member; a zip whose central
        directory is gone is walked by its local headers (:func:`scan_local_headers`)."""
        if isinstance(zip_path, RemoteFile):
            return self._remote_archive_members(zip_path)
        try:
            infos = _zip_handle(zip_path).infolist()
            return [(i.filename, i.file_size, None) for i in infos if not i.is_dir()]
        except (zipfile.BadZipFile, OSError) as exc:
            damage = exc
        try:
            entries = scan_local_headers(zip_path)
        except OSError as exc:
            entries, damage = [], exc
        if not entries:
            self._problem(
                "unreadable_member",
                zip_path.name,
                f"{zip_path.name}: not a readable zip ({damage}), and no member was found by scanning "
                "its local file headers",
            )
            return []
        intact = sum(e.problem is None for e in entries)
        self._problem(
            "damaged_archive",
            zip_path.name,
            f"{zip_path.name}: not a readable zip ({damage}); recovered {intact} of the {len(entries)} "
            "members found by scanning its local file headers (download it again to get the rest)",
        )
        return [(e.name, e.file_size, e.problem) for e in entries if not e.name.endswith("/")]

    def _remote_archive_members(self, zip_file: RemoteFile) -> list[tuple[str, int, str | None]]:
        """:meth:`_archive_members` of an archive read where it lies: its central directory by ranged
        reads. The local-header walk that recovers a damaged archive would read it whole from its
        start, so a remote archive without a readable central directory is reported, not walked."""
        assert self.location is not None
        try:
            listed = list_remote_archive(self.location, zip_file.url)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            self._problem(
                "damaged_archive",
                zip_file.name,
                f"{zip_file.name}: not a readable zip ({exc}); its central directory cannot be read where "
                "it lies, and recovering its members from their local headers needs the whole archive: "
                "download it (convert --download, or copy the release to a local folder) and rerun",
            )
            return []
        for m in listed:
            self._remote[(zip_file.url, m.name)] = m
        return [(m.name, m.file_size, remote_member_problem(m)) for m in listed]

    def _read_metadata(self) -> bytes:
        if isinstance(self.metadata_path, RemoteFile):
            assert self.location is not None
            return remote_read(self.location, self.metadata_path.url)
        return self.metadata_path.read_bytes()

    def _open_member(self, zip_path: Path | RemoteFile, member: str) -> IO[bytes]:
        remote = self._remote.get((str(zip_path), member))
        return open_member(zip_path, member, max_bytes=self.max_clip_bytes, remote=remote)

    def _read_records(
        self, members: dict[str, tuple[Path | RemoteFile, str]]
    ) -> dict[str, tuple[ClipRecord, str]]:
        data = self._read_metadata()
        self.metadata_sha256 = hashlib.sha256(data).hexdigest()
        rows = parse_metadata_rows(data, self.metadata_path)
        self._rows = len(rows)
        self._invalid_names = set()
        if rows and not any(
            key is not None or any(ALIASES.get(normalise_key(k)) == "file_name" for k in row)
            for key, row in rows
        ):
            seen = sorted({k for _, row in rows[:1000] for k in row})
            raise UpstreamFormatError(
                f"{self.metadata_path}: no video name field; keys seen: {seen}; "
                f"accepted (after lower-casing and removing non-alphanumerics): {FILE_NAME_ALIASES}"
            )
        meta = self.metadata_path.name
        warned: set[str] = set()
        warned_categories: set[str] = set()
        filled: dict[str, int] = {}
        records: dict[str, tuple[ClipRecord, str]] = {}
        for index, (key, row) in enumerate(rows):
            mapped, extra, repeated = mapped_fields(row)
            name_value = mapped.get("file_name", (None, key))[1]
            if not name_value:
                self._problem("invalid_record", f"{meta}[{index}]", f"{meta} row {index}: no video name")
                continue
            base = str(name_value).replace("\\", "/").rsplit("/", 1)[-1]
            if not base.lower().endswith(VIDEO_SUFFIXES):
                base = f"{base}.mp4"
            where = f"{meta} row {index} ({base})"
            for k in [*extra]:
                if k in warned:
                    continue
                warned.add(k)
                why = "repeats a field already given by another key" if k in repeated else "has no alias"
                message = f"{where}: key {k!r} {why}; kept in record.extra (reported once per key)"
                self._problem("unknown_key", where, message)
                warnings.warn(message, UnknownFieldsWarning, stacklevel=2)
            missing = [
                f
                for f in MEDIA_FIELDS
                if f not in mapped and not (f in ("width", "height") and "resolution" in mapped)
            ]
            if (
                missing
                and base in members
                and _fill_from_video(mapped, missing, self._open_member, *members[base])
            ):
                filled[",".join(missing)] = filled.get(",".join(missing), 0) + 1
            # The record names the member it was read from, folders included; the JSON's own
            # spelling is kept in extra when it says something else (another folder).
            name_key = mapped.get("file_name", ("<object key>", None))[0]
            file_name = members[base][1] if base in members else str(name_value)
            if "/" in str(name_value).replace("\\", "/") and str(name_value) != file_name:
                extra = {**extra, name_key: name_value}
            notes: list[str] = []
            try:
                record = build_record(mapped, extra, file_name=file_name, where=where, notes=notes)
            except SchemaVersionError as exc:
                self._invalid_names.add(base)
                self._problem("schema_version", where, str(exc))
                continue
            except ValueError as exc:
                self._invalid_names.add(base)
                self._problem("invalid_record", where, str(exc))
                continue
            category_raw = str(mapped.get("category", (None, None))[1])
            if notes and category_raw not in warned_categories:
                warned_categories.add(category_raw)
                self._problem("unknown_category", where, f"{notes[0]} (reported once per value)")
            if base in records:
                self._problem(
                    "duplicate_name",
                    where,
                    f"{where}: {base!r} already described by {records[base][1]}; kept the first",
                )
                continue
            records[base] = (record, where)
        self._resolve_id_collisions(records)
        for fields, count in filled.items():
            self._problem(
                "filled_from_video",
                meta,
                f"{meta}: {count} records have no {fields.replace(',', '/')}; taken from their video files",
            )
        return records

    def _resolve_id_collisions(self, records: dict[str, tuple[ClipRecord, str]]) -> None:
        """Give every record its own id when several names clean up to one (``a b.mp4`` and
        ``a_b.mp4`` both give ``a_b``). Deterministic whatever the order of the JSON: a name that is
        already clean keeps the id, the others take ``-2``, ``-3``, ... in sorted order of their
        names (skipping ids already taken). The rename is recorded in ``extra["id_collision"]`` and
        reported (``id_collision``, a warning: nothing is lost)."""
        by_id: dict[str, list[str]] = {}
        for base, (record, _) in records.items():
            by_id.setdefault(record.id, []).append(base)
        taken = set(by_id)
        for clip_id, bases in sorted(by_id.items()):
            if len(bases) < 2:
                continue
            bases.sort(key=lambda b: (sanitize_id(PurePosixPath(b).stem) != PurePosixPath(b).stem, b))
            for base in bases[1:]:
                n = 2
                while f"{clip_id}-{n}" in taken:
                    n += 1
                new_id = f"{clip_id}-{n}"
                taken.add(new_id)
                record, where = records[base]
                how = {"cleaned_id": clip_id, "kept_by": bases[0], "names": bases, "rule": "sorted names"}
                renamed = record.model_copy(
                    update={"id": new_id, "extra": {**record.extra, "id_collision": how}}
                )
                records[base] = (renamed, where)
                self._problem(
                    "id_collision",
                    where,
                    f"{where}: {base!r} and {bases[0]!r} both clean up to id {clip_id!r}; {bases[0]!r} keeps "
                    f"it, {base!r} is {new_id!r} (recorded in extra['id_collision'])",
                )


def _matches(url: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(posixpath.basename(url.rstrip("/")), pattern)


def _remote_listing(location: Location, web: bool) -> list[str]:
    """The URLs directly under a remote release's root; empty for a web server that lists nothing."""
    try:
        return location.glob("*")
    except Exception as exc:  # each backend (s3fs, HfFileSystem, aiohttp) has its own errors, no common base
        if web:
            return []
        hint = (
            "the repo id, revision, network and HF_TOKEN" if location.scheme == "hf" else "the URL, network"
        )
        raise UpstreamFormatError(
            f"{location}: cannot list the release ({type(exc).__name__}: {exc}); check {hint} and "
            "credentials (--storage-option, or the backend's environment), or pass a local folder"
        ) from exc


def _probe_numbered_archives(location: Location, limit: int = 1000) -> list[RemoteFile]:
    """``videos_1.zip``, ``videos_2.zip``, ... that exist, up to the first missing one. Asked by size
    (a HEAD request): fsspec's HTTP ``exists`` is a GET of the whole file."""
    found: list[RemoteFile] = []
    for n in range(1, limit + 1):
        url = location.path(f"videos_{n}.zip")
        try:
            location.size(url)
        except FileNotFoundError:
            break
        found.append(RemoteFile(url))
    return found


def _pick_remote_metadata(location: Location, candidates: list[str], web: bool) -> RemoteFile:
    """The one metadata file among ``candidates`` (as :func:`find_metadata_file` picks it locally)."""
    if len(candidates) > 1:
        with_records = []
        for url in candidates:
            try:
                if parse_metadata_rows(remote_read(location, url), RemoteFile(url)):
                    with_records.append(url)
            except (UpstreamFormatError, ValueError, UnicodeDecodeError):
                continue
        candidates = with_records or candidates
    if not candidates:
        hint = (
            "; a web server that serves no folder index cannot be listed: name the file with metadata=NAME"
            if web
            else ""
        )
        raise UpstreamFormatError(f"{location}: no *.json metadata file found{hint}")
    if len(candidates) > 1:
        names = [posixpath.basename(u) for u in candidates]
        raise UpstreamFormatError(f"{location}: several metadata files {names}; pick one with metadata=...")
    return RemoteFile(candidates[0])


def _pick_archives(zips: list[Any], archives: Sequence[str] | None, root: object) -> list[Any]:
    """The archives named in ``archives`` (all when None); an unknown name is an error listing them."""
    if archives is None:
        return zips
    names = {z.name for z in zips}
    unknown = sorted(set(archives) - names)
    if unknown:
        raise UpstreamFormatError(f"{root}: no archive named {unknown}; the release has {sorted(names)}")
    wanted = set(archives)
    return [z for z in zips if z.name in wanted]


MEDIA_FIELDS = ("duration", "fps", "width", "height")


def _fill_from_video(
    mapped: dict[str, tuple[str, Any]],
    fields: list[str],
    opener: Callable[[Path | RemoteFile, str], IO[bytes]],
    zip_path: Path | RemoteFile,
    member: str,
) -> bool:
    """Media facts the JSON lacks, read from the video's header: a release whose JSON has no FPS key
    must not lose every clip. False when the member cannot be probed (the record then stays invalid)."""
    from medvideocap.media.probe import ProbeError, probe

    try:
        with opener(zip_path, member) as stream:
            info = probe(stream, name=f"{zip_path.name}:{member}")
    except (ProbeError, zipfile.BadZipFile, OSError, EOFError):
        return False
    for name in fields:
        mapped[name] = (f"<{name} of the video file>", getattr(info, name))
    return True


def _natural_key(path: Path | RemoteFile) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def find_metadata_file(root: Path) -> Path:
    """The one JSON metadata file of a release; several candidates are an error naming them."""
    candidates = sorted(p for p in [*root.glob("*.json"), *root.glob("*.jsonl")] if p.is_file())
    if len(candidates) > 1:
        with_records = []
        for p in candidates:
            try:
                if load_metadata_rows(p):
                    with_records.append(p)
            except (UpstreamFormatError, ValueError, UnicodeDecodeError):
                continue
        candidates = with_records or candidates
    if not candidates:
        raise UpstreamFormatError(f"{root}: no *.json metadata file found")
    if len(candidates) > 1:
        raise UpstreamFormatError(
            f"{root}: several metadata files {[p.name for p in candidates]}; pick one with metadata=..."
        )
    return candidates[0]


class UpstreamSource:
    """The clips of an upstream release (one split of the deterministic split, or all of them): a
    :class:`~medvideocap.dataset.source.ClipSource` whose reader streams one zip member
    (:meth:`UpstreamClip.read_bytes`, a :class:`MemberReadError` for a missing or damaged member).

    Records are kept as JSON text, not as validated models, so a DataLoader's forked workers share them
    without touching a reference count per field; :meth:`record` validates one on demand. The problems
    found while joining the release (records without video, members too large...) are
    :attr:`problems`: those clips are not in the source."""

    def __init__(self, release: UpstreamRelease, split: str | None = None) -> None:
        from medvideocap.dataset.splits import assign_split

        clips = list(release.clips())
        if split == "all":
            split = None
        if split is not None:
            clips = [c for c in clips if assign_split(c.record.group) == split]
        self.release = release
        self.split = split
        self._clips = clips
        self._json = [
            json.dumps({**c.record.to_json_dict(), **({"split": split} if split else {})}) for c in clips
        ]
        self._ids = [c.record.id for c in clips]

    @classmethod
    def open(cls, location: Any, split: str | None = None) -> UpstreamSource:
        """The release at ``location`` (a local folder or a :class:`~medvideocap.locations.Location`
        that :meth:`UpstreamRelease.open` accepts), as a clip source of ``split``."""
        return cls(UpstreamRelease.open(location), split)

    @property
    def where(self) -> str:
        return str(self.release.root)

    @property
    def problems(self) -> list[UpstreamProblem]:
        return self.release.problems

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._clips)

    def record(self, i: int) -> ClipRecord:
        return ClipRecord.from_json_dict(json.loads(self._json[i]), where=self._clips[i].where)

    def reader(self, i: int) -> tuple[Any, str, Any]:
        clip = self._clips[i]
        return clip.read_bytes, clip.where, ("upstream", clip.where)

    def __repr__(self) -> str:
        return f"UpstreamSource({self.where}, split={self.split!r}, {len(self)} clips)"
