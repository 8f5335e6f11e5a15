"""The torch datasets a trainer reads a latent cache through, and their collate function.

Both dataset kinds turn a stored row into an item the same way (:class:`_ItemMaker`), so a map-style and
a streaming run over one cache see identical tensors. With ``posterior="moments"`` the items carry the
posterior and :func:`sample_moments` draws from it where the batch is (the training device).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medvideocap.dist import env_rank_world
from medvideocap.latents.reader import LatentCache
from medvideocap.loading.sampler import BucketBatchSampler, bucket_by_shape, stable_seed
from medvideocap.locations import Location

if TYPE_CHECKING:
    import torch


POSTERIORS = ("sample", "mode", "moments")
#: The keys ``posterior="moments"`` adds to an item, and :func:`sample_moments` consumes.
MOMENT_KEYS = ("latents_logvar", "latents_scale")


class _ItemMaker:
    """Turns a stored row into a training item (normalise, sample moments) the same way everywhere."""

    def __init__(self, cache: LatentCache, normalize: bool, sample_seed: int, posterior: str):
        self.cache = cache
        self.normalize = normalize
        self.sample_seed = sample_seed
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, not {posterior!r}")
        self.posterior = posterior
        self.epoch = 0
        # What the mean was divided by: sample_moments needs it to add the posterior noise in stored units.
        self.scale = cache.std if normalize else np.ones_like(cache.std)

    def make(self, i: int) -> dict[str, Any]:
        """One item. Arrays read into memory of their own are transformed in place and become the
        tensors (no copy at all); views of shared row groups are copied once, by the math or by hand."""
        import torch

        from medvideocap.models import sample_posterior

        moments = self.cache.index["latent_kind"][i] == "moments"
        sample = self.posterior == "sample" and moments
        keep_logvar = self.posterior == "moments" and moments
        raw = self.cache.raw(i, with_logvar=sample or keep_logvar)
        owned = raw["owned"]
        stored = raw["latent"]
        mean = self._broadcast(self.cache.mean, stored.ndim)
        if sample:
            g = torch.Generator().manual_seed(stable_seed(self.sample_seed, self.epoch, raw["id"]))
            drawn = sample_posterior(
                torch.from_numpy(self._float32(stored, owned)),
                torch.from_numpy(self._float32(raw["logvar"], owned)),
                generator=g,
            )
            latent = drawn.numpy()
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
        item = {
            "latents": torch.from_numpy(latent),
            "prompt_embeds": torch.from_numpy(text),
            "prompt_len": int(raw["text_len"]),
            "id": raw["id"],
            "caption": raw["caption"],
        }
        if keep_logvar:
            item["latents_logvar"] = torch.from_numpy(self._float32(raw["logvar"], owned))
            item["latents_scale"] = torch.from_numpy(self.scale.copy())  # torch.tensor() costs 10x more
        return item

    @staticmethod
    def _float32(array: np.ndarray, owned: bool) -> np.ndarray:
        """``array`` itself when it is float32 memory of its own, else a float32 copy (never a read-only
        view: torch cannot share one)."""
        return array if owned and array.dtype == np.float32 else np.array(array, dtype=np.float32)

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

    With ``batch_size`` it yields collated batches whose latents share one shape (the one streaming
    bucketer, :func:`~medvideocap.loading.sampler.bucket_by_shape`, over positions of the order).
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
        # The state is the first position of ``order`` not yet yielded plus the later positions already
        # yielded in a batch. On resume the positions not yet yielded go through the bucketer again in
        # their original order, which makes it give the same batches as without the break.
        assert self.batch_size is not None
        shapes = self.cache.latent_shapes
        done = [k < self.position for k in range(len(order))]
        for k in self._done_after:
            done[k] = True
        todo = [k for k in range(len(order)) if not done[k]]
        for bucket in bucket_by_shape(
            todo, self.batch_size, lambda k: shapes[order[k]], drop_last=self.drop_last
        ):
            batch = collate_latents([self.maker.make(order[j]) for j in bucket])
            for j in bucket:
                done[j] = True
            while self.position < len(order) and done[self.position]:
                self.position += 1
            self._done_after = [j for j in range(self.position, len(order)) if done[j]]
            yield batch
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
    path: str | Path | Location,
    *,
    split: str | None = None,
    expect_fingerprint: str | None = None,
    streaming: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    normalize: bool = True,
    sample_seed: int = 0,
    posterior: Literal["sample", "mode", "moments"] = "sample",
    rank: int | None = None,
    world_size: int | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
    shuffle_window: int = 4,
    storage_options: Mapping[str, Any] | None = None,
) -> LatentDataset | StreamingLatentDataset:
    """Open a latent cache written by ``medvideocap encode-latents`` for training.

    Items: ``latents`` (C, F, h, w) float32 — normalised with the manifest's ``latents_mean``/``latents_std``
    when ``normalize`` and, for a moments cache, drawn from the stored posterior with a generator seeded
    by (``sample_seed``, epoch, id) (``posterior="mode"`` takes the mean instead); ``prompt_embeds`` (L, D)
    unpadded; ``prompt_len``; ``id``; ``caption``.

    ``posterior="moments"`` leaves the draw to the trainer, on its device (drawing on the CPU here made
    the loader ~5x slower than reading the bytes): ``latents`` is the stored mean (normalised as
    ``normalize`` says), plus ``latents_logvar`` (C, F, h, w) float32 as stored and ``latents_scale`` (C,)
    (what the mean was divided by); :func:`sample_moments` turns a batch of those into sampled latents.
    On a cache that stores samples there is nothing to draw: items are as with ``"sample"``.

    ``streaming=False`` gives a map-style dataset (use ``ds.bucket_sampler(...)`` as a DataLoader
    ``batch_sampler`` for shuffling, rank sharding and shape buckets). ``streaming=True`` gives an
    iterable dataset that shuffles with ``seed``, shards over ``rank``/``world_size`` (default from the
    RANK/WORLD_SIZE environment) and DataLoader workers, and has ``state_dict``/``load_state_dict``;
    with ``batch_size`` it yields shape-bucketed, collated batches.
    ``expect_fingerprint`` makes opening a cache made with other models or settings an error.

    ``path`` may be an object-store URL (``s3://bucket/latents``): rows are then read with one ranged GET
    each; ``storage_options`` (endpoint, credentials) reach its filesystem, else the backend's own
    environment does (``AWS_*``, ``AWS_ENDPOINT_URL``, fsspec's ``FSSPEC_S3_*``).
    """
    cache = LatentCache(
        path, split=split, expect_fingerprint=expect_fingerprint, storage_options=storage_options
    )
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
    """Stack latents (and ``latents_logvar``/``latents_scale`` of ``posterior="moments"`` items); right-pad
    prompt embeddings with zeros to the longest prompt and give the mask.

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
    batch = {
        "latents": torch.stack([it["latents"] for it in items]),
        "prompt_embeds": embeds,
        "prompt_mask": mask,
        "prompt_len": torch.tensor(lens, dtype=torch.long),
        "id": [it["id"] for it in items],
        "caption": [it["caption"] for it in items],
    }
    for key in MOMENT_KEYS:
        have = sum(key in it for it in items)
        if have == len(items):
            batch[key] = torch.stack([it[key] for it in items])
        elif have:
            raise ValueError(f"{key} in {have} of {len(items)} items of one batch: load them all alike")
    return batch


def sample_moments(batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
    """The batch with ``latents`` drawn from the posterior that ``posterior="moments"`` items carry, on the
    batch's device, with :func:`medvideocap.models.sample_posterior` (the one formula, log-variance clipped
    as diffusers clips it) and noise from ``generator`` (which must live on that device).

    The stored mean was normalised, so the noise is added in stored units and the result normalised
    alike: ``z = (mean + std * eps - latents_mean) / latents_std``, what the CPU ``"sample"`` path draws
    (from other random numbers). Returns a new dict without ``latents_logvar``/``latents_scale``; a batch
    without them (``"sample"``/``"mode"`` items, a cache of samples) comes back as it is, so a loop can
    call this on every batch. Works on one item as well as on a collated batch; call it before casting
    ``latents`` to a lower precision.
    """
    from medvideocap.models import sample_posterior

    if "latents_logvar" not in batch:
        return batch
    if "latents_scale" not in batch:
        raise ValueError("batch has latents_logvar but no latents_scale: build it with collate_latents")
    out = {k: v for k, v in batch.items() if k not in MOMENT_KEYS}
    mean, scale = batch["latents"], batch["latents_scale"]
    scale = scale.to(device=mean.device, dtype=mean.dtype)
    scale = scale.reshape(tuple(scale.shape) + (1,) * (mean.ndim - scale.ndim))
    out["latents"] = sample_posterior(mean * scale, batch["latents_logvar"], generator=generator) / scale
    return out
