"""The latent cache's on-disk format: parquet schema, manifest and fingerprint, array codec, shard files.

The readers are :mod:`medvideocap.latents.reader` (rows) and :mod:`medvideocap.latents.datasets` (torch).

Layout::

    DIR/manifest.json                              what produced the cache, and its fingerprint
    DIR/{split}/rank-{R}-shard-{NNNNN}.parquet     one row per clip (FastVideo's columns + ours)
    DIR/meta/dropped-{split}-rank-{R}.jsonl        clips a rank could not encode, with the reason
    DIR/meta/empty-prompt.safetensors              the text encoder's embedding of "" (caption dropout)

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
* The embedding of the empty prompt is stored beside the rows (``meta/empty-prompt.safetensors``, tagged
  with the cache's fingerprint): a trainer with caption dropout needs exactly that one embedding, and
  without it would load the 11 GB text encoder to compute it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medvideocap.atomic import atomic_path, atomic_write_bytes
from medvideocap.errors import DataError

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
#: Fingerprinted when present. ``text_encoder_dtype`` is written only when it differs from
#: ``compute_dtype`` (the VAE's), so caches made when one dtype ran both keep their fingerprint.
OPTIONAL_FINGERPRINT_KEYS = ("text_encoder_dtype",)
EMPTY_PROMPT_NAME = "empty-prompt.safetensors"

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


class LatentRowError(LatentCacheError, DataError):
    """One row of a cache holds arrays no trainer can use: a dtype that is not a number, a shape that does
    not fit its bytes or the manifest, NaN or infinite values. Names the shard, the row and its clip id.

    A :class:`~medvideocap.errors.DataError` (one clip's data is the cause, the other rows read fine) and a
    :class:`LatentCacheError` (what the train command reports as a cache problem, without a traceback)."""


def reencode_hint(shard: Path) -> str:
    """What to do about a damaged shard, said the same way by every error that names one: shards are
    written whole and renamed into place, so damage came later, and re-encoding is keyed by clip id."""
    shard = Path(shard)
    return (
        f"delete {shard.name} and rerun `medvideocap encode-latents` for split {shard.parent.name!r}: the "
        "clips it held are encoded again (any that still encode to NaN/inf are dropped with the reason), "
        "finished ones are skipped"
    )


@contextmanager
def reading_shard(shard: Path) -> Iterator[None]:
    """pyarrow's errors about a shard it cannot read (cut short, damaged, not one of ours) as one
    :class:`LatentCacheError` naming the file and the fix, instead of "Parquet magic bytes not found"."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise LatentCacheError(
            f"{shard}: not a readable latent shard ({type(exc).__name__}: {exc}); {reencode_hint(shard)}"
        ) from exc


# ----------------------------------------------------------------------------------------------------
# manifest and fingerprint


def canonical_json(obj: Any) -> str:
    """One spelling per value (sorted keys, no spaces), so equal settings hash equally everywhere."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 over the keys that decide what the stored bytes mean (``FINGERPRINT_KEYS``, and those of
    ``OPTIONAL_FINGERPRINT_KEYS`` the manifest has)."""
    missing = [k for k in FINGERPRINT_KEYS if k not in manifest]
    if missing:
        raise LatentCacheError(f"manifest lacks {missing}: cannot fingerprint it")
    keys = FINGERPRINT_KEYS + tuple(k for k in OPTIONAL_FINGERPRINT_KEYS if k in manifest)
    return hashlib.sha256(canonical_json({k: manifest[k] for k in keys}).encode()).hexdigest()


def text_encoder_dtype(manifest: dict[str, Any]) -> str | None:
    """The dtype the cache's captions were embedded in (``compute_dtype`` unless recorded apart)."""
    value = manifest.get("text_encoder_dtype", manifest.get("compute_dtype"))
    return str(value) if value is not None else None


#: What to do about a manifest that cannot be read, said by every error that names one.
MANIFEST_FIX = (
    "restore it from a copy, or delete it and rerun `medvideocap encode-latents` with the settings that made "
    "this cache (they write the same manifest again, and the finished shards are kept)"
)


def _not_a_number(name: str) -> Any:
    raise ValueError(f"holds {name}, which JSON does not allow and no manifest encode-latents writes holds")


def load_manifest_json(path: Path) -> dict[str, Any]:
    """The object in ``path``, refusing what Python's ``json`` would let through: ``NaN``/``Infinity``
    (json.loads reads them, and the fingerprint, which allows none, then failed with a bare ValueError)
    and anything but an object. Errors name the file and :data:`MANIFEST_FIX`."""
    try:
        manifest = json.loads(Path(path).read_bytes(), parse_constant=_not_a_number)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatentCacheError(f"{path}: not valid JSON ({exc}); {MANIFEST_FIX}") from exc
    except ValueError as exc:
        raise LatentCacheError(f"{path}: {exc}; {MANIFEST_FIX}") from exc
    if not isinstance(manifest, dict):
        raise LatentCacheError(f"{path}: not a JSON object but {type(manifest).__name__}; {MANIFEST_FIX}")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` (with its fingerprint), or check an existing one says the same.

    A cache folder holds latents of exactly one configuration: resuming or adding ranks with other
    settings would mix incompatible rows, so that is refused with both fingerprints named.
    """
    manifest = dict(manifest)
    manifest["fingerprint"] = fingerprint(manifest)
    path = Path(root) / MANIFEST_NAME
    if path.exists():
        old = load_manifest_json(path)
        if old.get("fingerprint") != manifest["fingerprint"]:
            keys = FINGERPRINT_KEYS + OPTIONAL_FINGERPRINT_KEYS
            diff = sorted(k for k in keys if old.get(k) != manifest.get(k))
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
    manifest = load_manifest_json(path)
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


def write_empty_prompt(root: Path, embedding: np.ndarray, cache_fingerprint: str) -> Path:
    """Store the unpadded ``(L, D)`` embedding of "" (float32) for the cache whose fingerprint is given."""
    from safetensors.numpy import save

    path = Path(root) / META_DIR / EMPTY_PROMPT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save(
        {"embedding": np.ascontiguousarray(embedding, dtype=np.float32)}, {"fingerprint": cache_fingerprint}
    )
    atomic_write_bytes(path, data)
    return path


def read_empty_prompt(root: Path, cache_fingerprint: str) -> np.ndarray | None:
    """The stored embedding of "" (:func:`write_empty_prompt`), or None when the cache has none (made
    before it was stored, or by the Ray engine). One stored for another fingerprint is refused."""
    from safetensors import safe_open

    path = Path(root) / META_DIR / EMPTY_PROMPT_NAME
    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as f:
        stored = (f.metadata() or {}).get("fingerprint")
        if stored != cache_fingerprint:
            raise LatentCacheError(
                f"{path}: stored for the cache with fingerprint {stored}, this cache's is {cache_fingerprint}; "
                "delete it and rerun encode-latents on this folder to store it again"
            )
        embedding: np.ndarray = f.get_tensor("embedding")
    return embedding


# ----------------------------------------------------------------------------------------------------
# rows and shards


def array_bytes(array: np.ndarray) -> tuple[bytes, list[int], str]:
    """(bytes, shape, dtype name) in the FastVideo convention: C-order, native little-endian."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes(), [int(s) for s in array.shape], array.dtype.name


#: numpy dtype kinds a stored array may have: floats (latents, embeddings), bools (the mask), integers.
ARRAY_KINDS = "fiub"


def stored_layout(shape: Any, dtype: Any, *, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """A row's ``*_shape`` and ``*_dtype`` columns as (shape, numpy dtype), or :class:`LatentRowError`.

    Checked before any byte is read: ``np.frombuffer`` refuses ``object`` with a bare ValueError, an
    unknown name is a TypeError, and a null shape fails inside ``math.prod``."""
    try:
        dt = np.dtype(dtype) if isinstance(dtype, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in ARRAY_KINDS:
        raise LatentRowError(f"{where}: dtype {dtype!r} is not a numeric array dtype")
    if not isinstance(shape, Sequence) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise LatentRowError(f"{where}: shape {shape!r} is not a list of sizes")
    return tuple(shape), dt


def decode_array(buf: Any, shape: Sequence[int], dtype: str | np.dtype, *, where: str = "row") -> np.ndarray:
    """A read-only numpy view of stored bytes (no copy: it shares memory with the Arrow buffer)."""
    arr = np.frombuffer(buf, dtype=np.dtype(dtype))
    expected = math.prod(shape)
    if arr.size != expected:
        raise LatentRowError(
            f"{where}: {arr.size} {dtype} values stored, shape {list(shape)} needs {expected}"
        )
    return arr.reshape(tuple(shape))


def count_nonfinite(array: np.ndarray) -> int:
    """How many values of ``array`` are NaN or infinite; integer and bool arrays have none.

    One vectorised pass (``np.isfinite`` measured faster than a float sum on rows just read, and it is
    exact); the reader pays it once per row and process (:meth:`LatentCache.raw`)."""
    if array.dtype.kind != "f":
        return 0
    finite = np.isfinite(array)
    return 0 if finite.all() else int(finite.size - np.count_nonzero(finite))


def nonfinite_summary(arrays: Mapping[str, np.ndarray]) -> str | None:
    """None when every value of every array is finite, else which arrays hold NaN/inf and how many: the
    wording shared by the encoder's drop reason and the reader's error."""
    counts = {name: count_nonfinite(a) for name, a in arrays.items()}
    parts = [
        f"{name} has {n} of {arrays[name].size} values NaN or infinite" for name, n in counts.items() if n
    ]
    return "; ".join(parts) or None


def check_row_arrays(
    arrays: Mapping[str, np.ndarray], *, text_len: int | None, channels: int, where: str, finite: bool = True
) -> None:
    """Refuse a decoded row (``vae_latent``, ``text_embedding``, optional ``vae_logvar``) that no trainer
    can use, with :class:`LatentRowError` naming ``where``.

    Catches what the byte count cannot: a shape permuted or rewritten with the same number of values
    (the latent must be (channels, frames, height, width) with the manifest's channel count, the
    log-variance the latent's shape, the embedding (text_len, dim)), and NaN/inf, which would otherwise
    train every later step on ``loss nan``. All index comparisons, plus :func:`count_nonfinite` unless
    ``finite`` is False (a row already found finite)."""
    latent, text, logvar = arrays["vae_latent"], arrays["text_embedding"], arrays.get("vae_logvar")
    problem = None
    if latent.ndim != 4 or latent.shape[0] != channels:
        problem = (
            f"vae_latent has shape {list(latent.shape)}, but latents are (channels, frames, height, width) "
            f"with the manifest's {channels} channels: the shape was permuted or damaged"
        )
    elif logvar is not None and logvar.shape != latent.shape:
        problem = (
            f"vae_logvar has shape {list(logvar.shape)}, vae_latent {list(latent.shape)}: they must match"
        )
    elif text.ndim != 2 or (text_len is not None and text.shape[0] != text_len):
        problem = (
            f"text_embedding has shape {list(text.shape)}, but it is (text_len, dim) with text_len {text_len}: "
            "the shape was permuted or damaged"
        )
    elif finite and (summary := nonfinite_summary(arrays)):
        problem = f"non-finite values: {summary}"
    if problem:
        raise LatentRowError(f"{where}: {problem}")


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
