"""Which kind of dataset a path or Hub repo id holds, and where its files are on disk.

Two layouts exist: the ``upstream`` release (``videos_*.zip`` + one JSON file, as published) and our
``hub-native`` layout (webdataset shards + metadata parquet + ``meta/info.json``, see DESIGN.md). Every
verb that takes ``PATH_OR_REPO`` goes through :func:`resolve`, so each accepts both layouts, local or on
the Hub. Downloads use ``huggingface_hub.snapshot_download``, which resumes interrupted files and
skips files already in the local cache, so a second call is cheap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

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


_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")

# Files worth fetching to find out what a repo is, and to read its metadata without videos.
METADATA_PATTERNS = [README_PATH, "*.json", "*.jsonl", f"{META_DIR}/*", METADATA_GLOB]
VIDEO_PATTERNS = {UPSTREAM: ["videos_*.zip"], HUB_NATIVE: [SHARDS_GLOB]}


class LayoutError(ValueError):
    """The path is neither layout; the message says what was looked for."""


def looks_like_repo_id(value: str | Path) -> bool:
    """``owner/name`` that is not an existing local path."""
    text = str(value)
    return not Path(text).exists() and bool(_REPO_RE.match(text))


def local_or_download(
    path_or_repo: str | Path, *, revision: str | None = None, allow_patterns: list[str] | None = None
) -> Path:
    """A local folder as is; a Hub dataset repo id downloaded (only ``allow_patterns``) to the HF cache."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LayoutError(f"{path}: expected a dataset folder, got a file")
        return path
    if not looks_like_repo_id(path_or_repo):
        raise LayoutError(f"{path_or_repo}: no such folder, and not a Hub repo id like 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=str(path_or_repo), repo_type="dataset", revision=revision, allow_patterns=allow_patterns
        )
    except Exception as exc:  # hub errors have no common base class across huggingface_hub versions
        raise LayoutError(
            f"{path_or_repo}: cannot fetch this dataset repo from the Hub ({type(exc).__name__}: {exc}); "
            "check the repo id, revision, network and HF_TOKEN, or pass a local folder"
        ) from exc
    return Path(local)


def has_hub_native_info(path: Path | str) -> bool:
    """True when ``path`` holds a finished hub-native dataset: ``meta/info.json`` with our format."""
    info = Path(path) / INFO_PATH
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("format") == HUB_NATIVE_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def is_hub_native(path: Path) -> bool:
    """``meta/info.json`` saying ``format: medvideocap/hub-native``, or shards + metadata parquet."""
    path = Path(path)
    if has_hub_native_info(path):
        return True
    return any(path.glob(SHARDS_GLOB)) and any(path.glob(METADATA_GLOB))


def is_upstream_release(path: Path) -> bool:
    """A folder with at least one ``videos_*.zip`` and a JSON file beside it."""
    path = Path(path)
    return (
        path.is_dir()
        and any(path.glob("videos_*.zip"))
        and any(p.is_file() for p in [*path.glob("*.json"), *path.glob("*.jsonl")])
    )


def detect(path: Path, *, videos: bool = True) -> Kind | None:
    """The layout of a local folder, or None. ``videos=False`` accepts folders whose video files were
    not downloaded (metadata only)."""
    path = Path(path)
    if is_hub_native(path) or (not videos and (path / INFO_PATH).is_file()):
        return HUB_NATIVE
    if is_upstream_release(path):
        return UPSTREAM
    if not videos and any(path.glob("*.json")) and not (path / META_DIR).exists():
        return UPSTREAM
    return None


def resolve(
    path_or_repo: str | Path, revision: str | None = None, *, videos: bool = True
) -> tuple[Kind, Path]:
    """``(kind, root)`` for a local folder or a Hub repo id.

    For a repo id the metadata is fetched first to learn the layout, then (with ``videos=True``) only
    that layout's video files; ``info`` and ``stats`` pass ``videos=False`` and never fetch videos.
    """
    if looks_like_repo_id(path_or_repo):
        root = local_or_download(path_or_repo, revision=revision, allow_patterns=METADATA_PATTERNS)
        kind = detect(root, videos=False)
        if kind is None:
            raise LayoutError(
                f"{path_or_repo}: the repo holds neither an upstream release nor a hub-native dataset"
            )
        if videos:
            root = local_or_download(
                path_or_repo, revision=revision, allow_patterns=[*METADATA_PATTERNS, *VIDEO_PATTERNS[kind]]
            )
        return kind, root
    root = local_or_download(path_or_repo)
    kind = detect(root, videos=videos)
    if kind is None:
        raise LayoutError(
            f"{root}: not a dataset folder. Expected an upstream release (videos_*.zip + a metadata *.json) "
            f"or a hub-native dataset (meta/info.json with format {HUB_NATIVE_FORMAT!r}, "
            "data/<split>/shard-*.tar, metadata/<split>.parquet)"
        )
    return kind, root
