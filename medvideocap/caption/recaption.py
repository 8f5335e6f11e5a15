"""Re-caption a dataset with a multimodal LLM, resumably, keeping the original captions.

A run lives in one output folder::

    OUT/run.json        the settings (source, backend, model, template, frames, caption names)
    OUT/journal.jsonl   one line per clip: new captions with provenance, or the failure, plus raw replies
    OUT/summary.json    counts of the last invocation
    OUT/dataset/        with --write: a new hub-native dataset, original + new captions, same video bytes

The journal is the source of truth: a rerun after a kill captions only the ids it lacks, and
``--write`` builds the dataset from it. The source dataset is only ever read. A job with failed clips
counts as failed (:meth:`RecaptionSummary.failure`, the CLI's exit status) although everything
captioned is kept. Timestamps (``created_at``, ``finished_at``) are provenance, not content: the
dataset's fingerprint leaves them out, so two identical runs give the same fingerprint.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medvideocap.atomic import atomic_write_json
from medvideocap.caption import BaseCaptioner, FrameError, load_template, make_captioner, sample_frames
from medvideocap.caption.journal import Journal
from medvideocap.caption.where import compile_where
from medvideocap.dataset.schema import Caption, ClipRecord
from medvideocap.dataset.source import ClipSource, open_source
from medvideocap.disk import stops_the_run, writing_to
from medvideocap.dist import ray_session
from medvideocap.errors import DataError
from medvideocap.hashing import short_hexdigest
from medvideocap.lock import output_lock
from medvideocap.paths import check_apart

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
SUMMARY_FILE = "summary.json"
DATASET_DIR = "dataset"
WRITE_STATE_FILE = "dataset_state.json"  # clip id -> digest of the journal entry written for it
# Settings that change what a caption means: a resumed run must not mix two of them in one journal.
_PINNED = ("backend", "model", "template", "frames", "name_prefix")


class RecaptionError(ValueError):
    """A run that cannot start or continue as asked; the message says what to change."""


def model_short_name(model: str) -> str:
    """``Qwen/Qwen2.5-VL-7B-Instruct`` -> ``qwen2.5-vl-7b-instruct``: the model part of new caption names."""
    tail = Path(model.rstrip("/")).name or model
    return re.sub(r"[^a-z0-9.\-_]+", "-", tail.lower()).strip("-") or "model"


@dataclass
class RecaptionSummary:
    selected: int = 0
    already_done: int = 0
    captioned: int = 0
    failed: int = 0
    frame_errors: int = 0
    journal: str = ""
    dataset: str | None = None
    caption_names: list[str] = field(default_factory=list)
    seconds: float = 0.0
    max_backend_failures: int = 20
    backend_failure_streak: int = 0
    ok_total: int = 0  # selected clips whose journal entry holds new captions (this run or earlier)
    failed_total: int = 0  # selected clips whose journal entry is a failure

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def failure(self, max_failures: int = 0) -> str | None:
        """Why the job must exit non-zero, or None. Judged on the journal (this run and earlier ones
        alike), so a rerun of a failed job fails again until it is fixed or its failures accepted:
        no clip selected, no clip captioned, or more than ``max_failures`` clips failed."""
        if self.selected == 0:
            return "no clip was selected (check --where and --limit): nothing was captioned"
        if self.ok_total == 0:
            return (
                f"no clip was captioned: all {self.failed_total} attempted failed (reasons in {self.journal})"
            )
        if self.failed_total > max_failures:
            return (
                f"{self.failed_total} of {self.selected} clips failed (reasons in {self.journal}); the "
                f"{self.ok_total} captioned are kept. Rerun with --retry-failed, or accept up to N failed "
                "clips with --max-failures N"
            )
        return None


def caption_items(
    captioner: BaseCaptioner, clips: ClipSource, indices: Sequence[int], *, template: str, frames: int
) -> list[dict[str, Any]]:
    """Journal entries for a batch of clips (``indices`` of ``clips``): decode frames, caption, and
    describe the outcome.

    The one unit of work both engines run (in a thread here, in a Ray actor for ``--engine ray``).
    A clip with bad data (its member unreadable, its video undecodable: the
    :class:`~medvideocap.errors.DataError` family, or no frames) gets a failure entry and the batch goes
    on; any other exception is a bug and stops the run with its traceback, as does a full disk.
    """
    entries: list[dict[str, Any] | None] = [None] * len(indices)
    ready: list[tuple[int, list[Any], list[float], ClipRecord]] = []
    records = [clips.record(i) for i in indices]
    for k, (i, record) in enumerate(zip(indices, records, strict=True)):
        read, _, _ = clips.reader(i)
        try:
            images, times = sample_frames(read(), frames)
            ready.append((k, images, times, record))
        except (DataError, FrameError) as exc:  # a bad clip is recorded, the batch goes on
            if stops_the_run(exc):
                raise  # a full disk is no fault of the clip: recorded as failed, it would not be retried
            entries[k] = _entry(
                record, ok=False, final=True, error=f"frames: {type(exc).__name__}: {exc}", raw="", attempts=0
            )
    if ready:
        results = captioner.caption_batch([(im, rec) for _, im, _, rec in ready], template=template)
        for (k, _, times, _), res in zip(ready, results, strict=True):
            entries[k] = _entry(
                records[k],
                ok=res.ok,
                final=res.final,
                error=res.error,
                raw=res.raw,
                attempts=res.attempts,
                history=res.history,
                captions=[c.model_dump(mode="json") for c in res.captions],
                timestamps=times,
            )
    return [e for e in entries if e is not None]


def _entry(record: ClipRecord, **fields: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "split": record.split,
        "captions": fields.pop("captions", []),
        "history": fields.pop("history", []),
        "frame_timestamps": fields.pop("timestamps", None),
        "finished_at": datetime.now(UTC).isoformat(),
        **fields,
    }


def _check_run(out: Path, settings: dict[str, Any]) -> None:
    run_file = out / RUN_FILE
    if run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        changed = [k for k in _PINNED if old.get(k) != settings.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise RecaptionError(
                f"{out} holds a run with other settings ({diffs}); resume it with the same settings or "
                "use a new --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, settings, sort_keys=True, newline=False, fsync=False)


def recaption(
    source: str | Path,
    out: str | Path,
    *,
    backend: str,
    template: str = "detailed_brief",
    frames: int = 8,
    limit: int | None = None,
    where: str | None = None,
    name_prefix: str | None = None,
    write: bool = False,
    retry_failed: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    source_revision: str | None = None,
    progress: bool = False,
    captioner: BaseCaptioner | None = None,
    max_backend_failures: int = 20,
    **backend_options: Any,
) -> RecaptionSummary:
    """Caption the selected clips of ``source`` that the journal in ``out`` lacks; optionally ``write``.

    ``backend_options`` go to :func:`make_captioner` (``model``, ``revision``, ``endpoint``,
    ``concurrency`` ...); ``source_revision`` is the Hub revision of ``source`` when it is a repo id.
    ``engine="ray"`` joins the Ray cluster at ``ray_address`` (else ``$RAY_ADDRESS``, else a local one).
    Pass ``captioner`` to reuse one already built (tests, notebooks); its ``name_prefix`` is set to
    this run's caption-name prefix.

    Clips whose reply failed hygiene or whose video does not decode are settled (``retry_failed``
    asks again); clips the backend failed on (HTTP errors, timeouts) are asked again by any rerun, and
    ``max_backend_failures`` of them in a row stop the run with the backend's error.

    The run holds ``out``'s lock (:func:`medvideocap.lock.output_lock`): a second run on it stops at
    once with :class:`~medvideocap.lock.LockedError`. A full disk, a used-up quota or a read-only
    ``out`` stops it with a :class:`~medvideocap.disk.ResourceError`; the rerun captions only what
    the journal lacks.
    """
    started = time.monotonic()
    out = Path(out)
    if engine not in ("local", "ray"):
        raise RecaptionError(f"unknown engine {engine!r}; expected 'local' or 'ray'")
    check_apart(source, out, src_label="the source", error=RecaptionError)
    tmpl = load_template(template)
    predicate = compile_where(where) if where else None
    model = (
        captioner.model
        if captioner is not None
        else str(backend_options.get("model") or _default_model(backend))
    )
    prefix = name_prefix or f"{model_short_name(model)}/{tmpl.tag}"
    settings = {
        "source": str(source),
        "backend": backend,
        "model": model,
        "template": tmpl.tag,
        "frames": frames,
        "name_prefix": prefix,
        "started_at": datetime.now(UTC).isoformat(),
    }
    # One run per --out (medvideocap.lock), taken before anything is read or written; writing_to(out)
    # names the run folder for a full disk met where no writer below named the file itself.
    with output_lock(out, verb="recaption"), writing_to(out):
        _check_run(out, settings)

        clips = open_source(source, None, revision=source_revision)
        if clips.problems:
            log.warning(
                "%s: %d problems found opening it (run `medvideocap validate`)", source, len(clips.problems)
            )
        ids = clips.ids
        selected: list[int] = []
        for i in range(len(clips)):
            if predicate is not None and not predicate(clips.record(i)):
                continue
            selected.append(i)
            if limit is not None and len(selected) >= limit:
                break

        summary = RecaptionSummary(
            max_backend_failures=max_backend_failures,
            selected=len(selected),
            journal=str(out / JOURNAL_FILE),
            caption_names=[f"{prefix}/{o.key}" for o in tmpl.outputs],
        )
        with Journal(out / JOURNAL_FILE) as journal:
            skip = journal.ok_ids() if retry_failed else journal.settled_ids()
            todo = [i for i in selected if ids[i] not in skip]
            summary.already_done = len(selected) - len(todo)
            if todo:  # the model is loaded only when there is work: a finished run resumes instantly
                if engine == "ray":
                    _run_ray(
                        todo,
                        ids,
                        journal,
                        summary,
                        source,
                        source_revision,
                        backend,
                        template,
                        frames,
                        prefix,
                        backend_options,
                        ray_address,
                    )
                else:
                    owned = captioner is None
                    cap = captioner or make_captioner(backend, **backend_options)
                    cap.name_prefix = prefix  # new captions sit next to the originals under their own names
                    try:
                        _run_local(cap, clips, todo, journal, summary, template, frames, progress)
                    finally:
                        if owned:
                            cap.close()
            settled = [journal.entries[ids[i]] for i in selected if ids[i] in journal.entries]
            summary.ok_total = sum(1 for e in settled if e.get("ok"))
            summary.failed_total = len(settled) - summary.ok_total
            if write:
                summary.dataset = str(write_dataset(clips, selected, journal, out / DATASET_DIR, settings))
        summary.seconds = round(time.monotonic() - started, 3)
        atomic_write_json(out / SUMMARY_FILE, summary.to_json(), newline=False, fsync=False)
        return summary


def _default_model(backend: str) -> str:
    if backend == "openai":
        from medvideocap.caption.openai_api import DEFAULT_MODEL

        return DEFAULT_MODEL
    from medvideocap.caption.local import DEFAULT_MODEL as LOCAL_DEFAULT

    return LOCAL_DEFAULT


def _record(entry: dict[str, Any], journal: Journal, summary: RecaptionSummary) -> None:
    journal.append(entry)
    if entry["ok"]:
        summary.captioned += 1
        summary.backend_failure_streak = 0
        return
    summary.failed += 1
    if str(entry.get("error", "")).startswith("frames:"):
        summary.frame_errors += 1
    log.warning("clip %s: caption failed: %s", entry["id"], entry.get("error"))
    if entry.get("final", True):
        return
    summary.backend_failure_streak += 1
    if summary.backend_failure_streak >= summary.max_backend_failures:
        # A wrong model name, key or endpoint fails every clip alike: stop instead of journaling a
        # whole dataset of failures. These entries are not final, so the next run asks again.
        raise RecaptionError(
            f"{summary.backend_failure_streak} clips in a row failed in the backend, the last "
            f"({entry['id']}) with: {entry.get('error')}; fix the backend settings and rerun "
            "(finished clips are kept, these are asked again)"
        )


def _progress_bar() -> Any:
    """The run's progress on stderr (:class:`medvideocap.progress.Progress`): rich's bar on a terminal,
    else a line at least every 30 s (also while a slow backend answers nothing), with s/caption below one
    caption a second and an ETA."""
    from medvideocap.progress import Progress

    return Progress()


def _run_local(
    captioner: BaseCaptioner,
    clips: ClipSource,
    todo: list[int],
    journal: Journal,
    summary: RecaptionSummary,
    template: str,
    frames: int,
    progress: bool,
) -> None:
    """Threads run :func:`caption_items` on chunks; only this thread touches the journal."""
    size = max(1, captioner.batch_size)
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    workers = max(1, captioner.parallelism)
    bar = _progress_bar() if progress else None
    task = bar.task("recaption", len(todo), unit="caption") if bar else None
    if bar:
        bar.start()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: set[Future[list[dict[str, Any]]]] = set()
            order: dict[Future[list[dict[str, Any]]], int] = {}
            it = iter(chunks)
            while True:
                while len(pending) < 2 * workers:
                    chunk = next(it, None)
                    if chunk is None:
                        break
                    fut = pool.submit(
                        caption_items, captioner, clips, chunk, template=template, frames=frames
                    )
                    order[fut] = len(order)
                    pending.add(fut)
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                # in submission order: what finished before a chunk that raised (a bug) is journaled first
                for fut in sorted(done, key=order.__getitem__):
                    for entry in fut.result():
                        _record(entry, journal, summary)
                if bar is not None and task is not None:
                    n, failed = summary.captioned + summary.failed, summary.failed
                    bar.advance(task, done=n - task.done, failed=failed - task.failed)
    finally:
        if bar:
            bar.stop()


def _run_ray(
    todo: list[int],
    ids: Sequence[str],
    journal: Journal,
    summary: RecaptionSummary,
    source: str | Path,
    revision: str | None,
    backend: str,
    template: str,
    frames: int,
    prefix: str,
    options: dict[str, Any],
    ray_address: str | None = None,
) -> None:
    """Ray Data: actors each build a captioner and open the source once, and run :func:`caption_items`
    on batches of clip indices (the source's order is deterministic; each row carries its id too, checked
    by the actor); the driver alone writes the journal, so resume works exactly as with the local engine."""
    with ray_session(ray_address) as ray:
        rows = ray.data.from_items([{"index": i, "id": ids[i]} for i in todo])
        options = dict(options)
        actors = int(options.pop("ray_actors", 1))
        # A local VLM wants a GPU per actor when the cluster has any; a CPU-only cluster still runs it.
        gpus = options.pop("ray_gpus_per_actor", None)
        if gpus is None:
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            gpus = 1 if backend == "transformers" and has_gpu and options.get("device") != "cpu" else 0
        if backend == "openai":  # a batch's requests run concurrently inside the actor
            batch = int(options.pop("batch_size", options.get("concurrency", 8)))
        else:
            batch = int(options.get("batch_size", 4))

        class _CaptionFn:
            def __init__(self) -> None:
                self.captioner = make_captioner(backend, **{**options, "name_prefix": prefix})
                self.clips = open_source(source, None, revision=revision)
                self.ids = self.clips.ids

            def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
                indices = [int(i) for i in batch["index"]]
                for i, clip_id in zip(indices, batch["id"], strict=True):
                    if self.ids[i] != str(clip_id):
                        raise RecaptionError(
                            f"{source}: clip {i} is {self.ids[i]!r} on this worker, {clip_id!r} on the driver; "
                            "the source changed during the run"
                        )
                entries = caption_items(self.captioner, self.clips, indices, template=template, frames=frames)
                return {"entry": [json.dumps(e, default=str) for e in entries]}

        results = rows.map_batches(
            _CaptionFn, batch_size=batch, concurrency=actors, num_gpus=gpus, batch_format="numpy"
        )
        for row in results.iter_rows():
            _record(json.loads(row["entry"]), journal, summary)


def entry_digest(entry: dict[str, Any]) -> str:
    """What a journal entry contributes to a written dataset (its outcome and captions, in name order),
    as a short stable id: ``write_dataset`` compares it with the state it wrote last time to find clips
    whose captions changed since (``--retry-failed``) and rebuild rather than append."""
    captions = sorted((c["name"], c["text"]) for c in entry.get("captions", []))
    return short_hexdigest(json.dumps([entry.get("ok"), captions]))


def write_dataset(
    clips: ClipSource, selected: Sequence[int], journal: Journal, dest: Path, settings: dict[str, Any]
) -> Path:
    """A new hub-native dataset: each journaled clip with its original captions plus the new ones,
    the video bytes copied unchanged, the split kept. Failed clips keep only their original captions
    (the run's journal says why).

    Resumable through the writer; clips journaled since the last write are added. When a clip already
    written has changed in the journal (``--retry-failed``), the dataset is rebuilt beside the old one
    and swapped in, since a written shard is never edited in place.
    """
    from medvideocap.dataset.writer import DatasetWriter

    recipe = {
        "recaption": {
            k: settings[k] for k in ("source", "backend", "model", "template", "frames", "name_prefix")
        }
    }
    state_file = dest.parent / WRITE_STATE_FILE
    ids = clips.ids
    digests = {ids[i]: entry_digest(journal.entries[ids[i]]) for i in selected if ids[i] in journal.entries}
    written: dict[str, str] = {}
    if state_file.exists() and dest.exists():
        written = json.loads(state_file.read_text(encoding="utf-8"))
    target = dest
    stale = [i for i, d in written.items() if digests.get(i, d) != d]
    if stale:
        log.info(
            "%d written clips changed in the journal (e.g. %s); rebuilding %s", len(stale), stale[0], dest
        )
        target = dest.with_name(dest.name + ".rebuild")
        written = {}
    with DatasetWriter(target, recipe=recipe) as writer:
        for i in selected:
            clip_id = ids[i]
            entry = journal.entries.get(clip_id)
            if entry is None:
                continue
            written[clip_id] = digests[clip_id]
            if writer.has(clip_id):
                continue
            record = clips.record(i)
            for data in entry.get("captions", []):
                record = record.with_caption(Caption.model_validate(data))
            read, _, _ = clips.reader(i)
            writer.write(record, read())
    if target != dest:
        old = dest.with_name(dest.name + ".old")
        dest.replace(old)
        target.replace(dest)
        shutil.rmtree(old)
    atomic_write_json(state_file, written, indent=None, sort_keys=True, newline=False, fsync=False)
    return dest
