"""A build's source in object storage (``--src s3://bucket/raw``): what it lists, and each input's stat.

Discovery reads one listing of the prefix (:meth:`medvideocap.locations.Location.sizes`-like, with each
object's details) and the sidecar files, and nothing else: no input is downloaded here. The worker
that processes an input fetches it to its own work dir (:mod:`medvideocap.build.engine`).

Why the listing is laid out as empty files and scanned: which entries are inputs (hidden files and
sidecars left out), their order, their ``input`` names and sample keys (``a.mp4`` and ``a.mov`` told
apart), and which sidecar row belongs to which file are the rules of
:func:`medvideocap.build.pipeline.scan`. Running that same scan over a temporary folder of empty files
named like the objects (and the real sidecar files) gives a build from ``s3://bucket/raw`` exactly the
inputs, keys and metadata of a build from a local copy of it, so the two write the same dataset bytes;
a second copy of those rules would drift. An object whose key cannot be a local relative path (``..``,
an empty component, a name that is also a prefix) is a :class:`RemoteSourceError` naming it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvideocap.build.pipeline import SIDECARS, Discovery, scan
from medvideocap.build.sample import Sample
from medvideocap.hashing import hash64
from medvideocap.locations import Location

# Object details that change when an object is replaced (s3fs, gcsfs, adlfs spellings).
_VERSION_FIELDS = (
    "ETag",
    "etag",
    "LastModified",
    "last_modified",
    "mtime",
    "updated",
    "md5Hash",
    "generation",
)


class RemoteSourceError(ValueError):
    """The source prefix cannot be built from as it is; the message names the URL and the reason."""


@dataclass
class RemoteDiscovery:
    """What :func:`scan_remote` found: :class:`~medvideocap.build.pipeline.Discovery` whose samples'
    ``path`` is the object's URL, and each input's stat (input -> ``{"size", "version"}``)."""

    discovery: Discovery
    stats: dict[str, dict[str, int]]


def _listing(source: Location) -> dict[str, dict[str, Any]]:
    """Relative key -> object details, for every object under the prefix (one recursive listing)."""
    try:
        found = source.fs.find(source.url, detail=True)
    except FileNotFoundError as exc:
        raise RemoteSourceError(f"{source.url}: no such bucket or prefix ({exc})") from None
    prefix = source.root.rstrip("/") + "/"  # the filesystem's paths have no scheme
    listed = {}
    for path, info in found.items():
        if info.get("type") == "directory" or not path.startswith(prefix):
            continue
        listed[path[len(prefix) :]] = info
    return listed


def stat_of(info: dict[str, Any]) -> dict[str, int]:
    """What tells an object from its replacement: its size and a hash of its version fields (ETag,
    modification time: whatever the store reports). The local counterpart is the file's size and
    ``st_mtime_ns`` (:func:`medvideocap.build.builder.input_stat`)."""
    version = "\n".join(f"{k}={info[k]}" for k in _VERSION_FIELDS if info.get(k) is not None)
    return {"size": int(info.get("size") or 0), "version": hash64(version)}


def scan_remote(source: Location) -> RemoteDiscovery:
    """The inputs under ``source`` (an object-store prefix), as :func:`~medvideocap.build.pipeline.scan`
    finds them in a local folder of the same files; each sample's ``path`` is its object's URL."""
    listed = _listing(source)
    if not listed:
        raise RemoteSourceError(f"{source.url}: no objects under this prefix (is the URL right?)")
    with tempfile.TemporaryDirectory(prefix="medvideocap-listing-") as tmp:
        mirror = Path(tmp)
        for rel in sorted(listed):
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise RemoteSourceError(
                    f"{source.path(rel)}: an object key with an empty, '.' or '..' component cannot be "
                    "an input; rename or remove it"
                )
            local = mirror.joinpath(*parts)
            try:
                local.parent.mkdir(parents=True, exist_ok=True)
                if rel in SIDECARS:
                    local.write_bytes(source.read_bytes(source.path(rel)))
                else:
                    local.touch()
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise RemoteSourceError(
                    f"{source.path(rel)}: both an object and a prefix of other objects; rename one of them"
                ) from None
        try:
            found = scan(mirror)
        except ValueError as exc:  # a bad sidecar row: name the object, not the temporary copy
            raise RemoteSourceError(str(exc).replace(str(mirror), source.url)) from None
        samples = []
        stats = {}
        for s in found.samples:
            rel = Path(s.path).relative_to(mirror.resolve()).as_posix()
            samples.append(Sample.from_dict({**s.to_dict(), "path": source.path(rel)}))
            stats[s.input] = stat_of(listed[rel])
    return RemoteDiscovery(Discovery(samples, found.refused), stats)
