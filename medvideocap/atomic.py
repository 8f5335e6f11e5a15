"""Atomic file writes: readers (and a resumed run) never see half a file.

Everything is written under a private temporary name in the target's folder and then ``os.replace``d
onto the target, which is atomic on POSIX file systems. The temporary name is ``.{name}.tmp-{host}-{pid}``
followed by the target's suffix (so tools that pick a format by extension, like matplotlib, still do):
hidden, unique per process even when ranks on several machines share a disk, and matched by the
``.*.tmp-*`` patterns that clean-up and upload code skip.

A write that fails removes its temporary file, so a full disk leaves the old file (or none) and no
half-written one; a full disk, a used-up quota or a read-only file system comes out as one
:class:`~medvideocap.disk.ResourceError` naming the target and the bytes it needed
(:func:`~medvideocap.disk.writing_to`).

Object storage (``s3://``, ``gs://``, ``az://``) has no rename, and a reader listing a prefix sees every
key in it. So :func:`atomic_output` writes to a local staging file first, uploads it under the same
hidden temporary name (``.{name}.tmp-{host}-{pid}``, which no reader's pattern matches), then copies it
onto the real key and deletes the temporary one: a reader sees the whole object or none, and what a
kill leaves is a temporary key that the next run (or :data:`TEMP_GLOB`) finds and removes. On a
local folder it is :func:`atomic_path`.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvideocap.disk import writing_to
from medvideocap.locations import Location

if TYPE_CHECKING:
    import pyarrow as pa


TEMP_GLOB = ".*.tmp-*"
"""Matches every :func:`temp_name` (an atomic write in progress, or cut short by a kill)."""


def temp_name(path: Path) -> Path:
    """The private temporary sibling of ``path`` used while it is being written."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}{path.suffix}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that needs a file name (savefig, PyAV,
    pyarrow); on success it is fsynced (``fsync``) and renamed onto ``path``, on failure removed.

    A full disk, a used-up quota or a read-only file system, in the writer or here, is a
    :class:`~medvideocap.disk.ResourceError` naming ``path`` (and ``needed`` bytes, when given)."""
    path = Path(path)
    with writing_to(path, needed=needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
        try:
            yield tmp
            if fsync:
                _fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):  # the error being raised is the one to report, not a failed clean-up
                tmp.unlink(missing_ok=True)
            raise


def temp_url(url: str) -> str:
    """The hidden temporary key beside ``url`` (an object-store URL) while it is uploaded: :func:`temp_name`'s
    spelling, so :data:`TEMP_GLOB` matches it."""
    head, _, name = url.rpartition("/")
    return f"{head}/{temp_name(Path(name)).name}"


@contextmanager
def atomic_output(location: Location, path: str | Path, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a local file for a writer to fill; on success it becomes ``path`` (a path of ``location``:
    an OS path for a local folder, a URL of its scheme otherwise), whole or not at all.

    Local: :func:`atomic_path`. Object storage: the file is staged in the system's temporary folder,
    uploaded to :func:`temp_url` and copied onto ``path``, then the temporary key is deleted; a failure
    deletes the temporary key and leaves ``path`` as it was."""
    if location.local is not None:
        with atomic_path(path, needed=needed) as tmp:
            yield tmp
        return
    url = str(path)
    with tempfile.TemporaryDirectory(prefix="medvideocap-upload-") as staging:
        staged = Path(staging) / url.rpartition("/")[2]
        with writing_to(staged, needed=needed):
            yield staged
        publish(location, staged, url)


def publish(location: Location, staged: str | Path, url: str) -> None:
    """Upload the local file ``staged`` to ``url`` of ``location`` (object storage) through a temporary key,
    so that ``url`` never exists half-written (see :func:`atomic_output`)."""
    fs = location.fs
    tmp = temp_url(url)
    try:
        fs.put_file(str(staged), tmp)
        fs.mv(tmp, url)
    except BaseException:
        with suppress(OSError):  # the upload's own error is the one to report
            fs.rm(tmp)
        raise
    fs.invalidate_cache()


def atomic_write_to(location: Location, path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` of ``location`` (local folder or object storage), atomically."""
    with atomic_output(location, path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary name and a rename."""
    with atomic_path(path, fsync=fsync, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def atomic_write_json(
    path: str | Path,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    newline: bool = True,
    fsync: bool = True,
) -> None:
    """``json.dumps(obj, ...)`` (plus a final newline unless ``newline=False``), written atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    atomic_write_text(path, text + ("\n" if newline else ""), fsync=fsync)


def atomic_write_parquet(path: str | Path, table: pa.Table, *, fsync: bool = True, **options: Any) -> None:
    """``pyarrow.parquet.write_table(table, ..., **options)``, written atomically."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    atomic_write_bytes(path, buf.getvalue(), fsync=fsync)


__all__ = [
    "TEMP_GLOB",
    "atomic_output",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "atomic_write_to",
    "publish",
    "temp_name",
    "temp_url",
]
