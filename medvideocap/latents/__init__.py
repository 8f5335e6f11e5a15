"""The latent cache: its on-disk format, its manifest, and the datasets a trainer reads it through.

The code lives in submodules that follow the data flow: :mod:`~medvideocap.latents.format` (schema,
manifest, fingerprint, shards, writer), :mod:`~medvideocap.latents.dropped` (the drop log),
:mod:`~medvideocap.latents.reader` (rows) and :mod:`~medvideocap.latents.datasets` (torch datasets);
:mod:`~medvideocap.latents.encode` writes caches. This module re-exports their public names, those
whose module imports torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medvideocap.latents.dropped import (
    DROPPED_NAME,
    LEGACY_DROPPED_NAME,
    dropped_logs,
    dropped_path,
    finished_ids,
    read_dropped,
)
from medvideocap.latents.format import (
    ARROW_SCHEMA,
    BYTES_COLUMNS,
    FINGERPRINT_KEYS,
    FORMAT,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    MANIFEST_NAME,
    META_DIR,
    ROW_GROUP_BYTES,
    SHARD_RE,
    CacheStorageError,
    FingerprintMismatchError,
    LatentCacheError,
    LatentRowError,
    ShardWriter,
    array_bytes,
    cache_location,
    cache_splits,
    canonical_json,
    decode_array,
    fingerprint,
    read_manifest,
    shard_files,
    write_manifest,
)
from medvideocap.latents.reader import LatentCache, RowRef, row_index

if TYPE_CHECKING:
    from medvideocap.latents.datasets import (
        LatentDataset,
        StreamingLatentDataset,
        collate_latents,
        load_latents,
        sample_moments,
    )
    from medvideocap.loading.sampler import BucketBatchSampler

# Names whose modules import torch: resolved on first use, so reading a manifest or the rows (the CLI's
# error types, benchmarks, validation) does not pay torch's import.
_LAZY = {
    "LatentDataset": "medvideocap.latents.datasets",
    "StreamingLatentDataset": "medvideocap.latents.datasets",
    "collate_latents": "medvideocap.latents.datasets",
    "load_latents": "medvideocap.latents.datasets",
    "sample_moments": "medvideocap.latents.datasets",
    "BucketBatchSampler": "medvideocap.loading.sampler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ARROW_SCHEMA",
    "BYTES_COLUMNS",
    "DROPPED_NAME",
    "FINGERPRINT_KEYS",
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_COLUMNS",
    "LEGACY_DROPPED_NAME",
    "MANIFEST_NAME",
    "META_DIR",
    "ROW_GROUP_BYTES",
    "SHARD_RE",
    "BucketBatchSampler",
    "CacheStorageError",
    "FingerprintMismatchError",
    "LatentCache",
    "LatentCacheError",
    "LatentDataset",
    "LatentRowError",
    "RowRef",
    "ShardWriter",
    "StreamingLatentDataset",
    "array_bytes",
    "cache_location",
    "cache_splits",
    "canonical_json",
    "collate_latents",
    "decode_array",
    "dropped_logs",
    "dropped_path",
    "finished_ids",
    "fingerprint",
    "load_latents",
    "read_dropped",
    "read_manifest",
    "sample_moments",
    "row_index",
    "shard_files",
    "write_manifest",
]
