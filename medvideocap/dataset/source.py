"""One clip source: the records of a dataset plus a way to read each clip's bytes, whatever the layout.

Every reader of clips (``medvideocap.load`` and streaming, ``recaption``, ``encode-latents``) takes a
:class:`ClipSource` and nothing else: the clip ids by index (no decoding), the validated record of
clip ``i``, a reader of its bytes, and the problems found while opening it. The two layouts implement
it where they are owned: :class:`~medvideocap.dataset.hubnative.HubNativeSource` (the metadata parquet
kept as Arrow columns; one ranged read per clip) and :class:`~medvideocap.dataset.upstream.UpstreamSource`
(an upstream release's zip members). :func:`open_source` is the one place a source string becomes a
clip source: it goes through :func:`medvideocap.dataset.layout.locate`, which goes through
:func:`medvideocap.locations.resolve`.

Why a seam (STYLE.md, "one seam per concept"): the loader, the recaption job and the latent encoder
each used to rebuild "records + a reader per clip" for both layouts, with ``isinstance`` switching and
``getattr(dataset, "ids")`` guessing; a third layout would have meant editing all of them.

Errors. A reader raises the :class:`~medvideocap.errors.DataError` family for bad data (a member that is
missing or not the clip's, a row that leads out of the dataset) and nothing is caught on its way: the
caller's error policy decides whether a clip is skipped (``load(on_error=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medvideocap.dataset.layout import HUB_NATIVE, locate
from medvideocap.dataset.schema import ClipRecord
from medvideocap.locations import Location

Reader = tuple[Callable[[], bytes], str, Hashable]
"""``(read, where, cache_key)``: a zero-argument callable returning the clip's bytes, the clip's place
for messages (``shard-00000.tar:ID.mp4``, ``videos_1.zip:a.mp4``), and a key that names those bytes
within the source (a decoder cache reuses an open decoder by it)."""


@runtime_checkable
class ClipSource(Protocol):
    """The clips of one split (or of every split, ``split=None``) of a dataset, by index."""

    @property
    def ids(self) -> Sequence[str]:
        """Clip ids by index, read from the metadata alone (no video is touched)."""
        ...

    @property
    def split(self) -> str | None:
        """The split these clips come from; None for all of them."""
        ...

    @property
    def where(self) -> str:
        """The dataset's place for messages (a folder, a URL)."""
        ...

    @property
    def problems(self) -> Sequence[Any]:
        """What was found wrong while opening the source (clips left out and why); empty when none."""
        ...

    def __len__(self) -> int: ...

    def record(self, i: int) -> ClipRecord:
        """The validated record of clip ``i``; an invalid one is a
        :class:`~medvideocap.errors.DataError` naming the row."""
        ...

    def reader(self, i: int) -> Reader:
        """How to read clip ``i``'s bytes (see :data:`Reader`); nothing is read until it is called."""
        ...


def open_source(
    source: str | Path | Location | ClipSource,
    split: str | None = "train",
    *,
    revision: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ClipSource:
    """The clip source ``source`` names: a hub-native dataset or an upstream release, in a local folder,
    in object storage (``s3://bucket/ds``...), at an ``hf://`` URL or a Hub repo id (downloaded).

    ``split=None`` takes every split (a hub-native dataset's splits one after the other; an upstream
    release's clips unsplit); a split name takes that split (an upstream release's clips by
    :func:`medvideocap.dataset.splits.assign_split`). A :class:`ClipSource` is returned as it is."""
    if isinstance(source, ClipSource):
        return source
    kind, location = locate(source, revision, storage_options=storage_options)
    if kind == HUB_NATIVE:
        from medvideocap.dataset.hubnative import HubNativeSource

        return HubNativeSource(location, split)
    from medvideocap.dataset.upstream import UpstreamSource

    return UpstreamSource.open(location, split)
