"""Running a recipe's stages over one input, and what comes out: :class:`Outcome` rows.

Every input ends as a list of outcomes, one per clip (kept or rejected) or a single one when the
input itself is rejected. Outcomes are JSON-able so they can be journaled, shipped back from worker
processes or Ray tasks, and sorted into one deterministic order before anything is written.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medvideocap.build.recipe import Recipe
from medvideocap.build.record import to_record
from medvideocap.build.sample import FrameStore, Reject, Sample, write_clip
from medvideocap.build.stages import (
    BatchFn,
    Context,
    StageFn,
    bad_data,
    batch_size,
    batcher,
    frame_needs,
    make_stage,
    scanning,
)
from medvideocap.disk import writing_to
from medvideocap.errors import DataError
from medvideocap.media.ffmpeg import FrameNeed

log = logging.getLogger(__name__)

SIDECARS = ("metadata.jsonl", "metadata.csv")
FILE_KEYS = ("file", "file_name", "filename", "video", "path", "name")
SOURCE_STAGE = "source"  # the funnel row of entries refused before any stage
RECORD_STAGE = "record"  # the funnel row of clips whose file or record could not be made
DECODE, ENCODE = "decode", "encode"  # timings shared by the stages: frames decoded once, clip written
HOLD_BUDGET = 1 << 30  # bytes of decoded frames held for clips waiting for a batched stage, at most


@dataclass
class Outcome:
    """The fate of one clip (or of an input rejected as a whole)."""

    input: str
    index: int
    total: int
    id: str
    stage: str | None = None  # None: kept
    code: str | None = None
    reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] | None = None  # ClipRecord.to_json_dict() of a kept clip
    clip: str | None = None
    start: float | None = None
    end: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    input_seconds: float | None = None  # the input's duration, when the probe stage read it

    @property
    def kept(self) -> bool:
        return self.stage is None

    @property
    def reject_input(self) -> str:
        """What the rejects table names: the input, plus the clip span for a clip of it."""
        if self.total == 1 and self.start is None:
            return self.input
        return f"{self.input}#{self.index:03d} ({self.start or 0:.2f}-{self.end or 0:.2f} s)"

    def sort_key(self) -> tuple[str, int]:
        return self.input, self.index

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)


def kept(sample: Sample) -> Outcome:
    """The outcome of a clip that passed every stage; its clip is written first if still pending."""
    if sample.deferred:
        try:
            write_clip(sample)
        except DataError as exc:  # ffmpeg could not cut this span: the clip, not the build, fails
            return rejected(sample, Reject(RECORD_STAGE, "cut_failed", str(exc), dict(sample.scores)))
    try:
        record = to_record(sample).to_json_dict()
    except (ValidationError, ValueError) as exc:
        return rejected(
            sample, Reject(RECORD_STAGE, "invalid_record", f"{sample.clip_id}: {exc}", dict(sample.scores))
        )
    return Outcome(
        sample.input,
        sample.index,
        sample.total,
        sample.clip_id,
        scores=dict(sample.scores),
        record=record,
        clip=sample.clip,
        start=sample.start,
        end=sample.end,
        timings=dict(sample.timings),
        input_seconds=sample.input_seconds,
    )


def rejected(sample: Sample, reject: Reject) -> Outcome:
    s = reject.sample or sample
    return Outcome(
        s.input,
        s.index,
        s.total,
        s.clip_id,
        stage=reject.stage,
        code=reject.code,
        reason=printable(reject.reason),
        scores=dict(reject.scores or s.scores),
        start=s.start,
        end=s.end,
        timings=dict(s.timings),
        input_seconds=s.input_seconds,
    )


def apply_stage(label: str, fn: StageFn, sample: Sample) -> list[Sample | Reject]:
    """Run one stage on one sample; bad data (the :class:`~medvideocap.errors.DataError` family: a
    truncated file, a failed cut) rejects the sample instead of the build.

    Anything else is a bug in a stage or in our code and stops the build with its traceback: a
    ``TypeError`` turned into "clip skipped" would drop every clip silently. A full disk, a used-up
    quota or a read-only work dir stops it too (it is no verdict on the video, and a journaled reject
    would never be retried). Seconds the call booked under other names (frames decoded for the
    later stages too, ``timings['decode']``; a later stage's fold of the split's decode) are kept out
    of this stage's time, which adds to what the stage was already booked."""
    return apply_batch(label, lambda samples: [fn(samples[0])], [sample])[0]


def apply_batch(label: str, fn: BatchFn, samples: list[Sample]) -> list[list[Sample | Reject]]:
    """:func:`apply_stage` over several samples in one call of a batched stage: each sample's result
    items, in order. Bad data rejects the samples of the call (the stage's ``run_batch`` turns what
    it can pin on one clip into that clip's reject itself); the call's own seconds are shared evenly."""
    t0 = time.perf_counter()
    before = [dict(s.timings) for s in samples]
    try:
        results = fn(samples)
        if len(results) != len(samples):
            raise RuntimeError(f"stage {label!r} returned {len(results)} results for {len(samples)} samples")
    except DataError as exc:
        results = [bad_data(label, s, exc) for s in samples]
    itemised = [r if isinstance(r, list) else [r] for r in results]
    # seconds this call spent for other stages (frames decoded for all, a later stage's fold of the
    # split's decode) are booked under their names, not this stage's
    shared = sum(
        v - was.get(k, 0.0)
        for s, was in zip(samples, before, strict=True)
        for k, v in s.timings.items()
        if k != label
    )
    count = sum(max(1, len(items)) for items in itemised)
    elapsed = max(0.0, time.perf_counter() - t0 - shared) / count
    for sample, items in zip(samples, itemised, strict=True):
        for item in items or [sample]:
            target = item.sample if isinstance(item, Reject) and item.sample is not None else item
            if not isinstance(target, Sample):
                target = sample
            target.timings[label] = round(target.timings.get(label, 0.0) + elapsed, 6)
    return itemised


@dataclass
class _Step:
    label: str
    fn: StageFn
    batch: BatchFn | None = None  # the stage over several clips at once (``batch:`` > 1)
    size: int = 1
    needs: list[FrameNeed] = field(default_factory=list)  # the frames it reads (decoded before it waits)
    holds: bool = False  # a clip waiting here keeps its frames: this stage or a later one reads some


class Pipeline:
    """A recipe's stage functions, built once per process (model stages load lazily inside them)."""

    def __init__(self, recipe: Recipe, work: Path, *, hold_budget: int = HOLD_BUDGET):
        ctx = Context(work=work, scanned=scanning(list(recipe.stages)))
        self.work = work
        self.steps = [
            _Step(cfg.label, make_stage(cfg, ctx), batcher(cfg, ctx), batch_size(cfg), frame_needs(cfg))
            for cfg in recipe.stages
        ]
        self.needs = [need for cfg in recipe.stages for need in frame_needs(cfg)]
        for i, step in enumerate(self.steps):
            step.holds = any(later.needs for later in self.steps[i:])
        self.hold_budget = hold_budget

    def run(self, sample: Sample) -> list[Outcome]:
        """All stages over one input: its outcomes, in clip order (:meth:`run_many` of one input)."""
        [(_, outcomes)] = list(self.run_many([sample]))
        return outcomes

    def run_many(self, samples: Iterable[Sample]) -> Iterator[tuple[str, list[Outcome]]]:
        """All stages over each input; ``(input, its outcomes in clip order)`` as soon as the last of
        its clips is settled. A full disk met by a stage that did not name the file is a
        :class:`~medvideocap.disk.ResourceError` naming the work dir.

        Clips go through the stages one at a time (depth first), so the frames one clip's stages
        share are decoded once (:class:`~medvideocap.build.sample.FrameStore`) and dropped before the
        next clip: memory does not grow with the input. A clip that reaches a batched stage waits
        there, its frames held (if this stage or a later one reads frames), until ``batch`` clips
        wait or their frames reach ``hold_budget`` bytes; when no clip can move, the next input is
        taken (so a batch gathers the clips of several short inputs), and when none is left the
        earliest stage's batch runs as it is. Then the stage runs on them together and each goes on,
        depth first again. Inputs are read from ``samples`` one at a time, as they are needed."""
        pending = iter(samples)
        with writing_to(self.work), FrameStore(self.needs) as store:
            todo: list[tuple[int, Sample]] = []
            waiting: dict[int, list[Sample]] = {}
            live: dict[str, int] = {}  # per input: its samples still in ``todo`` or ``waiting``
            outcomes: dict[str, list[Outcome]] = {}
            finished: list[str] = []

            def leave(s: Sample, outcome: Outcome | None = None) -> None:
                if outcome is not None:
                    outcomes[s.input].append(outcome)
                    store.release(s)
                live[s.input] -= 1
                if live[s.input] == 0:
                    finished.append(s.input)

            def settle(i: int, s: Sample, items: list[Sample | Reject]) -> None:
                for item in reversed(items):  # a stack: the first clip is taken next
                    if isinstance(item, Reject):
                        outcomes[s.input].append(rejected(s, item))
                        store.release(s)
                    else:
                        todo.append((i + 1, item))
                        live[s.input] += 1
                leave(s)

            def flush(i: int) -> None:
                batch = waiting.pop(i)
                step = self.steps[i]
                assert step.batch is not None
                results = apply_batch(step.label, step.batch, batch)
                for s, items in reversed(list(zip(batch, results, strict=True))):
                    settle(i, s, items)

            while True:
                if finished:
                    for name in finished:
                        del live[name]
                        yield name, sorted(outcomes.pop(name), key=Outcome.sort_key)
                    finished.clear()
                    continue
                if not todo:
                    sample = next(pending, None)
                    if sample is not None:
                        todo.append((0, sample))
                        live[sample.input], outcomes[sample.input] = 1, []
                    elif waiting:  # every clip waits for a batch and no input is left
                        flush(min(waiting))
                    else:
                        break
                    continue
                i, s = todo.pop()
                if i == len(self.steps):
                    leave(s, kept(s))
                    continue
                step = self.steps[i]
                if step.batch is None:
                    settle(i, s, apply_stage(step.label, step.fn, s))
                    continue
                try:
                    if step.holds:
                        store.hold(s, step.needs)  # its frames decoded now, kept while it waits
                except DataError as exc:
                    settle(i, s, [bad_data(step.label, s, exc)])
                    continue
                waiting.setdefault(i, []).append(s)
                if len(waiting[i]) >= step.size or store.held_bytes() >= self.hold_budget:
                    flush(i)


# ------------------------------------------------------------------------------------------------
# inputs


def _slug(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_-]`` made one ``_``, ends trimmed."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")


def _key_of(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    key = _slug(stem) or "video"
    return key if key[0].isalnum() else f"v{key}"


def read_sidecar(src: Path) -> dict[str, dict[str, Any]]:
    """Sidecar rows by the file they describe (relative path or bare file name)."""
    rows: list[dict[str, Any]] = []
    for name in SIDECARS:
        path = src / name
        if not path.exists():
            continue
        if name.endswith(".jsonl"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: not a JSON object ({exc})") from exc
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                rows.extend(csv.DictReader(fh))
    by_file: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, 1):
        found = next((str(row[k]) for k in FILE_KEYS if row.get(k)), None)
        if found is None:
            raise ValueError(f"{src} sidecar row {n}: no file column (one of {', '.join(FILE_KEYS)})")
        by_file[found] = {k: v for k, v in row.items() if k not in FILE_KEYS}
    return by_file


def printable(text: str) -> str:
    """``text`` as valid Unicode: bytes that are not UTF-8 (a file name's, kept by Python as lone
    surrogates) become ``\\xNN`` escapes, so records, journals and parquet tables can hold it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Discovery:
    """What :func:`scan` found: the inputs to build, and entries refused before any stage (symlinks
    not followed, FIFOs and other non-regular files) as ``source`` rejects."""

    samples: list[Sample]
    refused: list[Outcome]


def _refuse(rel: str, key: str, code: str, detail: str) -> Outcome:
    return Outcome(rel, 0, 1, f"{key}-000", stage=SOURCE_STAGE, code=code, reason=f"{code}: {detail}")


def _entries(src: Path, follow_symlinks: bool) -> tuple[list[Path], list[tuple[Path, str, str]]]:
    """Files under ``src`` (sorted like ``sorted(rglob)``) and refused entries (path, code, detail).

    A symlink is not followed unless ``follow_symlinks``: reading it would take a build outside the
    folder it was pointed at. Followed directory links are walked once (cycles end there)."""
    root = src.resolve()
    files: list[Path] = []
    refused: list[tuple[Path, str, str]] = []
    seen_dirs: set[Path] = set()

    def unreadable(exc: OSError) -> None:
        path = Path(exc.filename)
        refused.append((path, "unreadable", f"{printable(str(path))}: {printable(exc.strerror or str(exc))}"))

    for top, dirs, names in os.walk(src, onerror=unreadable, followlinks=follow_symlinks):
        here = Path(top)
        seen_dirs.add(here.resolve())
        kept_dirs = []
        for d in sorted(dirs):
            path = here / d
            if d.startswith("."):
                continue
            if path.is_symlink():
                if not follow_symlinks:
                    refused.append((path, "symlink", _link_detail(path, root)))
                    continue
                if path.resolve() in seen_dirs:  # a link back up the tree: walked already
                    continue
            kept_dirs.append(d)
        dirs[:] = kept_dirs
        for name in names:
            path = here / name
            if name.startswith(".") or name in SIDECARS:
                continue
            if path.is_symlink():
                if _loops(path):  # never readable, followed or not: say so, not "pass --follow-symlinks"
                    target = printable(os.readlink(path))
                    detail = (
                        f"{printable(str(path))} is a symlink loop (-> {target} leads back to itself); "
                        "skipped, the other inputs are built: fix or remove the link"
                    )
                    log.warning("%s", detail)
                    refused.append((path, "symlink_loop", detail))
                    continue
                if not follow_symlinks:
                    refused.append((path, "symlink", _link_detail(path, root)))
                    continue
                if not path.exists():
                    refused.append((path, "broken_symlink", _link_detail(path, root)))
                    continue
            if not path.is_file():
                detail = f"{printable(str(path))} is not a regular file (a FIFO, socket or device)"
                refused.append((path, "not_regular_file", detail))
                continue
            files.append(path)
    return sorted(files), sorted(refused)


def _loops(path: Path) -> bool:
    """True when following ``path`` never ends (ELOOP). ``Path.exists()`` says False for it, and
    ``Path.resolve()`` raises ``RuntimeError`` (``OSError`` from Python 3.13), so ask ``os.stat``."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _link_detail(path: Path, root: Path) -> str:
    target = Path(os.path.realpath(path))
    where = "inside" if target == root or root in target.parents else "outside"
    return (
        f"{printable(str(path))} is a symlink to {printable(str(os.readlink(path)))} ({where} the source "
        "folder); not followed: pass --follow-symlinks to read it"
    )


def scan(src: Path, *, follow_symlinks: bool = False) -> Discovery:
    """Every file under ``src`` (except sidecars and hidden files), sorted, with its sidecar row.

    ``Sample.input`` is the path relative to ``src`` made :func:`printable` (unique within the build);
    ``Sample.path`` keeps the real name, whatever its bytes, to open the file."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    sidecar = read_sidecar(src)
    files, refused_entries = _entries(src, follow_symlinks)
    raw_rels = [p.relative_to(src).as_posix() for p in files]
    rels = [printable(r) for r in raw_rels]
    counts = Counter(rels)
    # an escaped name equal to a real one (a file literally named "a\xff.mp4"): tell them apart by hex
    rels = [
        r if counts[r] == 1 or r == raw else f"{r} [{os.fsencode(raw).hex()}]"
        for r, raw in zip(rels, raw_rels, strict=True)
    ]
    keys = [_key_of(r) for r in rels]
    samples = []
    for path, rel, key in zip(files, rels, keys, strict=True):
        if keys.count(key) > 1:  # a.mp4 and a.mov: keep both, tell them apart by extension
            key = _slug(rel)
        meta = sidecar.get(rel) or sidecar.get(path.name) or {}
        samples.append(Sample(input=rel, path=str(path.resolve()), key=key, meta=dict(meta)))
    unmatched = sorted(set(sidecar) - set(rels) - {p.name for p in files})
    for name in unmatched:
        log.warning("%s: sidecar names %r but no such file exists", src, name)
    refused = []
    for path, code, detail in refused_entries:
        rel = printable(path.relative_to(src).as_posix())
        refused.append(_refuse(rel, _key_of(rel), code, detail))
    return Discovery(samples, refused)


def discover(src: Path, *, follow_symlinks: bool = False) -> list[Sample]:
    """The inputs :func:`scan` finds under ``src`` (refused entries left out)."""
    return scan(src, follow_symlinks=follow_symlinks).samples
