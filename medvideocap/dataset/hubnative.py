"""Reads the hub-native layout written by :mod:`medvideocap.dataset.writer`, wherever it is: a local
folder, a Hub repo, object storage (every read goes through a :class:`~medvideocap.locations.Location`).

The metadata parquet is the index: it answers "which clips, with which facts" without opening a
shard, and its ``shard``/``offset``/``size`` columns turn "give me clip X" into one ranged read: an
``os.pread`` on disk, one ranged GET on object storage (:meth:`~medvideocap.locations.Location.pread`).

This module owns that read (:func:`read_tar_member`): the map-style loader, the streaming loader and
:meth:`HubNativeDataset.read_video` all call it. The ranged read starts 512 bytes early so that the
same ``pread`` also returns the member's tar header, and the header must name ``{id}.mp4`` with the
recorded size. Without that check a metadata table that drifted from its shards (edited, or copied
from another build) decodes some other clip under this clip's record, silently. It also owns the
schema version check of a dataset folder (:func:`check_versions`), from ``meta/info.json`` and from
the rows, so every reader refuses another major version up front instead of clip by clip.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from medvideocap.dataset.layout import (
    FORMAT,
    INFO_PATH,
    METADATA_GLOB,
    has_hub_native_info,
    metadata_path,
    open_folder,
    split_shards_glob,
)
from medvideocap.dataset.schema import (
    SPLITS,
    ClipRecord,
    DataError,
    SchemaVersionError,
    arrow_schema,
    check_schema_version,
)
from medvideocap.handles import ShortReadError
from medvideocap.locations import Location, RangeReader, resolve

if TYPE_CHECKING:
    import datasets
    import polars as pl


is_hub_native = has_hub_native_info
"""True when ``path`` holds a finished hub-native dataset (``meta/info.json``); the
strict check, unlike :func:`medvideocap.dataset.layout.is_hub_native`, which also accepts shards + parquet."""


_NAME_FIELD = 100
"""Bytes of the ustar name field; PAX headers keep longer names elsewhere and truncate this one."""


class MemberError(DataError):
    """A clip's video member cannot be read as the metadata records it; the message names the clip."""


class MissingMemberError(MemberError):
    """The shard or archive holding a clip's video is gone, unreadable or cut short, or lacks the member."""


class MemberMismatchError(MemberError):
    """The bytes at a clip's recorded offset are not its ``{id}.mp4`` member (stale or edited metadata)."""


def read_tar_member(
    shard: str,
    offset: int,
    size: int,
    name: str,
    *,
    files: RangeReader,
    where: str | None = None,
) -> bytes:
    """The ``size`` data bytes of tar member ``name`` whose data starts at ``offset`` of ``shard``.

    One ``pread`` of ``512 + size`` bytes from ``offset - 512`` returns the member's header with its
    data; the header must be a valid tar header (checksum) of a regular file named ``name`` with
    size ``size``, else :class:`MemberMismatchError`. A name longer than the 100-byte ustar field is
    compared on that field (a PAX header holds the whole name one block earlier). ``files`` reads
    the bytes: the dataset's :class:`~medvideocap.locations.Location` (one ranged request on object
    storage, a per-process descriptor on disk), or a caller's own
    :class:`~medvideocap.handles.FileHandles` for a local shard.
    """
    label = where or f"{shard}:{name}"
    fix = (
        "the metadata parquet no longer matches the shards (edited, or from another build); "
        "`medvideocap validate DIR` lists every such row"
    )
    if offset < tarfile.BLOCKSIZE or size <= 0:
        raise MemberMismatchError(
            f"{label}: recorded offset {offset} / size {size} cannot hold a tar member; {fix}"
        )
    try:
        block = files.pread(shard, offset - tarfile.BLOCKSIZE, size + tarfile.BLOCKSIZE)
    except ShortReadError as exc:  # the short read of a truncated shard
        raise MissingMemberError(f"{label}: {exc}") from exc
    except FileNotFoundError as exc:
        raise MissingMemberError(f"{label}: shard {shard} is missing ({exc.strerror or exc})") from exc
    except OSError as exc:
        raise MissingMemberError(f"{label}: cannot read shard {shard} ({exc})") from exc
    try:
        header = tarfile.TarInfo.frombuf(block[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise MemberMismatchError(
            f"{label}: the 512 bytes before offset {offset} of {shard} are not a tar header ({exc}); {fix}"
        ) from exc
    expected = name.encode("utf-8", "surrogateescape")
    found = header.name.encode("utf-8", "surrogateescape")
    same = found == expected or (len(expected) > _NAME_FIELD and found == expected[:_NAME_FIELD])
    if not same or not header.isfile() or header.size != size:
        raise MemberMismatchError(
            f"{label}: offset {offset} of {shard} holds member {header.name!r} of {header.size} bytes, "
            f"not {name!r} of {size} bytes; {fix}"
        )
    return block[tarfile.BLOCKSIZE :]


def read_row_member(
    root: Location,
    shard: str,
    offset: int,
    size: int,
    name: str,
    *,
    where: str,
    row: str,
) -> bytes:
    """:func:`read_tar_member` for a metadata row whose ``shard`` is relative to the dataset ``root``.

    The shard path is data, so it is checked to lie inside ``root`` before anything is opened
    (:meth:`~medvideocap.locations.Location.join`): a row naming ``../elsewhere/x.tar`` would otherwise
    serve another folder's bytes as this clip. That is an
    :class:`~medvideocap.paths.OutsideRootError` naming ``row``, a data error like a missing member."""
    path = root.join(shard, where=row, what="shard")
    return read_tar_member(path, offset, size, name, files=root, where=where)


def read_info(root: str | Path | Location) -> dict[str, Any] | None:
    """``meta/info.json`` of a dataset, version-checked; None when the dataset has none."""
    location = resolve(root)
    path = location.path(INFO_PATH)
    if not location.is_file(path):
        return None
    try:
        info = json.loads(location.read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(info).__name__}")
    if "schema_version" in info:
        check_schema_version(str(info["schema_version"]), where=str(path))
    return info


def check_versions(root: str | Path | Location, split: str | None = None, table: Any = None) -> None:
    """Refuse a dataset of another schema major version before any clip is read.

    Checks ``meta/info.json`` and every distinct ``schema_version`` among the rows of ``split``'s
    metadata (``table``, a pyarrow table, when the caller has it open already): a different major
    raises :class:`~medvideocap.dataset.schema.SchemaVersionError` naming the file, the first such row and
    both versions.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    location = resolve(root)
    read_info(location)
    if split is None:
        return
    path = location.path(metadata_path(split))
    if table is None:
        if not location.is_file(path):
            return
        with location.open(path) as fh:  # two columns: ranged reads of the footer and those chunks
            table = pq.read_table(fh, columns=["id", "schema_version"])
    if "schema_version" not in table.column_names:
        return
    column = table.column("schema_version")
    for version in pc.unique(column).to_pylist():
        if version is None:
            continue
        row = pc.index(column, version).as_py()
        clip = table.column("id")[row].as_py() if "id" in table.column_names else "?"
        check_schema_version(str(version), where=f"{path} row {row} (clip {clip})")


def read_metadata(root: str | Path | Location, split: str) -> pl.DataFrame:
    """The metadata parquet of ``split`` under ``root``: the one read of the index.

    :meth:`HubNativeDataset.metadata` and the map-style loader both call this, so the index is read
    (and its absence reported) one way. A missing split is a :class:`FileNotFoundError` naming the
    splits whose metadata exists.
    """
    import polars as pl

    location = resolve(root)
    path = location.path(metadata_path(split))
    if not location.is_file(path):
        have = sorted(PurePosixPath(p).stem for p in location.glob(METADATA_GLOB))
        raise FileNotFoundError(f"{root}: no metadata for split {split!r} ({path} missing); splits: {have}")
    try:
        with location.open(path) as fh:
            return pl.read_parquet(fh)
    except pl.exceptions.PolarsError as exc:  # garbage or cut off: name the file, not just polars' words
        raise ValueError(f"{path}: unreadable metadata parquet ({exc})") from exc


def webdataset_features() -> datasets.Features:
    """The ``datasets`` features of the default (webdataset) config, declared in the card so that
    ``load_dataset`` never infers types from the first few rows (where nulls would make them wrong)."""
    import datasets

    from medvideocap.dataset.schema import hf_features

    return datasets.Features(
        {
            "mp4": datasets.Video(),
            "json": dict(hf_features()),
            "__key__": datasets.Value("string"),
            "__url__": datasets.Value("string"),
        }
    )


class HubNativeDataset:
    """A hub-native dataset: a local folder, a Hub repo downloaded into the HF cache, or a folder read
    in place through its :attr:`location` (``s3://bucket/ds``)."""

    def __init__(self, root: str | Path | Location) -> None:
        self.location = resolve(root)
        info_path = self.location.path(INFO_PATH)
        info = read_info(self.location)
        if info is None:
            raise FileNotFoundError(
                f"{self.location}: not a hub-native dataset (no {INFO_PATH}); "
                "convert an upstream release with `medvideocap convert SRC --out DIR`"
            )
        self.info: dict[str, Any] = info
        if self.info.get("format") != FORMAT:
            raise ValueError(f"{info_path}: format is {self.info.get('format')!r}, expected {FORMAT!r}")
        if "schema_version" not in self.info:
            raise SchemaVersionError(f"{info_path}: no schema_version; not written by medvideocap")
        counts = self.info.get("counts", {})
        self.splits: list[str] = [s for s in SPLITS if counts.get(s)]
        self._index: dict[str, dict[str, tuple[str, int, int]]] = {}

    @classmethod
    def open(
        cls,
        path_or_repo: str | Path | Location,
        *,
        revision: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> HubNativeDataset:
        """Open a folder (local, or a URL such as ``s3://bucket/ds``), or download a Hub dataset repo
        (``owner/name``) and open that."""
        return cls(open_folder(path_or_repo, revision=revision, storage_options=storage_options))

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"{self.location}: no split {split!r}; this dataset has {self.splits}")

    def metadata(self, split: str) -> pl.DataFrame:
        """The metadata table of ``split`` (record columns, shard, offset, size, caption columns)."""
        self._check_split(split)
        return read_metadata(self.location, split)

    def records(self, split: str) -> Iterator[ClipRecord]:
        """Validated records of ``split``, in shard order."""
        names = arrow_schema().names
        for i, row in enumerate(self.metadata(split).select(names).iter_rows(named=True)):
            yield ClipRecord.from_json_dict(row, where=f"{self.location.path(metadata_path(split))} row {i}")

    def shards(self, split: str) -> list[str]:
        """The finished shard files of ``split``, in order: paths, or URLs off this machine."""
        self._check_split(split)
        return self.location.glob(split_shards_glob(split))

    def _locate(self, split: str, clip_id: str) -> tuple[str, int, int]:
        if split not in self._index:
            table = self.metadata(split).select("id", "shard", "offset", "size")
            self._index[split] = {r[0]: (r[1], r[2], r[3]) for r in table.iter_rows()}
        try:
            return self._index[split][clip_id]
        except KeyError:
            raise KeyError(f"{self.location}: no clip {clip_id!r} in split {split!r}") from None

    def read_video(self, split: str, clip_id: str) -> bytes:
        """The mp4 bytes of one clip, read straight from its shard at the recorded offset (after
        checking the shard lies inside the dataset and the member there is this clip's, see
        :func:`read_row_member`)."""
        shard, offset, size = self._locate(split, clip_id)
        return read_row_member(
            self.location,
            shard,
            offset,
            size,
            f"{clip_id}.mp4",
            where=f"{shard}:{clip_id}.mp4",
            row=f"{self.location.path(metadata_path(split))} (clip {clip_id})",
        )

    def source(self, split: str | None = None) -> HubNativeSource:
        """The :class:`~medvideocap.dataset.source.ClipSource` of ``split`` (None: every split, in order)."""
        if split is not None:
            self._check_split(split)
        return HubNativeSource(self.location, split, splits=self.splits)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.info['counts'][s]}" for s in self.splits)
        return f"HubNativeDataset({self.location}, {counts})"


class HubNativeSource:
    """The clips of one split (or of every split) of a hub-native dataset: a
    :class:`~medvideocap.dataset.source.ClipSource` whose reader is one ranged read per clip
    (:func:`read_row_member`).

    The metadata is kept as Arrow columns and numpy arrays, never as per-row Python objects: a
    DataLoader's forked workers would otherwise copy every page of it by touching reference counts.
    It is read by :func:`read_metadata`, the reader :class:`HubNativeDataset` uses, so the index is read
    one way; another schema major version is refused here (:func:`check_versions`), before any clip."""

    problems: tuple[()] = ()
    """A hub-native dataset reports nothing while opening: its problems are found per clip, as data
    errors, or by ``medvideocap validate``."""

    def __init__(
        self, root: str | Path | Location, split: str | None, *, splits: list[str] | None = None
    ) -> None:
        import numpy as np
        import pyarrow as pa

        self.location = resolve(root)
        self.split = split
        if split is None:
            names = (
                splits
                if splits is not None
                else [s for s in SPLITS if self.location.is_file(self.location.path(metadata_path(s)))]
            )
            if not names:
                raise FileNotFoundError(f"{self.location}: no metadata/<split>.parquet for any split")
        else:
            names = [split]
        tables, paths, starts = [], [], []
        rows = 0
        for name in names:
            path = self.location.path(metadata_path(name))
            table = read_metadata(self.location, name).to_arrow()
            missing = {"shard", "offset", "size", "id"} - set(table.column_names)
            if missing:
                raise ValueError(
                    f"{path}: missing columns {sorted(missing)}; not a medvideocap hub-native metadata table"
                )
            check_versions(self.location, name, table)
            keep = [n for n in arrow_schema().names if n in table.column_names]
            tables.append(table.select(list(dict.fromkeys([*keep, "id", "shard", "offset", "size"]))))
            paths.append(path)
            starts.append(rows)
            rows += table.num_rows
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        self._paths = paths
        self._starts = np.asarray(starts, dtype=np.int64)
        self._records = table.select([n for n in arrow_schema().names if n in table.column_names])
        shards = table.column("shard").to_pylist()
        self.shard_names = sorted(set(shards))
        lookup = {s: i for i, s in enumerate(self.shard_names)}
        self._shard_idx = np.array([lookup[s] for s in shards], dtype=np.int32)
        self._offset = table.column("offset").to_numpy().astype(np.int64)
        self._size = table.column("size").to_numpy().astype(np.int64)
        self._ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)

    @property
    def where(self) -> str:
        return self.location.url

    @property
    def ids(self) -> list[str]:
        return self._ids.tolist()  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._offset)

    def _row(self, i: int) -> str:
        """``metadata/SPLIT.parquet row N``: where row ``i`` sits, for messages."""
        import numpy as np

        part = int(np.searchsorted(self._starts, i, side="right")) - 1
        return f"{self._paths[part]} row {i - int(self._starts[part])}"

    def record(self, i: int) -> ClipRecord:
        row = self._records.slice(i, 1).to_pylist()[0]
        return ClipRecord.from_json_dict(row, where=self._row(i))

    def reader(self, i: int) -> tuple[Any, str, Any]:
        shard = self.shard_names[self._shard_idx[i]]
        clip_id = str(self._ids[i])
        name = f"{clip_id}.mp4"
        where = f"{shard}:{name}"
        offset, size = int(self._offset[i]), int(self._size[i])
        read = partial(
            read_row_member,
            self.location,
            shard,
            offset,
            size,
            name,
            where=where,
            row=f"{self._row(i)} (clip {clip_id})",
        )
        return read, where, (shard, offset)

    def shards(self) -> list[str]:
        """The finished shard files of this source's split (what streaming reads), in order."""
        if self.split is None:
            raise ValueError(
                f"{self.location}: streaming reads one split at a time (train, validation or test)"
            )
        return self.location.glob(split_shards_glob(self.split))

    def __repr__(self) -> str:
        return f"HubNativeSource({self.location}, split={self.split!r}, {len(self)} clips)"
