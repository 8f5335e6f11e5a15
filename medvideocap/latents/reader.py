"""Reading a latent cache: the index of one split and the bytes of one row, with as few copies as possible.

Kept apart from the torch datasets so tools that only inspect rows (benchmarks, validation, FastVideo
interop checks) read the cache without torch.

A cache in object storage (``s3://bucket/latents``) is read through its location: the index from the
small columns of each shard (ranged reads of a file object), and a row the way a local one is, from the
byte offsets in the parquet footer: one ranged GET per row, spanning its latent, its embedding and (when
asked) its log-variance, never the whole shard.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medvideocap.latents.format import (
    BYTES_COLUMNS,
    INDEX_COLUMNS,
    CacheRoot,
    FingerprintMismatchError,
    LatentCacheError,
    LatentRowError,
    cache_location,
    cache_splits,
    check_row_arrays,
    decode_array,
    open_shard,
    reaching,
    read_manifest,
    reading_shard,
    reencode_hint,
    shard_files,
    stored_layout,
)

_ITEM_COLUMNS = (
    "id",
    "caption",
    "latent_kind",
    "text_len",
    "vae_latent_shape",
    "vae_latent_dtype",
    "vae_logvar_shape",
    "vae_logvar_dtype",
    "text_embedding_shape",
    "text_embedding_dtype",
)


@dataclass(frozen=True)
class RowRef:
    """Where one clip lives: shard file index, row group, row inside that group."""

    file: int
    group: int
    row: int


class LatentCache:
    """An opened cache: manifest, and an index of one split built from the small columns only.

    ``path`` is a local folder or an object-store URL (``storage_options`` reach its filesystem: endpoint,
    credentials; else the backend's environment, ``AWS_*`` for s3)."""

    def __init__(
        self,
        path: CacheRoot,
        *,
        split: str | None = None,
        expect_fingerprint: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ):
        self.location = cache_location(path, storage_options=storage_options)
        self.root: Path | str = self.location.local or self.location.url
        self.manifest = read_manifest(self.location)
        self.fingerprint: str = self.manifest["fingerprint"]
        if expect_fingerprint is not None and expect_fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"{self.root}: latent cache fingerprint is {self.fingerprint}, but {expect_fingerprint} was "
                f"expected (made with vae={self.manifest.get('vae_id')!r}, "
                f"text_encoder={self.manifest.get('text_encoder_id')!r}, store={self.manifest.get('store')!r}); "
                "re-encode with the settings the trainer expects or drop expect_fingerprint"
            )
        self.splits = cache_splits(self.location)
        if split is None:
            if "train" in self.splits or not self.splits:
                split = "train"
            elif len(self.splits) == 1:
                split = self.splits[0]
            else:
                raise LatentCacheError(f"{self.root}: several splits {self.splits}; pass split=")
        self.split = split
        self.files = shard_files(self.location, split)
        if not self.files:
            raise LatentCacheError(
                f"{self.root}: no shards for split {split!r} (splits found: {self.splits})"
            )
        self.refs: list[RowRef] = []
        tables = []
        self._ends: dict[tuple[int, int, str], int] = {}
        for fi, path in enumerate(self.files):
            with reading_shard(path), reaching(self.location, "read the latent cache"):
                pf = pq.ParquetFile(open_shard(self.location, path))
                tables.append(pf.read(columns=list(INDEX_COLUMNS)))
            for gi in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(gi).num_rows
                self.refs.extend(RowRef(fi, gi, r) for r in range(n))
            self._ends.update(_direct_value_ends(pf.metadata, fi))
        # Everything but the bytes, as Arrow (cheap to hold and to share with forked workers); the few
        # columns every item needs are also kept as Python lists.
        self.table: pa.Table = pa.concat_tables(tables)
        self.index: dict[str, list[Any]] = {n: self.table.column(n).to_pylist() for n in _ITEM_COLUMNS}
        self.ids: list[str] = self.index["id"]
        seen: set[str] = set()
        for i, cid in enumerate(self.ids):
            if cid in seen:
                raise LatentCacheError(
                    f"{self.files[self.refs[i].file]}: clip id {cid!r} appears twice in the cache"
                )
            seen.add(cid)
        stray = set(self.table.column("fingerprint").unique().to_pylist()) - {self.fingerprint}
        if stray:
            raise FingerprintMismatchError(
                f"{self.root}/{split}: rows with fingerprints {sorted(map(str, stray))} != manifest {self.fingerprint}"
            )
        shapes = self.index["vae_latent_shape"]
        if None in shapes:  # the bucket sampler needs every shape before any row is read
            shard = self.files[self.refs[shapes.index(None)].file]
            raise LatentRowError(
                f"{shard}: the row of clip {self.ids[shapes.index(None)]!r} has no vae_latent_shape; "
                f"{reencode_hint(shard)}"
            )
        self.latent_shapes: list[tuple[int, ...]] = [tuple(s) for s in shapes]
        self.mean = np.asarray(self.manifest["latents_mean"], dtype=np.float32)
        self.std = np.asarray(self.manifest["latents_std"], dtype=np.float32)
        self.channels = len(self.mean)
        self._files: dict[int, pq.ParquetFile] = {}
        self._fds: dict[int, int] = {}
        self._groups: OrderedDict[tuple[int, int, bool], pa.Table] = OrderedDict()
        self.cache_row_groups = 4
        # Rows (with and without their log-variance) whose values were found finite in this process: that
        # pass costs about as much as reading the row, so a run pays it in its first epoch only.
        self._finite = np.zeros((len(self.refs), 2), dtype=bool)

    def __len__(self) -> int:
        return len(self.refs)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy without open file handles or cached row groups.
        state = self.__dict__.copy()
        state["_files"] = {}
        state["_fds"] = {}
        state["_groups"] = OrderedDict()
        return state

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._files = {}
        self._groups = OrderedDict()

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def _read_span(self, file: int, spans: list[tuple[int, int]]) -> list[np.ndarray] | None:
        """Values ``(end, nbytes)`` of one shard in object storage, with one ranged read from the first
        value's length prefix to the last value's end (the columns between, a row's small ones, ride
        along); each value copied into memory of its own. None when a length prefix does not match."""
        first = min(end - nbytes - 4 for end, nbytes in spans)
        last = max(end for end, _ in spans)
        data = self.location.pread(str(self.files[file]), first, last - first)
        out = []
        for end, nbytes in spans:
            at = end - nbytes - first
            if int.from_bytes(data[at - 4 : at], "little") != nbytes:
                return None
            value = np.empty(nbytes, dtype=np.uint8)
            value[:] = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=at)
            out.append(value)
        return out

    def _read_direct(self, file: int, end: int, nbytes: int) -> np.ndarray | None:
        """One value straight from the file into fresh memory: the bytes are the last ``nbytes`` of
        their column chunk, preceded by their PLAIN length prefix (checked, so a file laid out any
        other way falls back to pyarrow)."""
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(self.files[file], os.O_RDONLY)
        prefix = bytearray(4)
        out = np.empty(nbytes, dtype=np.uint8)
        got = os.preadv(fd, [prefix, out.data], end - nbytes - 4)
        if got != nbytes + 4 or int.from_bytes(prefix, "little") != nbytes:
            return None
        return out

    def _group(self, file: int, group: int, with_logvar: bool) -> pa.Table:
        key = (file, group, with_logvar)
        table = self._groups.get(key)
        if table is not None:
            self._groups.move_to_end(key)
            return table
        pf = self._files.get(file)
        if pf is None:
            # pre_buffer=False: no read-ahead staging copy of the column chunks
            source = open_shard(self.location, self.files[file])
            pf = self._files[file] = pq.ParquetFile(source, pre_buffer=False)
        columns = ["vae_latent_bytes", "text_embedding_bytes"] + (["vae_logvar_bytes"] if with_logvar else [])
        # use_threads=False: a row group is a few large values; a thread pool per read only adds
        # contention with the DataLoader's own workers.
        table = pf.read_row_group(group, columns=columns, use_threads=False)
        self._groups[key] = table
        while len(self._groups) > self.cache_row_groups:
            self._groups.popitem(last=False)
        return table

    def raw(self, i: int, *, with_logvar: bool = True) -> dict[str, Any]:
        """Row ``i``'s tensors as numpy arrays plus the small columns.

        One-row groups of uncompressed PLAIN bytes (what ``ShardWriter`` writes for real Wan rows) are
        read with one ``preadv`` each into memory of their own (``owned``: the caller may write to it
        and hand it out as a tensor); anything else is read by pyarrow and viewed without a copy
        (read-only, shared with a cached row group).

        Every row is checked before it is handed out (:func:`~medvideocap.latents.format.check_row_arrays`:
        shapes against each other and the manifest, NaN/inf): a bad row is a :class:`LatentRowError`
        naming the shard, the row and the clip id, where it used to become a broadcasting error in the
        loader or, worse, ``loss nan`` for the rest of a run."""
        ref = self.refs[i]
        shard = self.files[ref.file]
        where = f"{shard} row group {ref.group} row {ref.row} (id {self.ids[i]!r})"
        try:
            with reaching(self.location, "read the latent cache"):
                return self._raw(i, ref, with_logvar, where)
        except LatentRowError as exc:
            raise LatentRowError(f"{exc}; {reencode_hint(shard)}") from None

    def _raw(self, i: int, ref: RowRef, with_logvar: bool, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {name: self.index[name][i] for name in _ITEM_COLUMNS}
        with_logvar = with_logvar and out["latent_kind"] == "moments"
        names = [("latent", "vae_latent"), ("text", "text_embedding")]
        if with_logvar:
            names.append(("logvar", "vae_logvar"))
        layouts = {
            column: stored_layout(out[f"{column}_shape"], out[f"{column}_dtype"], where=f"{where}, {column}")
            for _, column in names
        }
        direct = {}
        ends = [self._ends.get((ref.file, ref.group, f"{column}_bytes")) for _, column in names]
        sizes = [math.prod(layouts[column][0]) * layouts[column][1].itemsize for _, column in names]
        values: list[np.ndarray | None] = [None] * len(names)
        if self.location.local is None and all(e is not None for e in ends):
            spans = [(int(e), n) for e, n in zip(ends, sizes, strict=True) if e is not None]
            values = list(self._read_span(ref.file, spans) or values)
        for k, (name, column) in enumerate(names):
            end = ends[k]
            data = values[k]
            if data is None and end is not None and self.location.local is not None:
                data = self._read_direct(ref.file, end, sizes[k])
            if data is None:
                break
            shape, dtype = layouts[column]
            direct[name] = decode_array(data, shape, dtype, where=f"{where}, {column}")
        out["owned"] = len(direct) == len(names)
        if out["owned"]:
            out.update(direct)
        else:
            with reading_shard(self.files[ref.file]), reaching(self.location, "read the latent cache"):
                table = self._group(ref.file, ref.group, with_logvar)
            for name, column in names:
                data, start, length = _value_location(table, f"{column}_bytes", ref.row)
                shape, dtype = layouts[column]
                out[name] = decode_array(data.slice(start, length), shape, dtype, where=f"{where}, {column}")
        arrays = {column: out[name] for name, column in names}
        known = bool(self._finite[i, int(with_logvar)])
        check_row_arrays(
            arrays, text_len=out["text_len"], channels=self.channels, where=where, finite=not known
        )
        self._finite[i, int(with_logvar)] = True
        return out


def _direct_value_ends(metadata: pq.FileMetaData, file: int) -> dict[tuple[int, int, str], int]:
    """(file, row group, column) -> end offset of the column chunk, for chunks whose one value can be
    read straight from the file: one row, uncompressed, PLAIN, no dictionary page."""
    ends = {}
    for gi in range(metadata.num_row_groups):
        rg = metadata.row_group(gi)
        if rg.num_rows != 1:
            continue
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema not in BYTES_COLUMNS or col.compression != "UNCOMPRESSED":
                continue
            if col.has_dictionary_page or any("DICTIONARY" in e for e in col.encodings):
                continue
            ends[(file, gi, col.path_in_schema)] = col.data_page_offset + col.total_compressed_size
    return ends


def _value_location(table: pa.Table, column: str, row: int) -> tuple[pa.Buffer, int, int]:
    """(data buffer, byte offset, byte length) of one binary value, found without copying anything.

    (``chunk[row].as_buffer()`` copies the value, and ``combine_chunks`` copies whole columns.)"""
    for chunk in table.column(column).chunks:
        if row < len(chunk):
            _, offsets, data = chunk.buffers()
            wide = pa.types.is_large_binary(chunk.type)
            start, end = np.frombuffer(
                offsets,
                dtype=np.int64 if wide else np.int32,
                count=2,
                offset=(chunk.offset + row) * (8 if wide else 4),
            )
            return data, int(start), int(end - start)
        row -= len(chunk)
    raise IndexError(f"row {row} past the end of column {column}")


def row_index(cache: LatentCache) -> dict[str, int]:
    """id -> position in the cache, for looking single clips up."""
    return {cid: i for i, cid in enumerate(cache.ids)}
