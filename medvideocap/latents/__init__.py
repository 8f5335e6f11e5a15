"""The latent cache: its on-disk format, its manifest, and the datasets a trainer reads it through.

Layout::

    DIR/manifest.json                              what produced the cache, and its fingerprint
    DIR/{split}/rank-{R}-shard-{NNNNN}.parquet     one row per clip (FastVideo's columns + ours)
    DIR/meta/dropped-{split}-rank-{R}.jsonl        clips a rank could not encode, with the reason

Why it looks like this:

* The parquet columns are a superset of FastVideo's preprocessed T2V schema, so a FastVideo reader
  (``np.frombuffer(row["vae_latent_bytes"], dtype).reshape(shape)``) reads our rows as they are.
* Everything FastVideo leaves implicit is explicit: latents are stored *raw* (not normalised) and the
  manifest carries the ``latents_mean``/``latents_std`` to apply; ``latent_kind`` says whether
  ``vae_latent_bytes`` holds a posterior sample or the posterior mean (with ``vae_logvar_bytes`` next to
  it); the VAE, text encoder, max length and frame spec are recorded, and their fingerprint lets a trainer
  refuse a cache made by something else instead of training on silent garbage.
* Every rank writes its own files and the readers glob them all, so there is never a merge step.
* Every ``*.parquet`` anywhere under DIR is a latent shard, because that is how the field's readers find
  data: FastVideo's parquet datasets walk the folder they are given and count every ``*.parquet`` row as
  a sample, Ray Data's ``read_parquet`` reads every file it is pointed at. So the drop log is JSON lines
  under ``meta/``, which no parquet reader picks up (older caches kept it as ``rank-R-dropped.parquet``
  in the split folder; resuming moves it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medvideocap.atomic import atomic_path, atomic_write_bytes
from medvideocap.dist import env_rank_world
from medvideocap.loading.sampler import BucketBatchSampler, stable_seed

FORMAT = "medvideocap/latent-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_RE = re.compile(r"^rank-(\d+)-shard-(\d{5})\.parquet$")
META_DIR = "meta"
DROPPED_NAME = "dropped-{split}-rank-{rank}.jsonl"
#: Where medvideocap 0.1 kept the drop log (inside the split folder, where FastVideo and Ray Data read it
#: as a shard); still read for resume, and moved to :func:`dropped_path` by the next run of that rank.
LEGACY_DROPPED_NAME = "rank-{rank}-dropped.parquet"

# Manifest keys that decide what the bytes mean: the fingerprint covers exactly these.
FINGERPRINT_KEYS = (
    "format",
    "format_version",
    "vae_id",
    "vae_subfolder",
    "vae_revision",
    "vae_class",
    "latents_mean",
    "latents_std",
    "normalization",
    "store",
    "frame_spec",
    "text_encoder_id",
    "text_encoder_subfolder",
    "text_encoder_revision",
    "tokenizer_subfolder",
    "max_length",
    "caption",
    "compute_dtype",
    "storage_dtype",
)

# FastVideo's T2V columns first (same names and Arrow types), then ours.
ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("vae_latent_bytes", pa.binary()),
        pa.field("vae_latent_shape", pa.list_(pa.int64())),
        pa.field("vae_latent_dtype", pa.string()),
        pa.field("text_embedding_bytes", pa.binary()),
        pa.field("text_embedding_shape", pa.list_(pa.int64())),
        pa.field("text_embedding_dtype", pa.string()),
        pa.field("text_attention_mask_bytes", pa.binary()),
        pa.field("text_attention_mask_shape", pa.list_(pa.int64())),
        pa.field("text_attention_mask_dtype", pa.string()),
        pa.field("file_name", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("media_type", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("num_frames", pa.int64()),
        pa.field("duration_sec", pa.float64()),
        pa.field("fps", pa.float64()),
        # --- medvideocap additions ---
        pa.field("split", pa.string()),
        pa.field("latent_kind", pa.string()),  # "moments" (bytes = mean, + logvar) | "sample"
        pa.field("vae_logvar_bytes", pa.binary()),  # null unless latent_kind == "moments"
        pa.field("vae_logvar_shape", pa.list_(pa.int64())),
        pa.field("vae_logvar_dtype", pa.string()),
        pa.field("text_len", pa.int64()),  # token count; == text_embedding_shape[0]
        pa.field("frame_timestamps", pa.list_(pa.float64())),  # seconds in the source clip
        pa.field("source_duration_sec", pa.float64()),
        pa.field("fingerprint", pa.string()),
    ]
)
BYTES_COLUMNS = ("vae_latent_bytes", "vae_logvar_bytes", "text_embedding_bytes", "text_attention_mask_bytes")
INDEX_COLUMNS = tuple(n for n in ARROW_SCHEMA.names if n not in BYTES_COLUMNS)
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
ROW_GROUP_BYTES = 4 << 20  # real Wan rows (~20 MB) get a row group each


class FingerprintMismatchError(ValueError):
    """A cache was opened by something expecting a cache made with other models or settings."""


class LatentCacheError(ValueError):
    """A cache folder that is missing, incomplete or internally inconsistent."""


# ----------------------------------------------------------------------------------------------------
# manifest and fingerprint


def canonical_json(obj: Any) -> str:
    """One spelling per value (sorted keys, no spaces), so equal settings hash equally everywhere."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 over the keys that decide what the stored bytes mean (``FINGERPRINT_KEYS``)."""
    missing = [k for k in FINGERPRINT_KEYS if k not in manifest]
    if missing:
        raise LatentCacheError(f"manifest lacks {missing}: cannot fingerprint it")
    return hashlib.sha256(canonical_json({k: manifest[k] for k in FINGERPRINT_KEYS}).encode()).hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` (with its fingerprint), or check an existing one says the same.

    A cache folder holds latents of exactly one configuration: resuming or adding ranks with other
    settings would mix incompatible rows, so that is refused with both fingerprints named.
    """
    manifest = dict(manifest)
    manifest["fingerprint"] = fingerprint(manifest)
    path = Path(root) / MANIFEST_NAME
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != manifest["fingerprint"]:
            diff = sorted(k for k in FINGERPRINT_KEYS if old.get(k) != manifest.get(k))
            raise FingerprintMismatchError(
                f"{path}: existing cache has fingerprint {old.get('fingerprint')}, this run would write "
                f"{manifest['fingerprint']} (differs in {diff}); use another --out folder"
            )
        return old
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise LatentCacheError(
            f"{root}: no {MANIFEST_NAME}; not a latent cache (run `medvideocap encode-latents`)"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise LatentCacheError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise LatentCacheError(
            f"{path}: format_version {manifest.get('format_version')} is newer than this package reads "
            f"({FORMAT_VERSION}); upgrade medvideocap"
        )
    if fingerprint(manifest) != manifest.get("fingerprint"):
        raise LatentCacheError(f"{path}: recorded fingerprint does not match its contents (edited by hand?)")
    return manifest


# ----------------------------------------------------------------------------------------------------
# rows and shards


def array_bytes(array: np.ndarray) -> tuple[bytes, list[int], str]:
    """(bytes, shape, dtype name) in the FastVideo convention: C-order, native little-endian."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes(), [int(s) for s in array.shape], array.dtype.name


def decode_array(buf: Any, shape: Sequence[int], dtype: str, *, where: str = "row") -> np.ndarray:
    """A read-only numpy view of stored bytes (no copy: it shares memory with the Arrow buffer)."""
    arr = np.frombuffer(buf, dtype=np.dtype(dtype))
    expected = math.prod(shape)
    if arr.size != expected:
        raise LatentCacheError(
            f"{where}: {arr.size} {dtype} values stored, shape {list(shape)} needs {expected}"
        )
    return arr.reshape(tuple(shape))


def shard_files(root: Path, split: str) -> list[Path]:
    """All ranks' finished shards of a split, in a fixed order (rank, then shard number)."""
    folder = Path(root) / split
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return [p for _, _, p in sorted(found)]


def cache_splits(root: Path) -> list[str]:
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and shard_files(root, p.name))


class ShardWriter:
    """Buffers rows of one (split, rank) and writes them as numbered parquet shards, atomically.

    Shard numbers continue after the highest already on disk, so a resumed run never overwrites
    finished work; rows still buffered when the process dies are simply encoded again on resume.
    """

    def __init__(self, root: Path, split: str, rank: int, *, rows_per_shard: int = 64):
        self.folder = Path(root) / split
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.rows_per_shard = max(1, rows_per_shard)
        self.rows: list[dict[str, Any]] = []
        numbers = [
            int(m.group(2))
            for p in self.folder.iterdir()
            if (m := SHARD_RE.match(p.name)) and int(m.group(1)) == rank
        ]
        self.next_number = max(numbers, default=-1) + 1
        for stale in self.folder.glob(f".rank-{rank}-shard-*.parquet.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run; its rows are encoded again
        self.written: list[Path] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> Path | None:
        """Write what is buffered (also a last, partial shard) and return its path."""
        if not self.rows:
            return None
        table = pa.Table.from_pylist(self.rows, schema=ARROW_SCHEMA)
        path = self.folder / f"rank-{self.rank}-shard-{self.next_number:05d}.parquet"
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        with atomic_path(path) as tmp:
            pq.write_table(
                table,
                tmp,
                row_group_size=max(1, ROW_GROUP_BYTES // row_bytes),
                # Float latents barely compress; leaving their pages plain makes reading a memcpy.
                compression={n: ("none" if n in BYTES_COLUMNS else "zstd") for n in ARROW_SCHEMA.names},
                use_dictionary=[n for n in ARROW_SCHEMA.names if n not in BYTES_COLUMNS],
                write_statistics=[n for n in ARROW_SCHEMA.names if n not in BYTES_COLUMNS],
            )
        self.written.append(path)
        self.next_number += 1
        self.rows = []
        return path


def dropped_path(root: Path, split: str, rank: int) -> Path:
    """The drop log of one (split, rank): outside the split folder and not parquet (see module doc)."""
    return Path(root) / META_DIR / DROPPED_NAME.format(split=split, rank=rank)


def read_dropped(path: Path) -> list[dict[str, Any]]:
    """Rows of a drop log (``.jsonl``, or a legacy ``rank-R-dropped.parquet``)."""
    path = Path(path)
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LatentCacheError(
                f"{path} line {n}: not JSON ({exc}); delete the line to re-encode it"
            ) from exc
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise LatentCacheError(f"{path} line {n}: expected an object with a string 'id'")
        rows.append(row)
    return rows


def dropped_logs(root: Path, split: str) -> list[Path]:
    """Every rank's drop log of a split, including legacy ones an older version left in the split folder."""
    root = Path(root)
    pattern = DROPPED_NAME.format(split=split, rank="*")
    legacy = LEGACY_DROPPED_NAME.format(rank="*")
    return sorted((root / META_DIR).glob(pattern)) + sorted((root / split).glob(legacy))


def finished_ids(root: Path, split: str) -> set[str]:
    """Ids already in finished shards (any rank) or recorded as dropped: what a resume skips."""
    done: set[str] = set()
    for path in shard_files(root, split):
        done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    for path in dropped_logs(root, split):
        done.update(row["id"] for row in read_dropped(path))
    return done


# ----------------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class RowRef:
    """Where one clip lives: shard file index, row group, row inside that group."""

    file: int
    group: int
    row: int


class LatentCache:
    """An opened cache: manifest, and an index of one split built from the small columns only."""

    def __init__(self, path: str | Path, *, split: str | None = None, expect_fingerprint: str | None = None):
        self.root = Path(path)
        self.manifest = read_manifest(self.root)
        self.fingerprint: str = self.manifest["fingerprint"]
        if expect_fingerprint is not None and expect_fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"{self.root}: latent cache fingerprint is {self.fingerprint}, but {expect_fingerprint} was "
                f"expected (made with vae={self.manifest.get('vae_id')!r}, "
                f"text_encoder={self.manifest.get('text_encoder_id')!r}, store={self.manifest.get('store')!r}); "
                "re-encode with the settings the trainer expects or drop expect_fingerprint"
            )
        self.splits = cache_splits(self.root)
        if split is None:
            if "train" in self.splits or not self.splits:
                split = "train"
            elif len(self.splits) == 1:
                split = self.splits[0]
            else:
                raise LatentCacheError(f"{self.root}: several splits {self.splits}; pass split=")
        self.split = split
        self.files = shard_files(self.root, split)
        if not self.files:
            raise LatentCacheError(
                f"{self.root}: no shards for split {split!r} (splits found: {self.splits})"
            )
        self.refs: list[RowRef] = []
        tables = []
        self._ends: dict[tuple[int, int, str], int] = {}
        for fi, path in enumerate(self.files):
            pf = pq.ParquetFile(path)
            for gi in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(gi).num_rows
                self.refs.extend(RowRef(fi, gi, r) for r in range(n))
            self._ends.update(_direct_value_ends(pf.metadata, fi))
            tables.append(pf.read(columns=list(INDEX_COLUMNS)))
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
        self.latent_shapes: list[tuple[int, ...]] = [tuple(s) for s in self.index["vae_latent_shape"]]
        self.mean = np.asarray(self.manifest["latents_mean"], dtype=np.float32)
        self.std = np.asarray(self.manifest["latents_std"], dtype=np.float32)
        self._files: dict[int, pq.ParquetFile] = {}
        self._fds: dict[int, int] = {}
        self._groups: OrderedDict[tuple[int, int, bool], pa.Table] = OrderedDict()
        self.cache_row_groups = 4

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
            pf = self._files[file] = pq.ParquetFile(self.files[file], pre_buffer=False)
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
        (read-only, shared with a cached row group)."""
        ref = self.refs[i]
        out: dict[str, Any] = {name: self.index[name][i] for name in _ITEM_COLUMNS}
        with_logvar = with_logvar and out["latent_kind"] == "moments"
        names = [("latent", "vae_latent"), ("text", "text_embedding")]
        if with_logvar:
            names.append(("logvar", "vae_logvar"))
        where = f"{self.files[ref.file]} row {ref.row} (id {self.ids[i]!r})"
        direct = {}
        for name, column in names:
            end = self._ends.get((ref.file, ref.group, f"{column}_bytes"))
            dtype = np.dtype(out[f"{column}_dtype"])
            nbytes = math.prod(out[f"{column}_shape"]) * dtype.itemsize
            data = self._read_direct(ref.file, end, nbytes) if end is not None else None
            if data is None:
                break
            direct[name] = decode_array(data, out[f"{column}_shape"], out[f"{column}_dtype"], where=where)
        out["owned"] = len(direct) == len(names)
        if out["owned"]:
            out.update(direct)
            return out
        table = self._group(ref.file, ref.group, with_logvar)
        for name, column in names:
            data, start, length = _value_location(table, f"{column}_bytes", ref.row)
            buf = data.slice(start, length)
            out[name] = decode_array(buf, out[f"{column}_shape"], out[f"{column}_dtype"], where=where)
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


class _ItemMaker:
    """Turns a stored row into a training item (normalise, sample moments) the same way everywhere."""

    def __init__(self, cache: LatentCache, normalize: bool, sample_seed: int, posterior: str):
        self.cache = cache
        self.normalize = normalize
        self.sample_seed = sample_seed
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior must be 'sample' or 'mode', not {posterior!r}")
        self.posterior = posterior
        self.epoch = 0

    def make(self, i: int) -> dict[str, Any]:
        """One item. Arrays read into memory of their own are transformed in place and become the
        tensors (no copy at all); views of shared row groups are copied once, by the math or by hand."""
        import torch

        sample = self.posterior == "sample" and self.cache.index["latent_kind"][i] == "moments"
        raw = self.cache.raw(i, with_logvar=sample)
        owned = raw["owned"]
        stored = raw["latent"]
        mean = self._broadcast(self.cache.mean, stored.ndim)
        if sample:
            logvar = raw["logvar"]
            std = logvar if owned and logvar.dtype == np.float32 else logvar.astype(np.float32)
            np.clip(std, -30.0, 20.0, out=std)
            std *= 0.5
            np.exp(std, out=std)
            g = torch.Generator().manual_seed(stable_seed(self.sample_seed, self.epoch, raw["id"]))
            latent = torch.randn(stored.shape, generator=g).numpy()
            latent *= std
            latent += stored
            if self.normalize:
                latent -= mean
        elif owned and stored.dtype == np.float32:
            latent = stored
            if self.normalize:
                latent -= mean
        elif self.normalize:
            latent = np.subtract(stored, mean, dtype=np.float32)
        else:
            latent = np.array(stored, dtype=np.float32)
        if self.normalize:
            latent /= self._broadcast(self.cache.std, stored.ndim)
        text = raw["text"]
        if not (owned and text.dtype == np.float32):
            text = np.array(text, dtype=np.float32)
        return {
            "latents": torch.from_numpy(latent),
            "prompt_embeds": torch.from_numpy(text),
            "prompt_len": int(raw["text_len"]),
            "id": raw["id"],
            "caption": raw["caption"],
        }

    @staticmethod
    def _broadcast(values: np.ndarray, ndim: int) -> np.ndarray:
        return values.reshape((-1,) + (1,) * (ndim - 1))


def _torch_dataset_bases() -> tuple[type, type]:
    import torch.utils.data as tud

    return tud.Dataset, tud.IterableDataset


_MapBase, _IterBase = _torch_dataset_bases()


class LatentDataset(_MapBase):  # type: ignore[misc,valid-type]
    """Map-style view of a cache split. Shuffling is the sampler's job (``bucket_sampler``)."""

    def __init__(self, cache: LatentCache, *, normalize: bool, sample_seed: int, posterior: str):
        self.cache = cache
        self.maker = _ItemMaker(cache, normalize, sample_seed, posterior)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.cache.manifest

    @property
    def fingerprint(self) -> str:
        return self.cache.fingerprint

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += len(self.cache)
        if not 0 <= i < len(self.cache):
            raise IndexError(f"index {i} out of range for {len(self.cache)} cached clips")
        return self.maker.make(i)

    def set_epoch(self, epoch: int) -> None:
        """Moments are re-sampled per epoch (still deterministic per id and epoch)."""
        self.maker.epoch = epoch

    def bucket_sampler(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> BucketBatchSampler:
        return BucketBatchSampler(
            self.cache.latent_shapes,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )


class StreamingLatentDataset(_IterBase):  # type: ignore[misc,valid-type]
    """Iterable view of a cache split: reads row group by row group, shuffles within a window of row
    groups (so reads stay sequential), shards across ranks and DataLoader workers, and resumes exactly
    from ``state_dict()`` because the order is a pure function of (seed, epoch, rank, worker).

    With ``batch_size`` it yields collated batches whose latents share one shape (bucketing).
    """

    def __init__(
        self,
        cache: LatentCache,
        *,
        normalize: bool,
        sample_seed: int,
        posterior: str,
        shuffle: bool,
        seed: int,
        shuffle_window: int = 4,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
    ):
        self.cache = cache
        self.maker = _ItemMaker(cache, normalize, sample_seed, posterior)
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_window = max(1, shuffle_window)
        self.rank, self.world_size = env_rank_world(rank, world_size)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # items of this epoch's order already consumed by the caller
        self._done_after: list[int] = []  # with batch_size: later items already yielded in a batch
        cache.cache_row_groups = max(cache.cache_row_groups, self.shuffle_window + 1)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.cache.manifest

    @property
    def fingerprint(self) -> str:
        return self.cache.fingerprint

    def _worker(self) -> tuple[int, int]:
        import torch.utils.data as tud

        info = tud.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def order(self) -> list[int]:
        """This rank's and worker's indices for the current epoch, in the order they are yielded."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, ref in enumerate(self.cache.refs):
            groups.setdefault((ref.file, ref.group), []).append(i)
        keys = list(groups)
        rng = random.Random(stable_seed(self.seed, self.epoch))
        if self.shuffle:
            rng.shuffle(keys)
        flat: list[int] = []
        for k in range(0, len(keys), self.shuffle_window):
            window = [i for key in keys[k : k + self.shuffle_window] for i in groups[key]]
            if self.shuffle:
                rng.shuffle(window)
            flat.extend(window)
        # Contiguous slices keep each reader on its own row groups. Every rank gets the same number of
        # items (DDP ranks must stay in step; the few left over differ each epoch as the order does);
        # a rank's DataLoader workers then split its slice without dropping anything.
        per_rank = len(flat) // self.world_size
        mine = flat[self.rank * per_rank : (self.rank + 1) * per_rank]
        worker, num_workers = self._worker()
        return mine[worker * len(mine) // num_workers : (worker + 1) * len(mine) // num_workers]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.maker.epoch = epoch
        self.position = 0

    def __len__(self) -> int:
        return len(self.cache) // self.world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.maker.epoch = self.epoch
        order = self.order()
        if self.batch_size is None:
            for k in range(self.position, len(order)):
                item = self.maker.make(order[k])
                self.position = k + 1
                yield item
                del item  # hold no reference while reading the next row: its buffer can be reused
        else:
            yield from self._bucketed(order)
        self.set_epoch(self.epoch + 1)

    def _bucketed(self, order: list[int]) -> Iterator[dict[str, Any]]:
        # A batch is yielded when its shape's bucket fills. The state is the first index not yet yielded
        # plus the later indices already yielded; on resume the items still waiting in buckets are
        # re-read in their original order, so the buckets (and batches) come out as without the break.
        assert self.batch_size is not None
        shapes = self.cache.latent_shapes
        done = [k < self.position for k in range(len(order))]
        for k in self._done_after:
            done[k] = True
        pending: dict[tuple[int, ...], list[int]] = {}
        for k in range(len(order)):
            if done[k]:
                continue
            bucket = pending.setdefault(shapes[order[k]], [])
            bucket.append(k)
            if len(bucket) == self.batch_size:
                del pending[shapes[order[k]]]
                batch = collate_latents([self.maker.make(order[j]) for j in bucket])
                for j in bucket:
                    done[j] = True
                while self.position < len(order) and done[self.position]:
                    self.position += 1
                self._done_after = [j for j in range(self.position, len(order)) if done[j]]
                yield batch
        for bucket in pending.values():
            if not self.drop_last:
                yield collate_latents([self.maker.make(order[j]) for j in bucket])
        self._done_after = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "done_after": list(self._done_after),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"dataset state was saved with seed {state['seed']}, this dataset has {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self.maker.epoch = self.epoch
        self.position = int(state["position"])
        self._done_after = [int(k) for k in state.get("done_after", [])]


def load_latents(
    path: str | Path,
    *,
    split: str | None = None,
    expect_fingerprint: str | None = None,
    streaming: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    normalize: bool = True,
    sample_seed: int = 0,
    posterior: Literal["sample", "mode"] = "sample",
    rank: int | None = None,
    world_size: int | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
    shuffle_window: int = 4,
) -> LatentDataset | StreamingLatentDataset:
    """Open a latent cache written by ``medvideocap encode-latents`` for training.

    Items: ``latents`` (C, F, h, w) float32 — normalised with the manifest's ``latents_mean``/``latents_std``
    when ``normalize`` and, for a moments cache, drawn from the stored posterior with a generator seeded
    by (``sample_seed``, epoch, id) (``posterior="mode"`` takes the mean instead); ``prompt_embeds`` (L, D)
    unpadded; ``prompt_len``; ``id``; ``caption``.

    ``streaming=False`` gives a map-style dataset (use ``ds.bucket_sampler(...)`` as a DataLoader
    ``batch_sampler`` for shuffling, rank sharding and shape buckets). ``streaming=True`` gives an
    iterable dataset that shuffles with ``seed``, shards over ``rank``/``world_size`` (default from the
    RANK/WORLD_SIZE environment) and DataLoader workers, and has ``state_dict``/``load_state_dict``;
    with ``batch_size`` it yields shape-bucketed, collated batches.
    ``expect_fingerprint`` makes opening a cache made with other models or settings an error.
    """
    cache = LatentCache(path, split=split, expect_fingerprint=expect_fingerprint)
    if not streaming:
        return LatentDataset(cache, normalize=normalize, sample_seed=sample_seed, posterior=posterior)
    return StreamingLatentDataset(
        cache,
        normalize=normalize,
        sample_seed=sample_seed,
        posterior=posterior,
        shuffle=shuffle,
        seed=seed,
        shuffle_window=shuffle_window,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        drop_last=drop_last,
    )


def collate_latents(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack latents; right-pad prompt embeddings with zeros to the longest prompt and give the mask.

    Latents of different shapes cannot share a batch: use the bucket sampler (map-style) or
    ``batch_size=`` (streaming) so each batch holds one shape.
    """
    import torch

    if not items:
        raise ValueError("collate_latents got an empty batch")
    shapes = {tuple(it["latents"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(
            f"latents of different shapes {sorted(shapes)} in one batch (ids {[it['id'] for it in items]}); "
            "batch with the bucket sampler"
        )
    lens = [int(it["prompt_embeds"].shape[0]) for it in items]
    lmax = max(lens)
    dim = int(items[0]["prompt_embeds"].shape[1])
    embeds = torch.zeros(len(items), lmax, dim, dtype=items[0]["prompt_embeds"].dtype)
    mask = torch.zeros(len(items), lmax, dtype=torch.bool)
    for b, (it, n) in enumerate(zip(items, lens, strict=True)):
        embeds[b, :n] = it["prompt_embeds"]
        mask[b, :n] = True
    return {
        "latents": torch.stack([it["latents"] for it in items]),
        "prompt_embeds": embeds,
        "prompt_mask": mask,
        "prompt_len": torch.tensor(lens, dtype=torch.long),
        "id": [it["id"] for it in items],
        "caption": [it["caption"] for it in items],
    }


def row_index(cache: LatentCache) -> dict[str, int]:
    """id -> position in the cache, for looking single clips up."""
    return {cid: i for i, cid in enumerate(cache.ids)}


__all__ = [
    "ARROW_SCHEMA",
    "BucketBatchSampler",
    "FingerprintMismatchError",
    "LatentCache",
    "LatentCacheError",
    "LatentDataset",
    "ShardWriter",
    "StreamingLatentDataset",
    "collate_latents",
    "fingerprint",
    "load_latents",
    "read_manifest",
    "write_manifest",
]
