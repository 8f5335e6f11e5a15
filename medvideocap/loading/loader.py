"""``medvideocap.load``: MedVideoCap clips as PyTorch datasets of pixel tensors, ready for training.

Two shapes, one sample pipeline:

* map-style (:class:`ClipDataset`) over a :class:`~medvideocap.dataset.source.ClipSource` (the one
  seam both layouts implement, opened by :func:`~medvideocap.dataset.source.open_source`): each item is
  one ranged read of the mp4 member at its recorded offset in its tar shard (an ``os.pread`` on a
  per-worker descriptor on disk, one ranged GET on object storage), or one member of an upstream
  release zip;
* streaming (:class:`medvideocap.loading.streaming.StreamingClipDataset`) over the split's tar shards, local,
  on the Hub or in object storage.

Where the dataset is (a folder, ``s3://``/``gs://``/``az://``/``hf://`` URL, Hub repo id) is
:mod:`medvideocap.locations`' business: this module reads through the location it is given.

Everything random in a sample (window start, crop, caption choice) is drawn from a generator seeded by
(seed, epoch, clip id), so the same clip gives the same tensor whichever worker, rank, backend or
resumed run reads it. Per-process state (decoders, file handles, zip handles) is created lazily in the
process that uses it.

Error policy, strict by default (webdataset's ``handler=reraise_exception``): ``on_error="raise"``
re-raises a clip's *data* error, an exception of the :class:`~medvideocap.errors.DataError` family: a
video that does not decode (:class:`~medvideocap.media.decode.DecodeError`), a member that is missing or
is not the clip's (:class:`~medvideocap.dataset.hubnative.MemberError`), a record that does not
validate, a row whose shard path leads out of the dataset folder
(:class:`~medvideocap.paths.OutsideRootError`: never opened). ``on_error="skip"`` (warn and count) or a
handler ``(where, error)`` skips such a clip instead: what a long job opts into. A clip too short for the
frame spec (:class:`ShortClipError`) is skipped and counted under every policy. Anything else is a bug in
this code or the caller's and propagates, whatever ``on_error`` says. A dataset of another schema major
version is refused by :func:`load` itself, from ``meta/info.json`` and the metadata rows.

Rotation. Records keep the stored frame size and a display ``rotation``; items are upright. torchcodec
and decord already apply the display matrix, PyAV does not, so PyAV frames are turned here
(:func:`upright`) before the resize and crop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from medvideocap.dataset.hubnative import check_versions
from medvideocap.dataset.layout import HUB_NATIVE, Kind, locate
from medvideocap.dataset.schema import ClipRecord, DataError
from medvideocap.dataset.source import ClipSource, open_source
from medvideocap.loading.streaming import StreamingClipDataset, list_shards
from medvideocap.locations import Location
from medvideocap.locations import resolve as resolve_location
from medvideocap.media.decode import BACKENDS, DecodeError, DecoderCache, open_decoder
from medvideocap.media.frames import FrameSpec, resize_crop, sample_rng, to_output
from medvideocap.text import strip_boilerplate

CaptionPolicy = str | Mapping[str, float]
ErrorHandler = Callable[[str, DataError], None]
"""``handler(where, error)``: called for each clip skipped for bad data (it may raise to stop)."""
ErrorPolicy = Literal["raise", "skip"] | ErrorHandler


class SkippedSampleWarning(UserWarning):
    """A clip was skipped (unreadable, or too short for the frame spec); the message names it."""


class ShortClipError(DataError):
    """A clip has too few frames for the frame spec (``FrameSpec.short="skip"``)."""


_APPLIES_DISPLAY_ROTATION = {"torchcodec": True, "decord": True, "pyav": False, "av": False}
"""Whether a backend's frames already follow the display matrix (checked by tests/test_load.py)."""


def upright(frames: torch.Tensor, record: ClipRecord, backend: str, where: str) -> torch.Tensor:
    """Decoded ``(T, C, H, W)`` frames turned to their display orientation (``record.rotation``).

    For 90/270 degrees on a non-square clip the frame shape itself says whether the backend turned
    them; otherwise the backend table decides. Frames that are neither RGB nor of either shape are a
    backend failure (decord 0.6 returns 4-channel garbage for some rotated sizes), named as such."""
    rotation = record.rotation
    if rotation == 0:
        return frames
    stored = (record.height, record.width)
    display = (record.display_height, record.display_width)
    shape = tuple(frames.shape[-2:])
    if frames.shape[1] != 3 or shape not in (stored, display):
        raise DecodeError(
            f"{where}: {backend} returned frames of shape {tuple(frames.shape[1:])} for a clip stored "
            f"{record.width}x{record.height} with display rotation {rotation}; it cannot decode this "
            "rotated video, use backend='torchcodec' or 'pyav'"
        )
    turned = shape == display if stored != display else _APPLIES_DISPLAY_ROTATION[backend]
    return frames if turned else torch.rot90(frames, rotation // 90, dims=(-2, -1))


def choose_caption(record: ClipRecord, policy: CaptionPolicy, rng: np.random.Generator) -> str:
    """The caption text for ``record`` under ``policy``, boilerplate opening stripped.

    ``policy`` is a caption name ("detailed", "brief", or any other caption slot) or a mapping of
    names to weights, drawn per sample. A missing caption falls back to the other names of the
    policy, then to the record's first caption, so one clip without a brief caption never stops a run.
    """
    if isinstance(policy, str):
        names = [policy]
    else:
        weights = {k: float(v) for k, v in policy.items() if float(v) > 0}
        if not weights:
            raise ValueError(f"caption weights {dict(policy)} have no positive weight")
        keys = sorted(weights)
        p = np.array([weights[k] for k in keys])
        first = keys[int(rng.choice(len(keys), p=p / p.sum()))]
        names = [first, *[k for k in keys if k != first]]
    for name in names:
        text = record.caption(name)
        if text:
            return strip_boilerplate(text)
    return strip_boilerplate(record.captions[0].text) if record.captions else ""


def check_caption_policy(policy: CaptionPolicy) -> CaptionPolicy:
    if isinstance(policy, str):
        return policy
    if isinstance(policy, Mapping):
        if (
            not policy
            or any(float(v) < 0 for v in policy.values())
            or sum(float(v) for v in policy.values()) <= 0
        ):
            raise ValueError(f"caption weights must be non-negative with a positive sum, got {dict(policy)}")
        return dict(policy)
    raise TypeError(f"caption must be a name or a mapping of names to weights, got {policy!r}")


@dataclass
class LoaderStats:
    """Per-process counters: what was produced and what was skipped, and why."""

    samples: int = 0
    skipped: int = 0
    short: int = 0
    skipped_ids: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "skipped": self.skipped,
            "short": self.short,
            "skipped_ids": [list(x) for x in self.skipped_ids],
        }


def target_shape(spec: FrameSpec, record: ClipRecord) -> tuple[int, int, int]:
    """(frames, height, width) of a clip's item, from its record alone: the bucketing sampler groups by
    this before decoding, so the pipeline must use the very same numbers (not the decoder's count,
    which can differ from the metadata by a frame)."""
    frames = record.num_frames or max(1, int(round(record.duration * record.fps)))
    return spec.target(frames, record.fps, record.display_width, record.display_height)


class SamplePipeline:
    """Bytes + record -> training item. Shared by the map-style and the streaming datasets."""

    def __init__(
        self,
        frames: FrameSpec,
        *,
        backend: str = "torchcodec",
        caption: CaptionPolicy = "detailed",
        output: Literal["float", "uint8"] = "float",
        on_error: ErrorPolicy = "raise",
        seed: int = 0,
        decoder_threads: int = 1,
        cache_size: int = 2,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        if not callable(on_error) and on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'raise', 'skip' or a handler(where, error), got {on_error!r}")
        self.frames = frames
        self.backend = backend
        self.caption = check_caption_policy(caption)
        self.output = output
        self.on_error = on_error
        self.seed = seed
        self.decoder_threads = decoder_threads
        self.decoders = DecoderCache(cache_size)
        self.stats = LoaderStats()

    def skip(self, clip: str, reason: str, *, short: bool = False) -> None:
        """A clip with bad data, named by ``clip`` and ``reason``: raised as a :class:`DecodeError` under
        ``on_error="raise"`` (a short clip never is), else counted and handed to the handler or warned
        about."""
        if self.on_error == "raise" and not short:
            raise DecodeError(f"{clip}: {reason}")
        self._count(clip, reason, short=short, error=None if short else DecodeError(f"{clip}: {reason}"))

    def fail(self, where: str, exc: DataError, *, reason: str | None = None) -> None:
        """The policy for data error ``exc`` on clip ``where`` (call it inside the ``except``): re-raised
        as it is under ``on_error="raise"`` (with a note naming the clip when its message does not), else counted and handed to the handler or warned about; returns None, the skipped item."""
        if self.on_error == "raise":
            if where not in str(exc):
                exc.add_note(f"clip: {where}")
            raise exc
        text = reason or f"{type(exc).__name__}: {str(exc).removeprefix(f'{where}: ')}"
        self._count(where, text, error=exc)

    def _count(self, clip: str, reason: str, *, short: bool = False, error: DataError | None = None) -> None:
        self.stats.skipped += 1
        self.stats.short += int(short)
        self.stats.skipped_ids.append((clip, reason))
        if callable(self.on_error) and error is not None:
            self.on_error(clip, error)
            return
        warnings.warn(f"skipping {clip}: {reason}", SkippedSampleWarning, stacklevel=4)

    def warn_lost(self, message: str) -> None:
        """Warn that data is missing from the epoch (e.g. a damaged shard's tail), as a
        :class:`SkippedSampleWarning`: the one category a user filters or escalates for lost clips, owned
        here so the streaming reader needs nothing else from this module."""
        warnings.warn(message, SkippedSampleWarning, stacklevel=3)

    def make(
        self, record: ClipRecord, video: Any, *, epoch: int, where: str, cache_key: Any = None
    ) -> dict | None:
        """The item for one clip, or None when it is skipped. ``video`` is bytes, a path, or a
        zero-argument callable returning either (so a cached decoder never re-reads the bytes).

        Only data errors (:class:`~medvideocap.dataset.schema.DataError`) go to the error policy
        (:meth:`fail`); any other exception is a bug and propagates as it is."""
        try:
            return self._make(record, video, epoch=epoch, where=where, cache_key=cache_key)
        except ShortClipError as short:
            self.skip(where, str(short), short=True)
            return None
        except DataError as exc:
            self.fail(where, exc)
            return None

    def _decoder(self, video: Any, where: str, cache_key: Any) -> Any:
        def factory() -> Any:
            data = video() if callable(video) else video
            return open_decoder(data, self.backend, name=where, threads=self.decoder_threads)

        if cache_key is None:
            return factory()
        return self.decoders.get((self.backend, cache_key), factory)

    def _make(self, record: ClipRecord, video: Any, *, epoch: int, where: str, cache_key: Any) -> dict:
        spec = self.frames
        decoder = self._decoder(video, where, cache_key)
        rng = sample_rng(spec.seed, epoch, record.id)
        num, height, width = target_shape(spec, record)
        indices = spec.indices(decoder.num_frames, decoder.fps, num, rng)
        if indices is None:
            raise ShortClipError(
                f"{decoder.num_frames} frames at {decoder.fps:g} fps cannot give {num} frames at "
                f"{spec.fps or decoder.fps:g} fps, stride {spec.stride} (FrameSpec.short='skip')"
            )
        got = decoder.frames_at(indices)
        frames = upright(got.data, record, self.backend, where)
        pixels = resize_crop(frames, height, width, crop=spec.crop, rng=rng)
        caption = choose_caption(record, self.caption, sample_rng(self.seed, epoch, record.id, salt=1))
        self.stats.samples += 1
        return {
            "video": to_output(pixels, self.output),
            "record": record,
            "caption": caption,
            "timestamps": got.pts.to(torch.float32),
            "id": record.id,
        }


def collate(items: Sequence[dict | None]) -> dict[str, Any] | None:
    """Stack equal-shaped items; records, captions and ids stay lists. Skipped items (None) are
    dropped, so a batch can be smaller than asked; a batch with nothing left is None."""
    kept = [it for it in items if it is not None]
    if not kept:
        return None
    shapes = {tuple(it["video"].shape) for it in kept}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot stack videos of shapes {sorted(shapes)} in one batch; use FrameSpec(buckets=...) with "
            "medvideocap.loading.sampler.BucketBatchSampler (map-style) or bucket_batches (streaming)"
        )
    return {
        "video": torch.stack([it["video"] for it in kept]),
        "timestamps": torch.stack([it["timestamps"] for it in kept]),
        "record": [it["record"] for it in kept],
        "caption": [it["caption"] for it in kept],
        "id": [it["id"] for it in kept],
    }


class ClipDataset(Dataset):
    """Map-style pixel dataset over a :class:`~medvideocap.dataset.source.ClipSource` (one split of a
    hub-native dataset, or an upstream release). Items are dicts (see :func:`load`); a clip with bad
    data raises its :class:`~medvideocap.errors.DataError` (``on_error="raise"``, the default) or gives
    ``None`` (``on_error="skip"`` or a handler; :func:`collate` drops it), counted in :attr:`stats` - so
    an index never silently turns into another clip."""

    def __init__(self, source: ClipSource, pipeline: SamplePipeline) -> None:
        self.source = source
        self.pipeline = pipeline
        self.epoch = 0

    @property
    def stats(self) -> LoaderStats:
        return self.pipeline.stats

    @property
    def frames(self) -> FrameSpec:
        return self.pipeline.frames

    def set_epoch(self, epoch: int) -> None:
        """New window starts, crops and caption draws for every clip in the next pass."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def ids(self) -> list[str]:
        """Clip ids by index, from the metadata (no decoding)."""
        return list(self.source.ids)

    def record(self, i: int) -> ClipRecord:
        return self.source.record(i)

    def target_shape(self, i: int) -> tuple[int, int, int]:
        """(frames, height, width) of item ``i``, from metadata alone (no decoding): what the
        bucketing sampler groups by."""
        return target_shape(self.frames, self.source.record(i))

    def __getitem__(self, i: int) -> dict | None:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        read, where, key = self.source.reader(i)
        try:
            record = self.source.record(i)
        except DataError as exc:  # an invalid record; another schema major was refused when opening
            self.pipeline.fail(where, exc, reason=f"invalid record: {exc}")
            return None
        return self.pipeline.make(record, read, epoch=self.epoch, where=where, cache_key=key)


# ---------------------------------------------------------------------------------------------------
# Entry point


def load(
    source: str | Path | Location | ClipSource,
    split: str | None = "train",
    *,
    streaming: bool = False,
    frames: FrameSpec | None = None,
    backend: str = "torchcodec",
    caption: CaptionPolicy = "detailed",
    output: Literal["float", "uint8"] = "float",
    shuffle: bool | None = None,
    seed: int = 0,
    on_error: ErrorPolicy = "raise",
    revision: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle_buffer: int = 64,
    decoder_threads: int = 1,
    storage_options: Mapping[str, Any] | None = None,
) -> Dataset:
    """MedVideoCap clips as a PyTorch dataset of training items.

    ``source`` is a hub-native folder, URL (``s3://bucket/ds``, ``gs://``, ``az://``,
    ``hf://datasets/OWNER/NAME``, see :mod:`medvideocap.locations`) or Hub repo id, or an upstream
    release folder or repo id (upstream clips are split by
    :func:`medvideocap.dataset.splits.assign_split`; ``split=None`` takes all), or a
    :class:`~medvideocap.dataset.source.ClipSource` already open (map-style only).
    ``storage_options`` go to the filesystem that reads a URL (``{"endpoint_url": ..., "key": ...,
    "secret": ...}``). Each item is ``{"video": (C, T, H, W) float in [-1, 1] (or uint8), "record":
    ClipRecord, "caption": str, "timestamps": (T,) seconds, "id": str}``.

    Map-style by default (shuffle with the DataLoader or :class:`~medvideocap.loading.sampler.BucketBatchSampler`);
    ``streaming=True`` gives an ``IterableDataset`` over the tar shards with shard + buffer shuffling
    (``shuffle`` defaults to True there), split across DataLoader workers and ranks (``RANK``/``WORLD_SIZE``
    or ``rank``/``world_size``), with ``set_epoch`` and ``state_dict``/``load_state_dict``.

    ``frames.seed`` drives window starts and random crops, ``seed`` the caption mix and the streaming
    shuffle; both are mixed with the epoch and the clip id.

    Error policy (``on_error``), strict by default like webdataset's ``handler=``: a clip with bad data
    (does not decode, its member is missing or is not its own, invalid record) raises that
    :class:`~medvideocap.errors.DataError`, naming the clip (``"raise"``); ``"skip"`` skips it with a
    :class:`SkippedSampleWarning` naming it and the reason, counted in ``dataset.stats`` (per process:
    with DataLoader workers each worker counts its own); a callable ``handler(where, error)`` is called
    instead of the warning (it may raise to stop). A clip too short for the frame spec is always skipped
    and counted (``FrameSpec.short="skip"``). Any other exception is a bug and propagates, whatever
    ``on_error`` says. A dataset of another schema major version raises
    :class:`~medvideocap.dataset.schema.SchemaVersionError` here, naming both versions.

    Frames come out upright: a clip with a display rotation (``record.rotation``) is turned, and its
    target size follows the display size.
    """
    spec = frames if frames is not None else FrameSpec()
    pipeline = SamplePipeline(
        spec,
        backend=backend,
        caption=caption,
        output=output,
        on_error=on_error,
        seed=seed,
        decoder_threads=decoder_threads,
    )
    if streaming:
        return _streaming(
            source,
            split,
            pipeline,
            revision=revision,
            storage_options=storage_options,
            shuffle=True if shuffle is None else shuffle,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
        )
    if shuffle:
        warnings.warn(
            "shuffle=True has no effect on a map-style dataset; pass shuffle to the DataLoader or the "
            "BucketBatchSampler",
            stacklevel=2,
        )
    clips = open_source(source, split, revision=revision, storage_options=storage_options)
    return ClipDataset(clips, pipeline)


def _streaming(
    source: str | Path | Location | ClipSource,
    split: str | None,
    pipeline: SamplePipeline,
    *,
    revision: str | None,
    storage_options: Mapping[str, Any] | None,
    **options: Any,
) -> StreamingClipDataset:
    """The streaming dataset of ``split``'s tar shards. A bare Hub repo id is read over ``hf://``
    instead of being downloaded first; an upstream release has no shards to stream."""
    if isinstance(source, ClipSource):
        raise ValueError(
            f"{source.where}: streaming reads a dataset's tar shards from its location; pass the folder "
            "or URL, not an open ClipSource"
        )
    location = resolve_location(source, revision=revision, storage_options=storage_options)
    if location.repo_id is not None:
        kind: Kind = HUB_NATIVE
    else:
        kind, location = locate(location)
    if kind != HUB_NATIVE:
        raise ValueError(
            f"{source}: streaming reads hub-native tar shards; convert the upstream release first "
            "(`medvideocap convert SRC --out DIR`) or load it map-style (streaming=False)"
        )
    if split is None:
        raise ValueError("streaming needs one split (train, validation or test)")
    check_versions(location, split)
    return StreamingClipDataset(
        list_shards(location, split), pipeline, storage_options=location.storage_options, **options
    )
