"""Batches of equal shape from a dataset of mixed shapes (FrameSpec buckets).

A video batch must share (frames, height, width). With buckets, which bucket a clip lands in depends
only on its metadata (size, frame count, fps), so the map-style sampler groups indices up front without
decoding anything; the streaming helper groups items as they arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from medvideocap.loader import ClipDataset, collate, env_rank_world


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose items all have the same output shape.

    Per epoch (``set_epoch``) indices are shuffled within each bucket, cut into batches, and the
    batches shuffled together, so consecutive steps mix buckets. Across ranks each rank takes every
    ``world_size``-th batch; the batch list is padded by wrapping around (or trimmed with
    ``drop_last``) so every rank runs the same number of steps - DDP hangs otherwise.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = env_rank_world(rank, world_size)
        self.epoch = 0
        buckets: dict[tuple[int, int, int], list[int]] = {}
        for i in range(len(dataset)):
            buckets.setdefault(dataset.target_shape(i), []).append(i)
        self.buckets = dict(sorted(buckets.items()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[list[int]] = []
        for indices in self.buckets.values():
            order = [indices[i] for i in rng.permutation(len(indices))] if self.shuffle else list(indices)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        extra = len(batches) % self.world_size
        if extra:
            if self.drop_last:
                batches = batches[: len(batches) - extra]
            else:
                batches += batches[: self.world_size - extra]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def bucket_batches(
    items: Iterable[dict | None], batch_size: int, *, drop_last: bool = False
) -> Iterator[dict[str, Any]]:
    """Collated batches from a stream of items of mixed shapes (e.g. a streaming dataset with buckets):
    an item waits in its shape's bucket until the bucket holds ``batch_size``; leftovers come last
    unless ``drop_last``."""
    pending: dict[tuple[int, ...], list[dict]] = {}
    for item in items:
        if item is None:
            continue
        shape = tuple(item["video"].shape)
        bucket = pending.setdefault(shape, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            batch = collate(bucket)
            pending[shape] = []
            if batch is not None:
                yield batch
    if not drop_last:
        for bucket in pending.values():
            batch = collate(bucket)
            if bucket and batch is not None:
                yield batch
