"""Which kind of dataset a path, URL or Hub repo id holds, and where its files are.

Two layouts exist: the ``upstream`` release (``videos_*.zip`` + one JSON file, as published) and our
``hub-native`` layout (webdataset shards + metadata parquet + ``meta/info.json``, see DESIGN.md). Every
verb that takes ``PATH_OR_REPO`` goes through :func:`locate`, so each accepts both layouts, in a local
folder, in object storage or on the Hub: the source becomes a :class:`~medvideocap.locations.Location`
(the one table of schemes lives in :mod:`medvideocap.locations`) and the layout is detected through
it. A bare Hub repo id is downloaded (:func:`download`) with ``huggingface_hub.snapshot_download``,
which resumes interrupted files and skips files already in the local cache, so a second call is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from medvideocap.locations import Location
from medvideocap.locations import resolve as resolve_location

UPSTREAM: Literal["upstream"] = "upstream"
HUB_NATIVE: Literal["hub-native"] = "hub-native"
HUB_NATIVE_FORMAT = "medvideocap/hub-native"
FORMAT = HUB_NATIVE_FORMAT
"""The ``format`` value of a hub-native ``meta/info.json`` (owned here, not by the writer, so that readers
of the format need not import the writer)."""
Kind = Literal["upstream", "hub-native"]

# The hub-native layout, relative to the dataset root, with posix separators: the writer, the readers,
# the card, the build and ``push`` all name these files through this table (LeRobot's ``INFO_PATH``
# style), so a path changes in one place. Strings, not Paths: they are also glob patterns and the tails
# of ``hf://`` URLs. ``root / INFO_PATH`` joins them on disk.
README_PATH = "README.md"
"""The dataset card; its YAML header declares the configs ``load_dataset`` reads."""
META_DIR = "meta"
INFO_PATH = "meta/info.json"
REJECTS_PATH = "meta/rejects.parquet"
FUNNEL_PATH = "meta/funnel.json"
CHARTS_DIR = "meta/charts"
CATEGORY_CHART_PATH = f"{CHARTS_DIR}/categories.png"
DURATION_CHART_PATH = f"{CHARTS_DIR}/durations.png"
"""The charts the dataset card embeds (drawn by :mod:`medvideocap.dataset.plots`)."""
PROGRESS_DIR = "meta/progress"
"""Resume state of an unfinished write; removed when the dataset is closed (and never pushed)."""
METADATA_DIR = "metadata"
DATA_DIR = "data"
SHARD_GLOB = "shard-*.tar"
PARTIAL_SUFFIX = ".tar.partial"
PARTIAL_SHARD_GLOB = f".shard-*{PARTIAL_SUFFIX}"
"""A shard still being written (hidden, renamed to ``shard-*.tar`` when full); never read or pushed."""
METADATA_GLOB = f"{METADATA_DIR}/*.parquet"
SHARDS_GLOB = f"{DATA_DIR}/*/{SHARD_GLOB}"


def metadata_path(split: str) -> str:
    """``metadata/{split}.parquet``: the index of one split (one row per clip, no video bytes)."""
    return f"{METADATA_DIR}/{split}.parquet"


def split_dir(split: str) -> str:
    """``data/{split}``: the folder of one split's webdataset shards."""
    return f"{DATA_DIR}/{split}"


def split_shards_glob(split: str) -> str:
    """``data/{split}/shard-*.tar``: the finished shards of one split (the card's ``data_files``)."""
    return f"{split_dir(split)}/{SHARD_GLOB}"


def shard_path(split: str, index: int) -> str:
    """``data/{split}/shard-{NNNNN}.tar``: shard ``index`` of ``split`` (five digits, zero-padded)."""
    return f"{split_dir(split)}/shard-{index:05d}.tar"


# Files worth fetching to find out what a repo is, and to read its metadata without videos.
METADATA_PATTERNS = [README_PATH, "*.json", "*.jsonl", f"{META_DIR}/*", METADATA_GLOB]
VIDEO_PATTERNS = {UPSTREAM: ["videos_*.zip"], HUB_NATIVE: [SHARDS_GLOB]}


class LayoutError(ValueError):
    """The path is neither layout; the message says what was looked for."""


class NotADatasetError(LayoutError, FileNotFoundError):
    """A folder that exists but holds neither layout. A ``FileNotFoundError`` too: the dataset a caller
    asked for is not there (what ``load()`` has always raised for it)."""


READ_IN_PLACE_PATTERNS = VIDEO_PATTERNS[UPSTREAM]
"""Files never downloaded unless asked: an upstream release's zips are read where they lie, each
listed from its central directory and each clip fetched by one ranged read
(:class:`medvideocap.dataset.upstream.UpstreamRelease`), so seeing one clip does not cost the release."""


def download(
    location: Location, allow_patterns: list[str] | None = None, *, in_place: bool = True
) -> Location:
    """A bare Hub repo id's files (only ``allow_patterns``) downloaded into the HF cache, as a local
    location; any other location as it is, read in place.

    When ``allow_patterns`` asks for an upstream release's zips (:data:`READ_IN_PLACE_PATTERNS`) the
    repo is returned as it is (``hf://``, read where it lies by ranged reads), unless ``in_place=False``
    (``convert --download``): then they are downloaded too. ``huggingface_hub.snapshot_download``
    resumes interrupted files and skips those already cached, so a second call is cheap; a ``token``
    storage option is passed on."""
    if location.repo_id is None:
        return location
    if in_place and allow_patterns is not None and set(READ_IN_PLACE_PATTERNS) & set(allow_patterns):
        return location
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=location.repo_id,
            repo_type="dataset",
            revision=location.revision,
            allow_patterns=allow_patterns,
            token=location.storage_options.get("token"),
        )
    except Exception as exc:  # hub errors have no common base class across huggingface_hub versions
        raise LayoutError(
            f"{location.repo_id}: cannot fetch this dataset repo from the Hub ({type(exc).__name__}: {exc}); "
            "check the repo id, revision, network and HF_TOKEN, or pass a local folder"
        ) from exc
    return resolve_location(Path(local), storage_options=location.storage_options)


def _check_folder(location: Location, source: object) -> None:
    """A location that is a folder (a prefix on object storage), else a :class:`LayoutError`."""
    if not location.exists(location.url):
        hint = ", and not a Hub repo id like 'owner/name'" if location.local is not None else ""
        raise LayoutError(f"{source}: no such folder{hint}")
    # a web server answers for a folder URL as for a file: its index page lists what is inside
    if location.is_file(location.url) and not location.is_dir(location.url):
        raise LayoutError(f"{location}: expected a dataset folder, got a file")


def local_folder(location: Location, *, reader: str = "this reader") -> Path:
    """The folder on this machine ``location`` is, or a :class:`LayoutError` saying that ``reader``
    needs one (an upstream release's zips are read with ``zipfile`` from disk)."""
    if location.local is None:
        raise LayoutError(
            f"{location}: {reader} reads a local folder or a Hub repo id, not {location.scheme}:// yet; "
            "copy it to a local folder first"
        )
    return location.local


def open_folder(
    path_or_repo: str | Path | Location,
    *,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Location:
    """The dataset folder ``path_or_repo`` names (:func:`medvideocap.locations.resolve`), a bare Hub
    repo id downloaded first (only ``allow_patterns``); a :class:`LayoutError` when it is no folder."""
    location = resolve_location(path_or_repo, revision=revision, storage_options=storage_options)
    location = download(location, allow_patterns)
    _check_folder(location, path_or_repo)
    return location


def local_or_download(
    path_or_repo: str | Path, *, revision: str | None = None, allow_patterns: list[str] | None = None
) -> Path:
    """A local folder as is; a Hub dataset repo id downloaded (only ``allow_patterns``, upstream zips
    included: this is the reader that wants every file on disk) to the HF cache."""
    location = resolve_location(path_or_repo, revision=revision)
    if location.repo_id is None:
        local_folder(location)  # a URL is refused before any request is made
    location = download(location, allow_patterns, in_place=False)
    _check_folder(location, path_or_repo)
    return local_folder(location)


def has_hub_native_info(path: Path | str | Location) -> bool:
    """True when ``path`` holds a finished hub-native dataset: ``meta/info.json`` with our format."""
    location = resolve_location(path)
    info = location.path(INFO_PATH)
    try:
        if not location.is_file(info):
            return False
        return json.loads(location.read_text(info)).get("format") == HUB_NATIVE_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def is_hub_native(path: Path | str | Location) -> bool:
    """``meta/info.json`` saying ``format: medvideocap/hub-native``, or shards + metadata parquet."""
    location = resolve_location(path)
    if has_hub_native_info(location):
        return True
    return bool(location.glob(SHARDS_GLOB)) and bool(location.glob(METADATA_GLOB))


def is_upstream_release(path: Path | str | Location) -> bool:
    """A folder with at least one ``videos_*.zip`` and a JSON file beside it."""
    location = resolve_location(path)
    return (
        location.is_dir(location.url)
        and bool(location.glob("videos_*.zip"))
        and bool(location.sizes("*.json") or location.sizes("*.jsonl"))  # files, not folders
    )


def detect(path: Path | str | Location, *, videos: bool = True) -> Kind | None:
    """The layout of a folder, or None. ``videos=False`` accepts folders whose video files were not
    downloaded (metadata only)."""
    location = resolve_location(path)
    if is_hub_native(location) or (not videos and location.is_file(location.path(INFO_PATH))):
        return HUB_NATIVE
    if is_upstream_release(location):
        return UPSTREAM
    if not videos and location.glob("*.json") and not location.exists(location.path(META_DIR)):
        return UPSTREAM
    return None


def locate(
    path_or_repo: str | Path | Location,
    revision: str | None = None,
    *,
    videos: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Kind, Location]:
    """``(kind, location)`` of a dataset: a local folder, a URL (``s3://``, ``hf://``... read in
    place) or a bare Hub repo id (downloaded).

    For a repo id the metadata is fetched first to learn the layout, then (with ``videos=True``) only
    that layout's video files; ``info`` and ``stats`` pass ``videos=False`` and never fetch videos.
    Every verb that takes ``PATH_OR_REPO`` goes through here.
    """
    location = resolve_location(path_or_repo, revision=revision, storage_options=storage_options)
    if location.repo_id is not None:
        metadata = download(location, METADATA_PATTERNS)
        kind = detect(metadata, videos=False)
        if kind is None:
            raise LayoutError(
                f"{location.repo_id}: the repo holds neither an upstream release nor a hub-native dataset"
            )
        if not videos:
            return kind, metadata
        return kind, download(location, [*METADATA_PATTERNS, *VIDEO_PATTERNS[kind]])
    _check_folder(location, path_or_repo)
    found = detect(location, videos=videos)
    if found is None:
        raise NotADatasetError(
            f"{location}: not a dataset folder. Expected an upstream release (videos_*.zip + a metadata *.json) "
            f"or a hub-native dataset (meta/info.json with format {HUB_NATIVE_FORMAT!r}, "
            "data/<split>/shard-*.tar, metadata/<split>.parquet)"
        )
    return found, location


def resolve(
    path_or_repo: str | Path, revision: str | None = None, *, videos: bool = True
) -> tuple[Kind, Path]:
    """:func:`locate` for the readers that need the dataset on this machine's disk: ``(kind, folder)``."""
    kind, location = locate(path_or_repo, revision, videos=videos)
    return kind, local_folder(location)
