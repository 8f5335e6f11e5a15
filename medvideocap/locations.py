"""Where a dataset lives: one table from a URL scheme to the filesystem that opens it.

A dataset root is a local folder, a Hugging Face Hub dataset repo (``hf://datasets/OWNER/NAME[@REV]``,
or a bare ``OWNER/NAME``), a prefix in object storage (``s3://``, ``gs://``, ``az://``/``abfs://``)
or a folder on a web server (``https://``). Every reader turns its source into a :class:`Location`
with :func:`resolve` and reads through it: listing (:meth:`Location.glob`), ``exists``/``is_file``/
``size``, :meth:`Location.open` (with a block size for sequential reads) and :meth:`Location.pread`,
the bytes at an offset in one ranged read. That last one is why a map-style read of one clip out of
a tar shard stays one ranged GET on S3, as it is one ``os.pread`` on disk.

Why one table (webdataset's ``gopen_schemes``): the readers used to test each source for an ``hf://``
prefix and build their own paths, so adding ``s3://`` meant editing every verb. A scheme is now one
entry of :data:`SCHEMES`: its fsspec protocol, and the package that provides it (named in the error
when it is missing). The filesystems are fsspec's (``fsspec.filesystem(protocol, **storage_options)``;
huggingface_hub's ``HfFileSystem`` for the Hub): the field's library, not hand-written clients.

Storage options (endpoint, credentials, region) reach the filesystem as ``storage_options=`` in
Python, as ``--storage-option KEY=VALUE`` on the command line (:func:`parse_storage_options`), or
through fsspec's own environment variables (``FSSPEC_S3_ENDPOINT_URL=...``, or
``FSSPEC_S3='{"endpoint_url": "..."}'``), besides each backend's own (``AWS_*`` for s3fs).

Paths. Every path a location takes and returns is a URL of its scheme
(``s3://bucket/ds/data/train/shard-00000.tar``), or an OS path for a local folder, so a message can
name it as it is. A path read from a file (a metadata row's ``shard``) is joined with
:meth:`Location.join`, which refuses one that leads outside the root (:func:`medvideocap.paths.inside`).

Processes. A location pickles without its filesystem and makes a new one in each process that uses it:
fsspec's async filesystems (s3fs, gcsfs, adlfs) refuse to run in a forked child, and a DataLoader
worker may be forked or spawned.

A leaf module (no torch, nothing of the package but :mod:`medvideocap.paths` and
:mod:`medvideocap.handles`).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from medvideocap.handles import FileHandles, ShortReadError
from medvideocap.paths import DATASET_ROW_FIX, inside

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


class LocationError(ValueError):
    """A source that names no place this package can read; the message says what it accepts."""


class MissingBackendError(LocationError, ImportError):
    """The filesystem package for a URL's scheme is not installed; the message names the URL and what
    to install. An ``ImportError`` for code that expects one, a ``ValueError`` so that the CLI prints
    it as one line."""


def _fsspec_filesystem(protocol: str, options: dict[str, Any]) -> AbstractFileSystem:
    import fsspec

    return fsspec.filesystem(protocol, **options)


def _hub_filesystem(protocol: str, options: dict[str, Any]) -> AbstractFileSystem:
    import huggingface_hub  # looked up at call time, so a test can stand in for HfFileSystem

    return huggingface_hub.HfFileSystem(**options)


@dataclass(frozen=True)
class Scheme:
    """How the URLs of one scheme are opened."""

    protocol: str
    """The fsspec protocol."""
    package: str
    """The distribution that provides the filesystem, named when it is missing."""
    extra: str | None = None
    """The medvideocap extra that installs it (``pip install 'medvideocap[EXTRA]'``)."""
    make: Callable[[str, dict[str, Any]], AbstractFileSystem] = field(default=_fsspec_filesystem)
    """``make(protocol, storage_options)``: the filesystem."""

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'medvideocap[{self.extra}]' (or: pip install {self.package})"
        return f"pip install {self.package}"


LOCAL = "file"
HUB = "hf"
SCHEMES: dict[str, Scheme] = {
    LOCAL: Scheme("file", "fsspec"),
    HUB: Scheme("hf", "huggingface_hub", make=_hub_filesystem),
    "s3": Scheme("s3", "s3fs", extra="s3"),
    "gs": Scheme("gs", "gcsfs", extra="gcs"),
    "gcs": Scheme("gcs", "gcsfs", extra="gcs"),
    "az": Scheme("az", "adlfs", extra="azure"),
    "abfs": Scheme("abfs", "adlfs", extra="azure"),
    "http": Scheme("http", "aiohttp"),
    "https": Scheme("https", "aiohttp"),
}
"""URL scheme -> how it is opened: the one table. A path without a scheme is local; a bare
``OWNER/NAME`` that is not a local path is a Hub dataset repo (:func:`resolve`)."""

STORAGE_OPTION_HELP = (
    "KEY=VALUE passed to the filesystem that reads PATH_OR_REPO (fsspec storage options, e.g. "
    "endpoint_url=http://localhost:9000, key=..., secret=..., anon=true); repeat for several. VALUE is "
    "read as JSON when it parses, else as text. fsspec's environment variables (FSSPEC_S3_ENDPOINT_URL=...) "
    "and the backend's own (AWS_*) apply too."
)
"""Help of the ``--storage-option`` flag of every verb that reads a dataset."""

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def looks_like_repo_id(value: str | Path) -> bool:
    """``owner/name`` that is not an existing local path."""
    text = str(value)
    return not Path(text).exists() and bool(_REPO_ID.match(text))


def hub_model_file(spec: str) -> tuple[str, str] | None:
    """``(repo_id, filename)`` of a model-weight spec ``hf://OWNER/NAME/FILE`` (a file in a Hub *model*
    repo, as recipes and metric options name weights), ``(repo_id, "")`` for ``hf://OWNER/NAME``; None for
    anything else (a local path, a bare repo id). The one place such a spec is taken apart."""
    found = _URL.match(spec)
    if found is None or found.group(1) != HUB:
        return None
    owner, _, rest = found.group(2).partition("/")
    name, _, filename = rest.partition("/")
    if not owner or not name:
        raise LocationError(f"{spec!r}: expected {HUB}://OWNER/NAME/FILE")
    return f"{owner}/{name}", filename


def hub_url(repo_id: str, path: str = "", *, revision: str | None = None) -> str:
    """``hf://datasets/OWNER/NAME[@REV][/PATH]``: a Hub dataset repo, or a file in it. A revision with
    a slash (``refs/pr/1``) is percent-encoded, as ``HfFileSystem`` expects."""
    rev = f"@{quote(revision, safe='')}" if revision else ""
    tail = f"/{path}" if path else ""
    return f"{HUB}://datasets/{repo_id}{rev}{tail}"


class RangeReader(Protocol):
    """What reads ``size`` bytes at ``offset`` of a file: a :class:`Location`, or a
    :class:`~medvideocap.handles.FileHandles` for local files."""

    def pread(self, path: str, offset: int, size: int) -> bytes: ...


class _PerProcess:
    """What a location must not share across processes: the filesystem, the local descriptor cache
    and the lock that guards it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fs: AbstractFileSystem | None = None
        self.lock = threading.Lock()
        self.handles = FileHandles()
        # Descriptors are closed when the location goes, not when the interpreter exits (the OS does).
        weakref.finalize(self, _close_handles, self.handles, self.pid).atexit = False


def _close_handles(handles: FileHandles, pid: int) -> None:
    if os.getpid() == pid:  # a forked child leaves its parent's descriptors alone
        handles.clear()


class Location:
    """A dataset root (or one file) somewhere: its scheme, the filesystem that reads it (:attr:`fs`)
    and its path in that filesystem (:attr:`root`), with the storage options that opened it.

    ``repo_id``/``revision`` are set when the source was a bare Hub repo id: the verbs that read every
    file of it download a snapshot (cached, resumable) instead of reading it over the network, see
    :func:`medvideocap.dataset.layout.download`."""

    def __init__(
        self,
        scheme: str,
        root: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        repo_id: str | None = None,
        revision: str | None = None,
    ) -> None:
        if scheme not in SCHEMES:
            raise LocationError(f"{scheme}://: unknown scheme; {_accepted()}")
        self.scheme = scheme
        self.root = root if scheme == LOCAL else root.rstrip("/")
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.repo_id = repo_id
        self.revision = revision
        self._state: _PerProcess | None = _PerProcess()

    # -- identity ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The root as a user writes it: ``s3://bucket/ds``, or the local path as given."""
        return self.root if self.scheme == LOCAL else f"{self.scheme}://{self.root}"

    @property
    def local(self) -> Path | None:
        """The root as a path on this machine, or None when it is elsewhere. Readers that can do
        better with a local file (seek a tar shard, keep descriptors open) ask this, never the scheme."""
        return Path(self.root) if self.scheme == LOCAL else None

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Location):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.scheme, self.root, self.repo_id, self.revision))

    def _key(self) -> tuple[Any, ...]:
        return (self.scheme, self.root, self.storage_options, self.repo_id, self.revision)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    # -- per-process filesystem --------------------------------------------------------------------
    def _process(self) -> _PerProcess:
        state = self._state
        if state is None or state.pid != os.getpid():
            state = self._state = _PerProcess()
        return state

    @property
    def fs(self) -> AbstractFileSystem:
        """This process's filesystem for the scheme; a missing backend package is a
        :class:`MissingBackendError` naming the URL and what to install."""
        state = self._process()
        if state.fs is None:
            scheme = SCHEMES[self.scheme]
            try:
                state.fs = scheme.make(scheme.protocol, dict(self.storage_options))
            except ImportError as exc:
                raise MissingBackendError(
                    f"{self.url}: reading {self.scheme}:// needs the {scheme.package} package, which is not "
                    f"installed; {scheme.install_hint()} ({exc})"
                ) from exc
        return state.fs

    # -- paths -------------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        """``relative`` (a trusted layout path such as ``meta/info.json``) under the root."""
        if self.scheme == LOCAL:
            return str(Path(self.root) / relative)
        tail = posixpath.normpath(relative) if relative else "."
        return self.url if tail == "." else f"{self.url}/{tail}"

    def join(self, relative: str, *, where: str, what: str = "path", fix: str = DATASET_ROW_FIX) -> str:
        """``relative`` (read from a file: a metadata row, a manifest) under the root, when it stays
        inside it; else :class:`~medvideocap.paths.OutsideRootError` naming ``where`` and ``fix``."""
        inside(self.url, relative, where=where, what=what, fix=fix)
        return self.path(relative)

    def relative(self, path: str) -> str:
        """``path`` (under the root) relative to the root, with posix separators."""
        if self.scheme == LOCAL:
            return Path(path).relative_to(self.root).as_posix()
        prefix = f"{self.url}/"
        if not path.startswith(prefix):
            raise LocationError(f"{path}: not under {self.url}")
        return path[len(prefix) :]

    def _fs_path(self, path: str | Path) -> str:
        text = str(path)
        if self.scheme == LOCAL:
            return text
        prefix = f"{self.scheme}://"
        if not text.startswith(prefix):
            raise LocationError(f"{text}: not a {prefix} URL (this location is {self.url})")
        return text if self.scheme in _WHOLE_URL_SCHEMES else text[len(prefix) :]

    def _url(self, fs_path: str) -> str:
        if self.scheme == LOCAL or (self.scheme in _WHOLE_URL_SCHEMES and "://" in fs_path):
            return fs_path
        return f"{self.scheme}://{fs_path}"

    # -- listing -----------------------------------------------------------------------------------
    def glob(self, pattern: str) -> list[str]:
        """The files matching ``pattern`` (relative to the root, e.g. ``data/*/shard-*.tar``), sorted."""
        if self.scheme == LOCAL:
            return sorted(str(p) for p in Path(self.root).glob(pattern))
        return sorted(self._url(p) for p in self.fs.glob(posixpath.join(self._fs_path(self.url), pattern)))

    def sizes(self, pattern: str) -> dict[str, int]:
        """Files matching ``pattern`` -> their size in bytes, sorted by path; one listing, no request
        per file on object storage."""
        if self.scheme == LOCAL:
            found = {str(p): p.stat().st_size for p in Path(self.root).glob(pattern) if p.is_file()}
        else:
            listed = self.fs.glob(posixpath.join(self._fs_path(self.url), pattern), detail=True)
            found = {
                self._url(p): int(d.get("size") or 0)
                for p, d in listed.items()
                if d.get("type") != "directory"
            }
        return dict(sorted(found.items()))

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._fs_path(path)))

    def is_file(self, path: str) -> bool:
        return bool(self.fs.isfile(self._fs_path(path)))

    def is_dir(self, path: str) -> bool:
        return bool(self.fs.isdir(self._fs_path(path)))

    def size(self, path: str) -> int:
        return int(self.fs.size(self._fs_path(path)))

    # -- reading -----------------------------------------------------------------------------------
    def open(self, path: str, mode: str = "rb", *, block_size: int | None = None) -> IO[bytes]:
        """A file object (``rb``); ``block_size`` is the size of each read-ahead request on object
        storage, for a file read front to back (a streamed shard)."""
        options = {} if block_size is None else {"block_size": block_size}
        return self.fs.open(self._fs_path(path), mode, **options)  # type: ignore[no-any-return]

    def read_bytes(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(self._fs_path(path)))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def pread(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of ``path`` in one read: an ``os.pread`` on a descriptor kept
        open per process for a local file, one ranged request (``cat_file(start, end)``) elsewhere.
        Fewer bytes than asked (a truncated shard) is a :class:`~medvideocap.handles.ShortReadError`.

        Safe from several threads (``validate`` reads members from a pool): the local descriptor cache
        is used under a lock, so one thread cannot close a descriptor another is reading."""
        if self.scheme == LOCAL:
            state = self._process()
            with state.lock:
                return state.handles.pread(path, offset, size)
        try:
            data = bytes(self.fs.cat_file(self._fs_path(path), start=offset, end=offset + size))
        except OSError as exc:  # a range past the end is refused outright (HTTP 416): say so as on disk
            total = self.size(path)
            if offset + size <= total:
                raise
            raise _short_read(path, offset, size, max(0, total - offset)) from exc
        if len(data) != size:
            raise _short_read(path, offset, size, len(data))
        return data


_WHOLE_URL_SCHEMES = frozenset({"http", "https"})
"""Schemes whose fsspec filesystem takes the whole URL as its path (fsspec's HTTP filesystem needs
the host and scheme to make a request); the others take the path without ``SCHEME://``."""


def _short_read(path: str, offset: int, size: int, got: int) -> ShortReadError:
    return ShortReadError(f"{path}: wanted {size} bytes at offset {offset}, got {got} (truncated shard?)")


def _accepted() -> str:
    schemes = ", ".join(f"{s}://" for s in SCHEMES)
    return f"medvideocap reads local paths, Hub repo ids (OWNER/NAME) and {schemes} URLs"


def resolve(
    source: str | Path | Location,
    *,
    revision: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Location:
    """The location ``source`` names: a :class:`Location` as it is; a ``pathlib.Path`` or a string
    without a scheme as a local path, unless it is a bare ``OWNER/NAME`` that is no local path (a Hub
    dataset repo at ``revision``); ``SCHEME://...`` by :data:`SCHEMES` (an unknown scheme is a
    :class:`LocationError` listing the known ones). Nothing is opened yet: a missing backend package
    is reported on first use, by :attr:`Location.fs`."""
    if isinstance(source, Location):
        return source
    if isinstance(source, Path):
        return Location(LOCAL, str(source.expanduser()), storage_options)
    text = str(source)
    match = _URL.match(text)
    if match is not None:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme not in SCHEMES:
            raise LocationError(f"{text}: unknown scheme {scheme}://; {_accepted()}")
        if scheme == LOCAL:
            return Location(LOCAL, rest or "/", storage_options)
        if not rest.strip("/"):
            raise LocationError(f"{text}: no bucket or path after {scheme}://")
        return Location(scheme, rest, storage_options)
    if looks_like_repo_id(text):
        return Location(
            HUB,
            hub_url(text, revision=revision).removeprefix(f"{HUB}://"),
            storage_options,
            repo_id=text,
            revision=revision,
        )
    return Location(LOCAL, str(Path(text).expanduser()), storage_options)


READ_ONLY_SCHEMES = frozenset({HUB, "http", "https"})
"""Schemes this package reads but never writes (the Hub is written by ``push``, through its API)."""


def resolve_output(
    dest: str | Path | Location, *, storage_options: Mapping[str, Any] | None = None
) -> Location:
    """Where a verb writes ``dest``: :func:`resolve`, except that a string without a scheme is always a
    local path (an output folder that does not exist yet is never taken for a Hub repo id because it is
    spelled ``a/b``), and a read-only scheme (:data:`READ_ONLY_SCHEMES`) is a :class:`LocationError`."""
    if isinstance(dest, Location):
        location = dest
    elif isinstance(dest, Path) or _URL.match(str(dest)) is None:
        location = Location(LOCAL, str(Path(dest).expanduser()), storage_options)
    else:
        location = resolve(dest, storage_options=storage_options)
    if location.scheme in READ_ONLY_SCHEMES:
        raise LocationError(
            f"{location.url}: cannot write to {location.scheme}://; write to a local folder or "
            "an object-store URL (s3://, gs://, az://)"
        )
    return location


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--storage-option``) as fsspec storage options. A VALUE that parses as
    JSON (``true``, ``8``, ``{"region_name": "eu-west-1"}``) is that value, any other is text; a pair
    without ``=`` is a :class:`LocationError` naming it."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise LocationError(
                f"--storage-option {pair!r}: expected KEY=VALUE, e.g. endpoint_url=http://localhost:9000"
            )
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options
