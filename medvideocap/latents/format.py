"""The latent cache's on-disk format: parquet schema, manifest and fingerprint, array codec, shard files.

The readers are :mod:`medvideocap.latents.reader` (rows) and :mod:`medvideocap.latents.datasets` (torch).

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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medvideocap.atomic import atomic_path, atomic_write_bytes

FORMAT = "medvideocap/latent-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_RE = re.compile(r"^rank-(\d+)-shard-(\d{5})\.parquet$")
META_DIR = "meta"

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
