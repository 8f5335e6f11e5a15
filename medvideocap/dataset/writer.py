"""Writes the hub-native layout: webdataset shards, metadata parquet, meta/info.json, rejects and card.

Layout (paths owned by :mod:`medvideocap.dataset.layout`; see :mod:`medvideocap.dataset.hubnative` for the reader)::

    DIR/README.md                        card with YAML ``configs`` so ``load_dataset(DIR)`` needs no script
    DIR/data/{split}/shard-{NNNNN}.tar   ``{id}.mp4`` + ``{id}.json`` per clip, in the order written
    DIR/metadata/{split}.parquet         one row per clip, no video bytes: shard, offset, size
    DIR/meta/info.json                   format, schema version, counts, recipe, fingerprint
    DIR/meta/rejects.parquet             what was dropped, at which stage and why

Why it is shaped this way:

* **Crash safety without a separate journal.** A shard is written under a hidden temp name
  (``.shard-NNNNN.tar.partial``) and renamed when it reaches the target size, so a ``shard-*.tar``
  on disk is always complete. Re-opening ``DIR`` reads the finished shards back (headers and the
  small json members only), deletes leftover temp shards, and :meth:`DatasetWriter.has` then
  answers for every clip they hold. Clips that were in an unfinished shard are simply written
  again. Rejects are appended to ``meta/progress/rejects.jsonl`` as they happen and de-duplicated
  (a journal under :mod:`medvideocap.journal`'s policy: a torn last line is recorded again).
* **Byte identity across a kill.** Tar headers are fixed (mtime 0, uid/gid 0, no user names, mode
  0644), members go in the order they are given, shard boundaries depend only on that order and
  the target size, and no data file holds a timestamp. Because finished shards always hold a prefix
  of each split's clip sequence, a resumed run that is fed the same sequence produces the same
  bytes as a run that was never interrupted.
* **Random access.** The parquet records the byte offset of each mp4 member's data in its shard,
  so one clip can be read with a single ranged read (locally or over HTTP) without the tar index.
* **Object storage** (``out`` an ``s3://``/``gs://``/``az://`` URL). A tar shard is written front to
  back with seeks a store cannot do, and a store has no rename, so the writer writes the same bytes into
  a local *staging* folder (``staging=``, else a temporary one) and publishes each file as it is
  finished: a shard when it is renamed into place, the metadata, rejects, info, funnel and card on
  :meth:`DatasetWriter.close`, ``README.md`` last. Each upload goes to a hidden temporary key and is
  then copied onto the real one (:func:`medvideocap.atomic.publish`), so a reader of the store never
  sees half a shard. Re-opening first brings the staging folder level with the store (what the store
  holds is what was published; a file finished locally but not yet published is published now;
  temporary keys a kill left are deleted), then resumes exactly as on a local folder: the published
  shards are a prefix of the clip sequence, so the rerun writes the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from medvideocap.atomic import TEMP_GLOB, atomic_path, atomic_write_bytes, atomic_write_parquet, publish
from medvideocap.dataset import layout
from medvideocap.dataset.layout import (
    FORMAT,
    INFO_PATH,
    META_DIR,
    METADATA_DIR,
    PROGRESS_DIR,
    README_PATH,
    REJECTS_PATH,
    SHARD_GLOB,
    metadata_path,
    shard_path,
    split_dir,
)
from medvideocap.dataset.schema import SCHEMA_VERSION, SPLITS, ClipRecord, arrow_schema
from medvideocap.disk import writing_to
from medvideocap.journal import JournalAppender, read_journal
from medvideocap.locations import Location, resolve_output
from medvideocap.lock import LOCK_GLOB

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 1_000_000_000
_PROGRESS = Path(PROGRESS_DIR)
_REJECTS_JOURNAL = _PROGRESS / "rejects.jsonl"
_SETTINGS = _PROGRESS / "settings.json"


class WriterError(ValueError):
    """A clip cannot be written as given; the message names the clip and the reason."""


def parse_size(text: str | int) -> int:
    """Bytes from "1GB", "500MB", "64KiB" or a plain number (decimal units; KiB/MiB/GiB binary)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r}: expected a number of bytes like 1000000000, 1GB or 512MiB")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    power = " kmgt".index(unit.lower()) if unit else 0
    size = int(float(number) * base**power)
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


def metadata_schema() -> pa.Schema:
    """Schema of ``metadata/{split}.parquet``: the record columns plus where the video lives."""
    base = arrow_schema()
    extra = [
        pa.field("shard", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("size", pa.int64()),
        pa.field("caption_detailed", pa.string()),
        pa.field("caption_brief", pa.string()),
    ]
    return pa.schema(list(base) + extra, metadata=base.metadata)


def rejects_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("input", pa.string()),
            pa.field("stage", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("scores", pa.string()),
        ]
    )


def shard_name(split: str, index: int) -> str:
    """Path of shard ``index`` of ``split``, relative to the dataset root (posix separators)."""
    return shard_path(split, index)


def encode_record(record: ClipRecord) -> bytes:
    """Serialize ``record`` for ``{id}.json`` after checking it survives a JSON round trip unchanged.

    The check is what "validated before it is written" means here: the bytes we store are parsed
    back through the schema (version policy included) and must give the same record."""
    where = f"clip {record.id}"
    if record.model_extra:
        raise WriterError(
            f"{where}: fields not in schema {SCHEMA_VERSION}: {sorted(record.model_extra)}; "
            "put upstream-only keys into record.extra so every row keeps one typed schema"
        )
    data = record.to_json_dict()
    payload = json.dumps(data, ensure_ascii=False).encode()
    back = ClipRecord.from_json_dict(json.loads(payload), where=where)
    if back.to_json_dict() != data:
        raise WriterError(f"{where}: record changes when read back from JSON; refusing to write it")
    return payload


def metadata_row(payload: bytes, *, shard: str, offset: int, size: int, where: str) -> dict[str, Any]:
    """The metadata parquet row of one written clip, derived from the stored JSON bytes."""
    record = ClipRecord.from_json_dict(json.loads(payload), where=where)
    row = record.to_row()
    row.update(
        shard=shard,
        offset=offset,
        size=size,
        caption_detailed=record.caption("detailed"),
        caption_brief=record.caption("brief"),
    )
    return row


def _check_reject(row: Any) -> str | None:
    if not isinstance(row, dict) or not {"input", "stage"} <= row.keys():
        return "expected a reject object with 'input' and 'stage'; delete the line to record it again"
    return None


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(data)}


@dataclass
class _Shard:
    split: str
    index: int
    final: Path
    tmp: Path
    tar: tarfile.TarFile
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return int(self.tar.offset)


class DatasetWriter:
    """Writes clips into a hub-native dataset folder; re-opening the folder resumes it.

    ``split_fn(record) -> split`` is used for records whose ``split`` is None (default: hash of the
    group key, :func:`medvideocap.dataset.splits.assign_split`). ``recipe`` is stored in ``meta/info.json``
    and shown in the card. Use as a context manager: a clean exit calls :meth:`close`; an exception
    leaves unfinished shards as temp files so that a rerun rewrites exactly those clips.

    ``out`` may be an object-store URL or :class:`~medvideocap.locations.Location` (``storage_options``
    reach its filesystem): the dataset is written in ``staging`` (a local folder; default a temporary
    one, removed on close) and published to ``out`` file by file (see the module doc). :attr:`out` is
    the folder written locally, :attr:`location` where the dataset is.
    """

    def __init__(
        self,
        out: Path | str | Location,
        *,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        split_fn: Callable[[ClipRecord], str] | None = None,
        recipe: dict[str, Any] | None = None,
        card: bool = True,
        staging: Path | str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if shard_bytes <= 0:
            raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
        self.location = resolve_output(out, storage_options=storage_options)
        local = self.location.local
        self.remote: Location | None = None if local is not None else self.location
        self._own_staging: Path | None = None
        if local is not None:
            self.out = local
        elif staging is not None:
            self.out = Path(staging)
        else:
            self.out = self._own_staging = Path(tempfile.mkdtemp(prefix="medvideocap-staging-"))
        self.shard_bytes = shard_bytes
        self.recipe = recipe or {}
        self.card = card
        if split_fn is None:
            from medvideocap.dataset.splits import assign_split

            def split_fn(record: ClipRecord) -> str:
                return assign_split(record.group)

        self.split_fn = split_fn
        self._rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self._ids: set[str] = set()
        self._next_index: dict[str, int] = {s: 0 for s in SPLITS}
        self._open: dict[str, _Shard] = {}
        self._rejects: dict[tuple[str, str], dict[str, Any]] = {}
        self._closed = False
        self._rejects_out = JournalAppender(self.out / _REJECTS_JOURNAL, durable=False)
        self.resumed = 0
        self._resume()
        self._check_settings()

    # ----------------------------------------------------------------------------------------------
    # resume

    def _resume(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.remote is not None:
            level_staging(self.remote, self.out)
        for folder in (self.out, self.out / METADATA_DIR, self.out / META_DIR):
            for stale in folder.glob(TEMP_GLOB) if folder.is_dir() else ():
                stale.unlink()  # an atomic write cut short by a kill; written again on close
        for split in SPLITS:
            folder = self.out / split_dir(split)
            if not folder.is_dir():
                continue
            for partial in sorted(folder.glob(layout.PARTIAL_SHARD_GLOB)):
                log.info("discarding unfinished shard %s (its clips are written again)", partial)
                partial.unlink()
            for path in sorted(folder.glob(SHARD_GLOB)):
                index = int(path.stem.split("-")[1])
                self._load_finished_shard(split, path)
                self._next_index[split] = max(self._next_index[split], index + 1)
        rejects_parquet = self.out / REJECTS_PATH
        if rejects_parquet.exists():
            for row in pq.read_table(rejects_parquet).to_pylist():
                self._rejects.setdefault((row["input"], row["stage"]), row)
        # A torn last line (a kill mid-append) is cut off and that reject recorded again on rerun; a bad
        # line in the middle is an error naming it (medvideocap.journal's policy).
        for row in read_journal(self.out / _REJECTS_JOURNAL, check=_check_reject).entries:
            self._rejects.setdefault((row["input"], row["stage"]), row)

    def _settings(self) -> dict[str, Any]:
        return json.loads(json.dumps({"shard_bytes": self.shard_bytes, "recipe": self.recipe}, default=str))

    def _check_settings(self) -> None:
        """Refuse to continue a dataset with other settings: the result would be neither run's output."""
        ours = self._settings()
        if self.resumed:
            stored: dict[str, Any] | None = None
            for path in (self.out / _SETTINGS, self.out / INFO_PATH):
                if path.exists():
                    data = json.loads(path.read_text(encoding="utf-8"))
                    stored = {"shard_bytes": data.get("shard_bytes"), "recipe": data.get("recipe", {})}
                    break
            if stored is not None and stored != ours:
                before, after = _flatten(stored), _flatten(ours)
                changed = "; ".join(
                    f"{k}: {before.get(k, '<unset>')} -> {after.get(k, '<unset>')}"
                    for k in sorted(set(before) | set(after))
                    if before.get(k) != after.get(k)
                )
                raise WriterError(
                    f"{self.out} holds clips written with other settings ({changed}). "
                    "Rerun with the same options, or write to a new folder."
                )
        atomic_write_bytes(self.out / _SETTINGS, json.dumps(ours, sort_keys=True).encode())

    def _load_finished_shard(self, split: str, path: Path) -> None:
        rel = path.relative_to(self.out).as_posix()
        videos: dict[str, tuple[int, int]] = {}
        payloads: dict[str, bytes] = {}
        order: list[str] = []
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if ext == "mp4":
                        videos[key] = (member.offset_data, member.size)
                        order.append(key)
                    elif ext == "json":
                        fh = tar.extractfile(member)
                        if fh is None:
                            raise WriterError(f"{rel}: member {member.name} is not a regular file")
                        payloads[key] = fh.read()
        except tarfile.TarError as exc:
            raise WriterError(f"{rel}: finished shard is unreadable ({exc}); delete it to rewrite") from exc
        for key in order:
            if key not in payloads:
                raise WriterError(f"{rel}: {key}.mp4 has no {key}.json; delete the shard to rewrite it")
            offset, size = videos[key]
            row = metadata_row(payloads[key], shard=rel, offset=offset, size=size, where=f"{rel}:{key}.json")
            if row["id"] in self._ids:
                raise WriterError(f"{rel}: clip {row['id']} is also in another shard")
            self._rows[split].append(row)
            self._ids.add(row["id"])
            self.resumed += 1

    # ----------------------------------------------------------------------------------------------
    # writing

    def has(self, clip_id: str) -> bool:
        """True when ``clip_id`` is already in the dataset (a finished shard, or written this session)."""
        return clip_id in self._ids

    def write(self, record: ClipRecord, video: bytes | Path | str) -> None:
        """Validate ``record`` and append it with its video to its split's current shard."""
        if self._closed:
            raise WriterError(f"clip {record.id}: writer for {self.out} is closed")
        if record.split is None:
            record = record.model_copy()
            record.split = self.split_fn(record)  # type: ignore[assignment]  # validated on assignment
        split = str(record.split)
        if record.id in self._ids:
            raise WriterError(f"clip {record.id}: already written to {self.out}; ids must be unique")
        payload = encode_record(record)
        if isinstance(video, bytes):
            size = len(video)
        else:
            video = Path(video)
            if not video.is_file():
                raise WriterError(f"clip {record.id}: video file {video} does not exist")
            size = video.stat().st_size
        if size == 0:
            raise WriterError(f"clip {record.id}: video is empty (0 bytes)")

        shard = self._open.get(split)
        expected = size + len(payload) + 4 * tarfile.BLOCKSIZE
        if shard is not None and shard.rows and shard.bytes + expected > self.shard_bytes:
            self._finish(shard)
            shard = None
        if shard is None:
            shard = self._start(split)

        tar = shard.tar
        source: IO[bytes]
        source = io.BytesIO(video) if isinstance(video, bytes) else open(video, "rb")  # noqa: SIM115
        with source, writing_to(shard.final, needed=expected):
            tar.addfile(_tarinfo(f"{record.id}.mp4", size), source)
            offset = tar.offset - (-(-size // tarfile.BLOCKSIZE)) * tarfile.BLOCKSIZE
            tar.addfile(_tarinfo(f"{record.id}.json", len(payload)), io.BytesIO(payload))
        row = metadata_row(
            payload,
            shard=shard.final.relative_to(self.out).as_posix(),
            offset=offset,
            size=size,
            where=f"clip {record.id}",
        )
        shard.rows.append(row)
        self._ids.add(record.id)

    def reject(self, input: str, stage: str, reason: str, scores: dict[str, Any] | None = None) -> None:
        """Record that ``input`` was dropped at ``stage`` and why (kept once per input and stage)."""
        key = (str(input), str(stage))
        if key in self._rejects:
            return
        row = {
            "input": key[0],
            "stage": key[1],
            "reason": str(reason),
            "scores": json.dumps(scores, sort_keys=True) if scores else None,
        }
        self._rejects[key] = row
        self._rejects_out.append(row)

    @property
    def counts(self) -> dict[str, int]:
        """Clips per split, finished shards and open shards together."""
        return {s: len(self._rows[s]) + (len(self._open[s].rows) if s in self._open else 0) for s in SPLITS}

    @property
    def rejects(self) -> list[dict[str, Any]]:
        return [self._rejects[k] for k in sorted(self._rejects)]

    def _start(self, split: str) -> _Shard:
        index = self._next_index[split]
        self._next_index[split] = index + 1
        final = self.out / shard_name(split, index)
        tmp = final.with_name(f".{final.stem}{layout.PARTIAL_SUFFIX}")
        with writing_to(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115  # closed in _finish/abort
        shard = _Shard(split=split, index=index, final=final, tmp=tmp, tar=tar)
        self._open[split] = shard
        return shard

    def _finish(self, shard: _Shard) -> None:
        with writing_to(shard.final, needed=2 * tarfile.RECORDSIZE):  # the end-of-archive blocks
            shard.tar.close()
            with open(shard.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(shard.tmp, shard.final)
        self._publish(shard.final)
        self._rows[shard.split].extend(shard.rows)
        del self._open[shard.split]
        log.debug("finished %s (%d clips)", shard.final, len(shard.rows))

    # ----------------------------------------------------------------------------------------------
    # finishing

    def abort(self) -> None:
        """Stop without finishing open shards: they stay temp files and are rewritten on resume.

        Closing cannot fail the abort: on a full disk the buffered tail of a shard or a reject line
        fails to flush again, and what the caller is told is the error that made it abort (the
        shard is discarded and the reject recorded again on resume either way)."""
        for shard in list(self._open.values()):
            with suppress(OSError):
                shard.tar.fileobj.close()  # type: ignore[union-attr]
            del self._open[shard.split]
        with suppress(OSError):
            self._rejects_out.close()
        self._closed = True
        self._drop_own_staging()

    def _publish(self, path: Path) -> None:
        """Upload ``path`` (a finished file under the staging folder) to the store, when there is one."""
        if self.remote is not None:
            publish(self.remote, path, self.remote.path(path.relative_to(self.out).as_posix()))

    def _drop_own_staging(self) -> None:
        if self._own_staging is not None:
            shutil.rmtree(self._own_staging, ignore_errors=True)

    def close(self) -> None:
        """Finish open shards, then write metadata parquet, rejects, meta/info.json and the card."""
        if self._closed:
            return
        for shard in list(self._open.values()):
            self._finish(shard)
        schema = metadata_schema()
        for split in SPLITS:
            path = self.out / metadata_path(split)
            if self._rows[split]:
                atomic_write_parquet(path, pa.Table.from_pylist(self._rows[split], schema=schema))
            elif path.exists():
                path.unlink()
            if not self._rows[split] and self.remote is not None:
                url = self.remote.path(metadata_path(split))
                if self.remote.exists(url):
                    self.remote.fs.rm(url)
        atomic_write_parquet(
            self.out / REJECTS_PATH, pa.Table.from_pylist(self.rejects, schema=rejects_schema())
        )
        self._rejects_out.close()
        info = self._info()
        atomic_write_bytes(self.out / INFO_PATH, (json.dumps(info, indent=2) + "\n").encode())
        shutil.rmtree(self.out / _PROGRESS, ignore_errors=True)
        if self.card:
            from medvideocap.dataset.card import write_card

            write_card(self.out)
        if self.remote is not None:
            _publish_all(self.remote, self.out)
        self._closed = True
        self._drop_own_staging()

    def _info(self) -> dict[str, Any]:
        from medvideocap import __version__

        counts = {s: len(rows) for s, rows in self._rows.items() if rows}
        categories: dict[str, int] = {}
        by_split: dict[str, dict[str, int]] = {}
        shards: dict[str, int] = {}
        for split, rows in self._rows.items():
            if not rows:
                continue
            by_split[split] = {}
            shards[split] = len({r["shard"] for r in rows})
            for row in rows:
                categories[row["category"]] = categories.get(row["category"], 0) + 1
                by_split[split][row["category"]] = by_split[split].get(row["category"], 0) + 1
        # Content only: a caption's created_at says when, not what, so two identical runs match.
        digest = hashlib.sha256()
        for split in SPLITS:
            content = [
                {**r, "captions": [{**c, "created_at": None} for c in r.get("captions") or []]}
                for r in self._rows[split]
            ]
            if content:
                digest.update(split.encode() + b"\0" + json.dumps(content, sort_keys=True).encode())
        recipe = self._settings()["recipe"]
        digest.update(json.dumps(recipe, sort_keys=True).encode())
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "counts": counts,
            "total": sum(counts.values()),
            "categories": dict(sorted(categories.items())),
            "categories_by_split": {s: dict(sorted(c.items())) for s, c in by_split.items()},
            "shards": shards,
            "shard_bytes": self.shard_bytes,
            "rejects": len(self._rejects),
            "recipe": recipe,
            "fingerprint": digest.hexdigest(),
            "created_with": f"medvideocap {__version__}",
        }

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ------------------------------------------------------------------------------------------------
# object storage: the staging folder and the store


def _published(path: str) -> bool:
    """Whether a dataset file of this name is ever published (not a temp file, a lock or progress)."""
    name = path.rsplit("/", 1)[-1]
    return not (
        path.startswith(f"{PROGRESS_DIR}/")
        or fnmatch(name, TEMP_GLOB)
        or fnmatch(name, LOCK_GLOB)
        or fnmatch(name, layout.PARTIAL_SHARD_GLOB)
    )


def level_staging(remote: Location, staging: Path) -> None:
    """Bring ``staging`` level with what ``remote`` holds before a resume: a file the store holds is
    downloaded where the staging copy is missing or of another size (the store is what readers see);
    a finished shard only the staging folder holds (a kill between the rename and the upload) is
    published; temporary keys a killed upload left are deleted."""
    listed = {remote.relative(url): size for url, size in remote.sizes("**").items()}
    for rel, size in listed.items():
        url = remote.path(rel)
        if not _published(rel):
            if fnmatch(rel.rsplit("/", 1)[-1], TEMP_GLOB):
                remote.fs.rm(url)
            continue
        local = staging / rel
        if local.is_file() and local.stat().st_size == size:
            continue
        with writing_to(local), atomic_path(local, fsync=False) as tmp:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            remote.fs.get_file(url, str(tmp))
    for path in sorted(staging.glob(layout.SHARDS_GLOB)):
        rel = path.relative_to(staging).as_posix()
        if rel not in listed:
            publish(remote, path, remote.path(rel))


def _publish_all(remote: Location, staging: Path) -> None:
    """Publish every finished file of ``staging`` but the shards (published as they finished), the
    card last: a reader who finds ``README.md`` finds the rest."""
    shards = set(staging.glob(layout.SHARDS_GLOB))
    files = [
        p
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p not in shards and _published(p.relative_to(staging).as_posix())
    ]
    files.sort(key=lambda p: p.relative_to(staging).as_posix() == README_PATH)
    for path in files:
        publish(remote, path, remote.path(path.relative_to(staging).as_posix()))
