"""Batches of equal shape from a dataset of mixed shapes (FrameSpec buckets).

A video batch must share (frames, height, width). With buckets, which bucket a clip lands in depends
only on its metadata (size, frame count, fps), so the map-style sampler groups indices up front without
decoding anything; the streaming bucketer (:func:`bucket_by_shape`, the one used by pixel streaming,
latent streaming and ``encode-latents``) groups items as they arrive.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from torch.utils.data import Sampler

from medvideocap.dist import env_rank_world
from medvideocap.hashing import hash64

if TYPE_CHECKING:
    from medvideocap.loading.loader import ClipDataset

T = TypeVar("T")


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any values, the same in every process and Python version (unlike ``hash``):
    sha256 of the ``:``-joined ``str`` of the parts, first 8 bytes little-endian, shifted right by one."""
    return hash64(":".join(map(str, parts)), algorithm="sha256", byteorder="little") >> 1


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose items all have the same shape (so they stack), given each item's shape.

    Per epoch (``set_epoch``, or automatically after each full pass) indices are shuffled with a seed
    within each bucket, cut into batches, and the batches shuffled together, so consecutive steps mix
    buckets. Across ranks each rank takes every ``world_size``-th batch; the batch list is padded by
    wrapping around (or, with ``drop_last``, trimmed) so every rank runs the same number of steps - DDP
    hangs otherwise. ``state_dict``/``load_state_dict`` resume an epoch after the batches already consumed.

    Build it from shapes (a latent cache's ``latent_shapes``) or with :meth:`for_dataset` from a
    :class:`~medvideocap.loading.loader.ClipDataset` (its ``target_shape`` per clip, known without decoding).
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, ...]],
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
        self.shapes = [tuple(s) for s in shapes]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = env_rank_world(rank, world_size)
        self.epoch = 0
        self.consumed = 0
        buckets: dict[tuple[int, ...], list[int]] = {}
        for i, shape in enumerate(self.shapes):
            buckets.setdefault(shape, []).append(i)
        self.buckets = dict(sorted(buckets.items()))

    @classmethod
    def for_dataset(cls, dataset: ClipDataset, batch_size: int, **options: Any) -> BucketBatchSampler:
        """A sampler over a pixel dataset, bucketed by each clip's output shape."""
        return cls([dataset.target_shape(i) for i in range(len(dataset))], batch_size, **options)

    def _batches(self) -> list[list[int]]:
        rng = random.Random(stable_seed(self.seed, self.epoch))
        batches: list[list[int]] = []
        for indices in self.buckets.values():
            order = list(indices)
            if self.shuffle:
                rng.shuffle(order)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        extra = len(batches) % self.world_size
        if extra:
            if self.drop_last:
                batches = batches[: len(batches) - extra]
            else:
                batches += [batches[k % len(batches)] for k in range(self.world_size - extra)]
        return batches[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        for k in range(self.consumed, len(batches)):
            self.consumed = k + 1
            yield batches[k]
        self.epoch += 1
        self.consumed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"sampler state was saved with seed {state['seed']}, this sampler has {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])


def bucket_by_shape(
    items: Iterable[T], batch_size: int, shape: Callable[[T], Hashable], *, drop_last: bool = False
) -> Iterator[list[T]]:
    """The one streaming bucketer: lists of ``batch_size`` items of equal ``shape(item)``, from a stream of
    mixed shapes, without looking ahead (so it works on iterables, and on indices whose shape is known).

    An item waits in its shape's bucket; a bucket that fills is yielded at once (so batches come in the
    order their last item arrived) and starts afresh. Leftover partial buckets come last, in the order of
    their first item, unless ``drop_last``. That order depends only on the items still waiting, so a
    consumer that resumes by feeding again exactly the items not yet yielded, in their original order,
    gets the same batches as without the break (what :class:`~medvideocap.latents.StreamingLatentDataset`
    does with positions).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: dict[Hashable, list[T]] = {}
    for item in items:
        key = shape(item)
        bucket = pending.setdefault(key, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            del pending[key]  # a refilled bucket ranks by its new first item (see above)
            yield bucket
    if not drop_last:
        yield from pending.values()


def bucket_batches(
    items: Iterable[dict | None], batch_size: int, *, drop_last: bool = False
) -> Iterator[dict[str, Any]]:
    """Collated batches from a stream of pixel items of mixed shapes (e.g. a streaming dataset with
    buckets), grouped by :func:`bucket_by_shape` on ``item["video"].shape``; ``None`` items (skipped
    clips) are left out."""
    from medvideocap.loading.loader import collate

    present = (item for item in items if item is not None)
    for bucket in bucket_by_shape(present, batch_size, _video_shape, drop_last=drop_last):
        batch = collate(bucket)
        if batch is not None:
            yield batch


def _video_shape(item: dict[str, Any]) -> tuple[int, ...]:
    return tuple(item["video"].shape)
