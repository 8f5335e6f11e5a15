"""Streaming a split's tar shards: shuffled, split across workers and ranks, resumable mid-epoch.

Work assignment. Every consumer (rank x DataLoader worker) computes the same shard order for the
epoch (shuffled with (seed, epoch)) and takes its own part of it: whole shards when there are at least
as many shards as consumers, otherwise every k-th sample of one shard shared by k consumers. Either
way each sample of the split is read by exactly one consumer per epoch.

Resume. The order in which a consumer emits samples depends only on (seed, epoch, consumer) and on
the keys in the shards - never on decoded pixels. So a consumer's whole position is "epoch e, n
samples emitted"; on resume it replays the key stream and the shuffle buffer without decoding the
first n samples. This is what :meth:`StreamingClipDataset.state_dict` stores, and torchdata's
``StatefulDataLoader`` collects it per worker.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from medvideocap.dataset.hubnative import read_tar_member
from medvideocap.dataset.layout import split_shards_glob
from medvideocap.dataset.schema import ClipRecord, DataError, SchemaVersionError
from medvideocap.dist import env_rank_world
from medvideocap.handles import FileHandles
from medvideocap.locations import Location, resolve

if TYPE_CHECKING:
    # Type only: loader's ``load`` imports this module, so a runtime import back would be a cycle.
    from medvideocap.loading.loader import SamplePipeline


SHARD_BLOCK_SIZE = 8 * 2**20
"""Bytes per read-ahead request when a shard is streamed off this machine: large enough that a
request's latency is small beside its transfer, small enough to hold a few per worker."""


def list_shards(root: str | Path | Location, split: str) -> list[str]:
    """Shard paths (URLs off this machine) of ``split`` under a dataset root: a local folder, or any
    location :func:`medvideocap.locations.resolve` accepts (``hf://datasets/owner/name[@rev]``,
    ``s3://bucket/ds``...)."""
    shards = resolve(root).glob(split_shards_glob(split))
    if not shards:
        raise FileNotFoundError(
            f"{root}: no shards for split {split!r} (looked for {split_shards_glob(split)})"
        )
    return shards


@dataclass
class _Raw:
    """One sample as found in a shard, before decoding: small, cheap to hold in the shuffle buffer."""

    key: str
    where: str
    json: bytes | None
    video: bytes | tuple[str, int, int, str] | None  # bytes (remote) or (path, offset, size, name) (local)


class StreamingClipDataset(IterableDataset):
    """Iterates one split's shards as training items (see :func:`medvideocap.load`)."""

    def __init__(
        self,
        shards: list[str],
        pipeline: SamplePipeline,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 64,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        """``storage_options`` open the shards that are URLs (see :mod:`medvideocap.locations`)."""
        if not shards:
            raise ValueError("no shards to stream")
        self.shards = list(shards)
        self.pipeline = pipeline
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.rank, self.world_size = env_rank_world(rank, world_size)
        self.epoch = 0
        self._emitted = 0
        self._resume_from = 0
        self._resume_consumer: tuple[int, int] | None = None
        self.storage_options = dict(storage_options or {})
        self.files = FileHandles()
        self.skipped_shards: list[tuple[str, str]] = []

    @property
    def stats(self) -> Any:
        return self.pipeline.stats

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (new shard order, buffer order and samples); a no-op for the current
        epoch, so calling it right after :meth:`load_state_dict` keeps the resume position."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._emitted = 0
            self._resume_from = 0

    # -- work assignment ---------------------------------------------------------------------------
    def consumer(self) -> tuple[int, int]:
        """(index, count) of this reader among all ranks x workers."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def shard_order(self) -> list[str]:
        if not self.shuffle:
            return list(self.shards)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def assignment(self, consumer: int, consumers: int) -> list[tuple[str, int, int]]:
        """(shard, part, parts): read ``shard``, keep samples whose position % parts == part."""
        order = self.shard_order()
        if len(order) >= consumers:
            return [(s, 0, 1) for s in order[consumer::consumers]]
        slot = consumer % len(order)
        sharers = list(range(slot, consumers, len(order)))
        return [(order[slot], sharers.index(consumer), len(sharers))]

    # -- reading -----------------------------------------------------------------------------------
    def _members(self, shard: str, part: int, parts: int) -> Iterator[_Raw]:
        """The samples of ``shard`` this reader keeps. A local shard is read with seeks and its videos
        later by offset (:func:`read_tar_member`); one elsewhere is read front to back in
        :data:`SHARD_BLOCK_SIZE` requests, its videos kept as bytes."""
        current: _Raw | None = None
        position = -1
        keep = False
        try:
            location = resolve(shard, storage_options=self.storage_options)
            local = location.local
            with contextlib.ExitStack() as stack:
                if local is None:
                    fh = stack.enter_context(location.open(shard, "rb", block_size=SHARD_BLOCK_SIZE))
                    tar = stack.enter_context(tarfile.open(fileobj=fh, mode="r|"))
                else:
                    tar = stack.enter_context(tarfile.open(local, mode="r:"))
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if current is None or key != current.key:
                        if current is not None and keep:
                            yield current
                        position += 1
                        keep = position % parts == part
                        current = _Raw(key=key, where=f"{shard}:{key}", json=None, video=None)
                    if not keep:
                        continue
                    if ext == "json":
                        data = tar.extractfile(member)
                        current.json = data.read() if data is not None else None
                    elif ext == "mp4":
                        if local is None:
                            data = tar.extractfile(member)
                            current.video = data.read() if data is not None else None
                        else:
                            current.video = (shard, member.offset_data, member.size, member.name)
                end = tar.offset
            if current is not None and keep:
                yield current
            if local is not None and local.stat().st_size < end + 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError(
                    f"it ends at byte {local.stat().st_size} without an end-of-archive marker"
                )
        except (tarfile.TarError, OSError, EOFError) as exc:
            # A broken shard loses what is left of it, never the rest of the epoch.
            if self.pipeline.on_error == "raise":
                raise
            self.skipped_shards.append((shard, str(exc)))
            self.pipeline.warn_lost(
                f"shard {shard} is damaged ({exc}; truncated?): the clips after its last readable member "
                "are missing from this epoch"
            )

    def _raw_stream(self, consumer: int, consumers: int) -> Iterator[_Raw]:
        for shard, part, parts in self.assignment(consumer, consumers):
            yield from self._members(shard, part, parts)

    def _ordered(self, consumer: int, consumers: int) -> Iterator[_Raw]:
        raw = self._raw_stream(consumer, consumers)
        if not self.shuffle:
            yield from raw
            return
        rng = np.random.default_rng([self.seed, self.epoch, consumer, consumers])
        buf: list[_Raw] = []
        for item in raw:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            out, buf[j] = buf[j], item
            yield out
        for j in rng.permutation(len(buf)):
            yield buf[j]

    def _make(self, raw: _Raw) -> dict | None:
        pipeline = self.pipeline
        if raw.json is None or raw.video is None:
            missing = "json" if raw.json is None else "mp4"
            pipeline.skip(raw.where, f"no {raw.key}.{missing} member next to it in the shard")
            return None
        try:
            data = json.loads(raw.json)
            if not isinstance(data, dict):
                raise ValueError(f"{raw.where}.json holds a JSON {type(data).__name__}, not an object")
            record = ClipRecord.from_json_dict(data, where=f"{raw.where}.json")
        except SchemaVersionError:
            raise  # another major version is the whole dataset's problem, never one clip's
        except DataError as exc:
            pipeline.fail(raw.where, exc, reason=f"invalid record: {exc}")
            return None
        except ValueError as exc:  # bad JSON (JSONDecodeError is a ValueError); bugs propagate
            if pipeline.on_error == "raise":
                raise
            pipeline.skip(raw.where, f"invalid record: {exc}")
            return None
        video = raw.video
        if isinstance(video, tuple):
            path, offset, size, name = video

            def read() -> bytes:
                return read_tar_member(path, offset, size, name, files=self.files, where=f"{raw.where}.mp4")

            return pipeline.make(record, read, epoch=self.epoch, where=f"{raw.where}.mp4")
        return pipeline.make(record, video, epoch=self.epoch, where=f"{raw.where}.mp4")

    def __iter__(self) -> Iterator[dict]:
        consumer, consumers = self.consumer()
        skip = self._resume_from
        if skip and self._resume_consumer not in (None, (consumer, consumers)):
            raise ValueError(
                f"cannot resume: the state was saved by reader {self._resume_consumer[0]} of "  # type: ignore[index]
                f"{self._resume_consumer[1]}, this is reader {consumer} of {consumers}; "  # type: ignore[index]
                "resume with the same world size and num_workers"
            )
        self._resume_from = 0
        self._emitted = skip
        for n, raw in enumerate(self._ordered(consumer, consumers)):
            if n < skip:
                continue
            self._emitted = n + 1
            item = self._make(raw)
            if item is not None:
                yield item

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This reader's position: ``{"epoch", "emitted", "consumer", "consumers", "seed"}``."""
        consumer, consumers = self.consumer()
        return {
            "epoch": self.epoch,
            "emitted": self._emitted,
            "consumer": consumer,
            "consumers": consumers,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` on the next iteration (same seed, world size and workers)."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"cannot resume: state has seed {state['seed']}, this dataset seed {self.seed}")
        self.epoch = int(state["epoch"])
        self._emitted = self._resume_from = int(state["emitted"])
        if "consumer" in state:
            self._resume_consumer = (int(state["consumer"]), int(state["consumers"]))
