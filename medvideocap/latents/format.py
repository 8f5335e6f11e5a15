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

Where it lives. ``DIR`` is a local folder or an object-store URL (``s3://bucket/latents``): every
function here takes either (or a :class:`~medvideocap.locations.Location`, :func:`cache_location`) and
goes through the location, so the writer, the resume and the readers are the same code on both. What
changes on object storage: a file is staged locally and published through a temporary key
(:func:`medvideocap.atomic.atomic_output`), so a reader listing ``DIR/train/`` never sees half a shard;
listings are read afresh (no stale cached listing after another process wrote); and a missing bucket or
credentials the store refuses are one :class:`CacheStorageError` naming the URL (:func:`reaching`), with
every secret of the storage options and the environment blanked out of the message.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medvideocap.atomic import atomic_output, atomic_write_to
from medvideocap.errors import DataError
from medvideocap.locations import LOCAL, Location, resolve, resolve_output

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


CacheRoot = str | Path | Location
"""A cache folder: a local path, an object-store URL, or a location."""
ShardPath = Path | str
"""A shard: a local path, or the URL of one in object storage."""


class CacheStorageError(LatentCacheError):
    """Object storage that cannot be reached as asked: the bucket does not exist, the credentials are
    refused, the network fails. Names the URL and never a secret."""


def cache_location(
    root: CacheRoot, *, storage_options: Mapping[str, Any] | None = None, write: bool = False
) -> Location:
    """The location of a cache folder: a path without a scheme is local (a cache is never looked up as
    a Hub repo by its spelling), a URL goes by its scheme; ``write`` refuses read-only schemes
    (:func:`medvideocap.locations.resolve_output`)."""
    if isinstance(root, Location):
        return root
    if write:
        return resolve_output(root, storage_options=storage_options)
    if isinstance(root, Path) or "://" not in str(root):
        return Location(LOCAL, str(Path(root).expanduser()), storage_options)
    return resolve(str(root), storage_options=storage_options)


_SECRET_WORDS = ("secret", "token", "password", "credential", "key", "sas", "signature")


def _blank_secrets(text: str, location: Location) -> str:
    """``text`` with every value that may be a secret (storage options and environment variables whose
    names say key/secret/token/...) replaced by ``***``; the endpoint stays, as it helps to see it."""
    found = [
        str(v)
        for k, v in list(location.storage_options.items()) + list(os.environ.items())
        if any(w in k.lower() for w in _SECRET_WORDS) and "endpoint" not in k.lower() and len(str(v)) >= 4
    ]
    for value in sorted(found, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def storage_message(location: Location, doing: str, exc: BaseException) -> str:
    """One line saying why ``doing`` failed at ``location``: a missing bucket, refused credentials, or the
    store's own words; secrets blanked (:func:`_blank_secrets`)."""
    bucket = f"{location.scheme}://{location.root.split('/', 1)[0]}"
    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, PermissionError):
        reason = (
            f"access denied ({said}); check the credentials (for s3://: AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or --storage-option key=... secret=...) and their "
            f"rights on {bucket}"
        )
    elif isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        reason = f"the bucket {bucket} does not exist ({said}); create it or fix the URL"
    else:
        reason = said
    return _blank_secrets(f"{location.url}: cannot {doing}: {reason}", location)


@contextmanager
def reaching(location: Location, doing: str) -> Iterator[None]:
    """Object-store errors in the block (``OSError``: refused credentials, a missing bucket, the network)
    as one :class:`CacheStorageError` (:func:`storage_message`); data errors and a local folder's errors
    pass through as they are."""
    if location.local is not None:
        yield
        return
    try:
        yield
    except (LatentCacheError, DataError):
        raise
    except OSError as exc:
        raise CacheStorageError(storage_message(location, doing, exc)) from None


def check_reachable(location: Location, doing: str = "write the latent cache") -> None:
    """Fail early, before any model loads, when the bucket of an object-store cache does not exist or
    the credentials are refused (:class:`CacheStorageError`); nothing to do for a local folder."""
    if location.local is not None:
        return
    bucket = location.root.split("/", 1)[0]
    try:
        location.fs.info(f"{location.scheme}://{bucket}")
    except FileNotFoundError as exc:
        raise CacheStorageError(
            _blank_secrets(
                f"{location.url}: cannot {doing}: the bucket {location.scheme}://{bucket} does not exist "
                f"({type(exc).__name__}: {exc}); create it or fix the URL",
                location,
            )
        ) from None
    except OSError as exc:
        raise CacheStorageError(storage_message(location, doing, exc)) from None


def fresh(location: Location) -> Location:
    """``location`` with its filesystem's cached listings dropped (object storage), so a listing shows what
    another process wrote since; returns it for chaining."""
    if location.local is None:
        location.fs.invalidate_cache()
    return location


def open_shard(location: Location, shard: ShardPath) -> str | IO[bytes]:
    """What pyarrow opens a shard from: its path on a local disk, a file object (ranged reads) elsewhere."""
    return str(shard) if location.local is not None else location.open(str(shard))


def reencode_hint(shard: ShardPath) -> str:
    """What to do about a damaged shard, said the same way by every error that names one: shards are
    written whole and renamed into place, so damage came later, and re-encoding is keyed by clip id."""
    shard = Path(shard)
    return (
        f"delete {shard.name} and rerun `medvideocap encode-latents` for split {shard.parent.name!r}: the "
        "clips it held are encoded again (any that still encode to NaN/inf are dropped with the reason), "
        "finished ones are skipped"
    )


@contextmanager
def reading_shard(shard: ShardPath) -> Iterator[None]:
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


def load_manifest_json(path: Path | str, data: bytes | None = None) -> dict[str, Any]:
    """The object in ``path`` (or in ``data``, read from ``path`` elsewhere), refusing what Python's
    ``json`` would let through: ``NaN``/``Infinity`` (json.loads reads them, and the fingerprint, which
    allows none, then failed with a bare ValueError) and anything but an object. Errors name the file and
    :data:`MANIFEST_FIX`."""
    try:
        raw = Path(path).read_bytes() if data is None else data
        manifest = json.loads(raw, parse_constant=_not_a_number)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatentCacheError(f"{path}: not valid JSON ({exc}); {MANIFEST_FIX}") from exc
    except ValueError as exc:
        raise LatentCacheError(f"{path}: {exc}; {MANIFEST_FIX}") from exc
    if not isinstance(manifest, dict):
        raise LatentCacheError(f"{path}: not a JSON object but {type(manifest).__name__}; {MANIFEST_FIX}")
    return manifest


def write_manifest(root: CacheRoot, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` (with its fingerprint), or check an existing one says the same.

    A cache folder holds latents of exactly one configuration: resuming or adding ranks with other
    settings would mix incompatible rows, so that is refused with both fingerprints named.
    """
    manifest = dict(manifest)
    manifest["fingerprint"] = fingerprint(manifest)
    location = fresh(cache_location(root, write=True))
    path = location.path(MANIFEST_NAME)
    with reaching(location, "write the latent cache"):
        if location.exists(path):
            old = load_manifest_json(path, location.read_bytes(path))
        else:
            old = None
            atomic_write_to(location, path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    if old is not None:
        if old.get("fingerprint") != manifest["fingerprint"]:
            keys = FINGERPRINT_KEYS + OPTIONAL_FINGERPRINT_KEYS
            diff = sorted(k for k in keys if old.get(k) != manifest.get(k))
            raise FingerprintMismatchError(
                f"{path}: existing cache has fingerprint {old.get('fingerprint')}, this run would write "
                f"{manifest['fingerprint']} (differs in {diff}); use another --out folder"
            )
        return old
    return manifest


def read_manifest(root: CacheRoot) -> dict[str, Any]:
    location = fresh(cache_location(root))
    path = location.path(MANIFEST_NAME)
    with reaching(location, "read the latent cache"):
        if not location.exists(path):
            check_reachable(location, "read the latent cache")  # a missing bucket says so, not "no manifest"
            raise LatentCacheError(
                f"{location.url}: no {MANIFEST_NAME}; not a latent cache (run `medvideocap encode-latents`)"
            )
        data = location.read_bytes(path)
    manifest = load_manifest_json(path, data)
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


def write_empty_prompt(root: CacheRoot, embedding: np.ndarray, cache_fingerprint: str) -> ShardPath:
    """Store the unpadded ``(L, D)`` embedding of "" (float32) for the cache whose fingerprint is given."""
    from safetensors.numpy import save

    location = cache_location(root, write=True)
    path = location.path(f"{META_DIR}/{EMPTY_PROMPT_NAME}")
    data = save(
        {"embedding": np.ascontiguousarray(embedding, dtype=np.float32)}, {"fingerprint": cache_fingerprint}
    )
    with reaching(location, "write the latent cache"):
        atomic_write_to(location, path, data)
    return Path(path) if location.local is not None else path


def read_empty_prompt(root: CacheRoot, cache_fingerprint: str) -> np.ndarray | None:
    """The stored embedding of "" (:func:`write_empty_prompt`), or None when the cache has none (made
    before it was stored, or by the Ray engine). One stored for another fingerprint is refused."""
    location = fresh(cache_location(root))
    path = location.path(f"{META_DIR}/{EMPTY_PROMPT_NAME}")
    if location.local is not None:
        return _read_empty_prompt(Path(path), path, cache_fingerprint) if Path(path).is_file() else None
    with reaching(location, "read the latent cache"):
        if not location.is_file(path):
            return None
        data = location.read_bytes(path)
    with tempfile.TemporaryDirectory(prefix="medvideocap-") as staging:  # safetensors opens files only
        local = Path(staging) / EMPTY_PROMPT_NAME
        local.write_bytes(data)
        return _read_empty_prompt(local, path, cache_fingerprint)


def _read_empty_prompt(local: Path, path: str, cache_fingerprint: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(local), framework="numpy") as f:
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


def shard_files(root: CacheRoot, split: str) -> list[ShardPath]:
    """All ranks' finished shards of a split, in a fixed order (rank, then shard number): paths in a
    local folder, URLs in object storage."""
    location = cache_location(root)
    local = location.local
    if local is not None:
        folder = local / split
        names: list[ShardPath] = list(folder.iterdir()) if folder.is_dir() else []
    else:
        with reaching(fresh(location), "list the latent cache"):
            names = list(location.glob(f"{split}/rank-*-shard-*.parquet"))
    found = []
    for p in names:
        m = SHARD_RE.match(_name(p))
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return [p for _, _, p in sorted(found, key=lambda f: f[:2])]


def _name(path: ShardPath) -> str:
    return path.name if isinstance(path, Path) else path.rpartition("/")[2]


def cache_splits(root: CacheRoot) -> list[str]:
    location = cache_location(root)
    local = location.local
    if local is not None:
        return sorted(p.name for p in local.iterdir() if p.is_dir() and shard_files(local, p.name))
    with reaching(fresh(location), "list the latent cache"):
        shards = location.glob("*/rank-*-shard-*.parquet")
    return sorted({location.relative(p).split("/")[0] for p in shards if SHARD_RE.match(_name(p))})


FLUSH_SECONDS = 300.0
"""Longest a finished row waits in memory before its shard is written (``--flush-seconds``)."""


class ShardWriter:
    """Buffers rows of one (split, rank) and writes them as numbered parquet shards, atomically.

    Shard numbers continue after the highest already written, so a resumed run never overwrites
    finished work; rows still buffered when the process dies are simply encoded again on resume.

    A shard is written when ``rows_per_shard`` rows are buffered, or when the oldest buffered row has
    waited ``flush_seconds`` (by ``clock``): at real sizes a clip takes minutes, and a run killed before
    its 64th clip used to keep nothing. Time-flushed shards are smaller; readers do not care.
    """

    def __init__(
        self,
        root: CacheRoot,
        split: str,
        rank: int,
        *,
        rows_per_shard: int = 64,
        flush_seconds: float | None = FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.location = fresh(cache_location(root, write=True))
        self.split = split
        self.rank = rank
        self.rows_per_shard = max(1, rows_per_shard)
        self.flush_seconds = flush_seconds
        self.clock = clock
        self._oldest: float | None = None
        self.rows: list[dict[str, Any]] = []
        local = self.location.local
        if local is not None:
            self.folder: ShardPath = local / split
            local.joinpath(split).mkdir(parents=True, exist_ok=True)
        else:
            self.folder = self.location.path(split)
        numbers = [
            int(m.group(2))
            for p in shard_files(self.location, split)
            if (m := SHARD_RE.match(_name(p))) and int(m.group(1)) == rank
        ]
        self.next_number = max(numbers, default=-1) + 1
        self._remove_stale()
        self.written: list[ShardPath] = []

    def _remove_stale(self) -> None:
        """Temporary files a killed run of this rank left (its rows are encoded again)."""
        pattern = f".rank-{self.rank}-shard-*.parquet.tmp-*"
        local = self.location.local
        if local is not None:
            for stale in (local / self.split).glob(pattern):
                stale.unlink(missing_ok=True)
            return
        with reaching(self.location, "write the latent cache"):
            for url in self.location.glob(f"{self.split}/{pattern}"):
                with suppress(FileNotFoundError):
                    self.location.fs.rm(url)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._oldest is None:
            self._oldest = self.clock()
        if len(self.rows) >= self.rows_per_shard or self.due():
            self.flush()

    def due(self) -> bool:
        """Whether the oldest buffered row has waited ``flush_seconds``."""
        return (
            self.flush_seconds is not None
            and self._oldest is not None
            and self.clock() - self._oldest >= self.flush_seconds
        )

    def flush(self) -> ShardPath | None:
        """Write what is buffered (also a last, partial shard) and return its path."""
        if not self.rows:
            return None
        table = pa.Table.from_pylist(self.rows, schema=ARROW_SCHEMA)
        name = f"rank-{self.rank}-shard-{self.next_number:05d}.parquet"
        path: ShardPath = self.location.path(f"{self.split}/{name}")
        if self.location.local is not None:
            path = Path(path)
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        with reaching(self.location, "write the latent cache"), atomic_output(self.location, path) as tmp:
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
        self._oldest = None
        return path
