"""``medvideocap build``: raw videos -> curated, scored, captioned hub-native dataset, by a recipe.

The work directory (default: ``OUT.build`` next to the output, laid out by
:mod:`medvideocap.build.workdir`) holds the resumable state:

    state.json                 recipe fingerprint + source folder (a different recipe is not resumed)
    journal/{key}.json         one file per finished input: all its outcomes and the input's size and
                               mtime_ns (written atomically)
    clips/{key}/{NNN}.mp4      the cut clips, until they are written into the dataset

A rerun processes again an input whose size or mtime changed, and drops the clips of an input that is
gone; either way the output is written anew (:func:`_start_output_over`), with the unchanged inputs'
clips copied back from it instead of cut again.

Processing fills the journal in any order (pool workers and Ray finish when they finish); writing
happens once every input is journaled, in sorted (input, clip index) order, through the resumable
:class:`~medvideocap.dataset.writer.DatasetWriter`. A kill while processing loses at most the inputs in
flight; a kill while writing is resumed by the writer. Either way the rerun writes the same bytes.

Object storage. ``--src`` and ``--out`` may be URLs (``s3://bucket/raw``, ``s3://bucket/ds``;
``storage_options`` reach the filesystem). The source is listed once (:mod:`medvideocap.build.remote`)
and each input fetched by the worker that processes it. The output is written in the work dir's
``output/`` folder and published file by file to the store, each through a temporary key
(:class:`~medvideocap.dataset.writer.DatasetWriter`), so a reader never sees half a shard. The work dir
itself is always a local folder, for two reasons: it holds the build's lock, a ``flock`` the kernel
drops when the build dies however it dies (a lock *object* in a store would outlive a SIGKILLed build
and leave the next run guessing), and its journal is rewritten one small file per input, which a local
disk does cheaply and atomically. The output URL is locked by a local lock file named after it
(:func:`medvideocap.lock.output_lock`): two builds on one machine exclude each other; builds on two
machines writing one prefix do not, so keep one build per output prefix. Without ``--work`` the work dir
of an object-store output is ``~/.cache/medvideocap/build/NAME-HASH`` (:func:`default_work`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from medvideocap.atomic import atomic_write_bytes, atomic_write_json
from medvideocap.build import remote
from medvideocap.build.engine import pool_size, run_local, run_ray, visible_gpus
from medvideocap.build.pipeline import SOURCE_STAGE, Outcome, scan
from medvideocap.build.recipe import Recipe, load_recipe
from medvideocap.build.sample import Sample
from medvideocap.build.stages import MissingDependencyError, check_stage
from medvideocap.build.workdir import (
    INPUTS_DIR,
    clips_dir,
    input_clips_dir,
    journal_dir,
    journal_path,
    state_path,
)
from medvideocap.dataset.layout import FUNNEL_PATH
from medvideocap.disk import writing_to
from medvideocap.hashing import short_hexdigest
from medvideocap.locations import Location, LocationError, resolve, resolve_output
from medvideocap.lock import LOCK_GLOB, output_lock
from medvideocap.media.ffmpeg import MediaError, ffmpeg_exe
from medvideocap.paths import PathLoopError, check_apart, inside, resolve_path
from medvideocap.progress import Progress as LineProgress

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The build cannot start or continue as asked; the message says what to change."""


@dataclass
class BuildResult:
    out: Path | str  # the dataset folder, or the object-store URL it was published to
    inputs: int
    resumed: int  # inputs found already finished in the journal
    changed: int  # journaled inputs whose file was replaced since: processed again
    deleted: int  # journaled inputs no longer under the source: their clips dropped
    kept: int
    rejected: int
    funnel: dict[str, Any] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)


def check_requirements(recipe: Recipe) -> None:
    """Fail before any work if a stage cannot run here (missing optional package, no ffmpeg)."""
    missing = _missing(recipe)
    if missing:
        raise MissingDependencyError("; ".join(missing))


def _missing(recipe: Recipe) -> list[str]:
    """Every start-up problem (a dry run lists them all instead of stopping at the first)."""
    problems = []
    try:
        ffmpeg_exe()
    except MediaError as exc:
        problems.append(str(exc))
    for cfg in recipe.stages:
        try:
            check_stage(cfg)
        except MissingDependencyError as exc:
            problems.append(str(exc))
    return problems


# ------------------------------------------------------------------------------------------------
# funnel


def reached(outcomes: list[Outcome], labels: list[str]) -> list[int]:
    """For each stage, how many units of one input reached it (the input before splitting, clips after)."""
    order = {label: i for i, label in enumerate(labels)}
    split = next((i for i, label in enumerate(labels) if label == "split"), -1)
    counts = []
    for i in range(len(labels)):
        if i <= split:
            counts.append(int(all(order.get(o.stage or "", len(labels)) >= i for o in outcomes)))
        else:
            counts.append(sum(1 for o in outcomes if order.get(o.stage or "", len(labels)) >= i))
    return counts


def funnel(recipe: Recipe, by_input: dict[str, list[Outcome]]) -> dict[str, Any]:
    """Count in / out / dropped per stage with the top reasons, like the paper's curation funnel, and
    where the time went: seconds per stage, the shared frame decode and clip encode, and the
    real-time factor (seconds of input per second of processing, i.e. per wall second of one busy
    worker). Times come from the journaled outcomes, so a rerun of a finished build reports the
    same numbers and a resumed one those of the run that processed each input."""
    from medvideocap.build.pipeline import DECODE, ENCODE

    labels = [s.label for s in recipe.stages]
    if any(o.stage == SOURCE_STAGE for outs in by_input.values() for o in outs):
        labels.insert(0, SOURCE_STAGE)  # entries refused before the first stage (symlinks, FIFOs)
    if any(o.stage == "record" for outs in by_input.values() for o in outs):
        labels.append("record")
    totals = [0] * len(labels)
    for outs in by_input.values():
        totals = [a + b for a, b in zip(totals, reached(outs, labels), strict=True)]
    split = labels.index("split") if "split" in labels else -1
    rows = []
    all_outcomes = [o for outs in by_input.values() for o in outs]
    kept_count = sum(o.kept for o in all_outcomes)
    spent: Counter[str] = Counter()
    for o in all_outcomes:
        spent.update({k: float(v) for k, v in (o.timings or {}).items()})
    for i, label in enumerate(labels):
        dropped = [o for o in all_outcomes if o.stage == label]
        out = totals[i + 1] if i + 1 < len(labels) else kept_count
        reasons = Counter(o.code for o in dropped)
        rows.append(
            {
                "stage": label,
                "unit": "video" if i < split or split < 0 else ("video -> clip" if i == split else "clip"),
                "in": totals[i],
                "out": out,
                "dropped": len(dropped),
                "seconds": round(spent.get(label, 0.0), 3),
                "top_reasons": [
                    {"code": code, "count": n, "example": next(o.reason for o in dropped if o.code == code)}
                    for code, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
                ],
            }
        )
    video = sum(
        next((o.input_seconds for o in outs if o.input_seconds is not None), 0.0)
        for outs in by_input.values()
    )
    busy = sum(spent.values())
    return {
        "recipe": recipe.name,
        "fingerprint": recipe.fingerprint(),
        "inputs": len(by_input),
        "clips": kept_count,
        "stages": rows,
        "time": {
            "video_seconds": round(video, 3),
            "processing_seconds": round(busy, 3),
            "decode_seconds": round(spent.get(DECODE, 0.0), 3),
            "encode_seconds": round(spent.get(ENCODE, 0.0), 3),
            "realtime_factor_per_worker": round(video / busy, 3) if busy > 0 else None,
        },
    }


def funnel_table(data: dict[str, Any]) -> Table:
    took = data.get("time") or {}
    table = Table(
        title=f"build funnel ({data['recipe']}): {data['inputs']} inputs -> {data['clips']} clips",
        caption=(
            f"{took.get('video_seconds', 0):.1f} s of video in {took.get('processing_seconds', 0):.1f} s of "
            f"processing (frames decoded once per clip: {took.get('decode_seconds', 0):.1f} s; clips "
            f"written: {took.get('encode_seconds', 0):.1f} s): {took.get('realtime_factor_per_worker') or 0:.2f}x "
            "real time per worker"
            if took
            else None
        ),
    )
    for col in ("stage", "in", "out", "dropped", "seconds", "top reasons"):
        table.add_column(col, justify="left" if col in ("stage", "top reasons") else "right")
    for row in data["stages"]:
        reasons = ", ".join(f"{r['code']} ({r['count']})" for r in row["top_reasons"])
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        table.add_row(row["stage"], str(row["in"]), str(row["out"]), str(row["dropped"]), seconds, reasons)
    return table


# ------------------------------------------------------------------------------------------------
# plan


def durations(inputs: list[Sample]) -> list[tuple[float, Sample]]:
    """(seconds, input) of every input that probes; the others are left out (the build rejects them)."""
    from medvideocap.media.probe import ProbeError, probe

    found = []
    for s in inputs:
        try:
            found.append((probe(s.path, name=s.input).duration, s))
        except ProbeError:
            continue
    return found


def plan(
    src: Path, recipe: Recipe, inputs: list[Sample], done: set[str], lengths: list[tuple[float, Sample]]
) -> dict[str, Any]:
    """What a build would do (``--dry-run``): inputs, stages, models, estimated work; ``lengths`` are
    :func:`durations` of ``inputs``."""
    seconds = sum(d for d, _ in lengths)
    readable = len(lengths)
    stages = []
    for cfg in recipe.stages:
        params = cfg.model_dump(mode="json", exclude={"resources", "stage", "name"}, exclude_defaults=False)
        stages.append(
            {"stage": cfg.label, "kind": cfg.stage, "params": params, "resources": cfg.resources.model_dump()}
        )
    min_seconds = next((getattr(s, "min_seconds", 0.0) for s in recipe.stages if s.stage == "split"), 0.0)
    return {
        "source": str(src),
        "inputs": len(inputs),
        "by_extension": dict(
            sorted(Counter(Path(s.input).suffix.lower() or "(none)" for s in inputs).items())
        ),
        "bytes": sum(Path(s.path).stat().st_size for s in inputs),
        "already_done": len(done & {s.input for s in inputs}),
        "readable_videos": readable,
        "video_seconds": round(seconds, 2),
        "max_clips": int(seconds // min_seconds) if min_seconds else readable,
        "stages": stages,
        "models": recipe.models(),
    }


def estimate(
    lengths: list[tuple[float, Sample]], recipe: Recipe, seconds: float, video_seconds: float, workers: int
) -> dict[str, Any]:
    """The wall time a build would take, from the recipe run on a sample: the first ``seconds`` of the
    longest readable input, stream-copied into a temporary folder and put through every stage here
    (model stages load their models; nothing is journaled or written to the output). The sample's
    real-time factor (input seconds per processing second) scaled to ``video_seconds`` over ``workers``;
    a sample unlike the rest (a talking head among surgeries) makes it an estimate, and says so."""
    import tempfile

    from medvideocap.build.pipeline import Pipeline
    from medvideocap.media.ffmpeg import cut

    if not lengths:
        return {"error": "no readable input to sample"}
    duration, longest = max(lengths, key=lambda pair: pair[0])
    span = min(seconds, duration)
    with tempfile.TemporaryDirectory(prefix="medvideocap-estimate-") as tmp:
        clip = Path(tmp) / "sample.mp4"
        try:  # H.264 is copied; another codec (ProRes, MPEG-2) is re-encoded for the sample's seconds
            try:
                cut(longest.path, clip, start=0.0, end=span, copy=True)
            except MediaError:
                cut(longest.path, clip, start=0.0, end=span, copy=False)
        except MediaError as exc:
            return {"error": f"cannot cut a sample of {longest.input}: {exc}"}
        sample = Sample(input=longest.input, path=str(clip), key="estimate", meta=longest.meta)
        started = time.perf_counter()
        outcomes = Pipeline(recipe, Path(tmp) / "work").run(sample)
        wall = time.perf_counter() - started
    factor = span / wall if wall > 0 else None
    one = video_seconds / factor if factor else None
    return {
        "sample": longest.input,
        "sample_seconds": round(span, 2),
        "sample_wall_seconds": round(wall, 2),
        "sample_clips_kept": sum(o.kept for o in outcomes),
        "realtime_factor_per_worker": round(factor, 3) if factor else None,
        "workers": workers,
        "estimated_wall_seconds": round(one / workers, 1) if one is not None else None,
        "note": "one sample's rate scaled to every input's seconds; model loading counted once",
    }


# ------------------------------------------------------------------------------------------------
# build


def input_stat(path: str | Path) -> dict[str, int]:
    """What tells a journaled input file from its replacement: size and ``st_mtime_ns``.

    A hash would read every byte of every (multi-GB) input on each rerun; size + mtime is what make and
    rsync trust, and it misses only a file replaced by one of the same size and the same mtime to the
    nanosecond. An input that cannot be stat'ed gets ``{}``, which matches no journal entry."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _journal_entry(path: Path, sample: Sample, clips: Path) -> tuple[list[Outcome], dict[str, int] | None]:
    """The outcomes ``sample``'s journal file holds and the input's :func:`input_stat` when they were
    journaled (None in journals of earlier versions); ValueError saying why it cannot be trusted.
    Each cut-clip path must lie inside ``clips``: the build copies those files into the dataset."""
    try:
        entry = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
    if not isinstance(entry, dict) or entry.get("input") != sample.input:
        found = entry.get("input") if isinstance(entry, dict) else None
        raise ValueError(f"it records input {found!r}, not {sample.input!r}")
    raw = entry.get("outcomes")
    if not isinstance(raw, list) or not raw or not all(isinstance(o, dict) for o in raw):
        raise ValueError("it holds no list of outcomes")
    try:
        outcomes = [Outcome.from_dict(o) for o in raw]
    except TypeError as exc:  # a missing or unknown field
        raise ValueError(f"an outcome does not fit ({exc})") from exc
    if any(o.input != sample.input for o in outcomes):
        raise ValueError(f"it holds outcomes of another input than {sample.input!r}")
    for o in outcomes:
        if o.clip is not None:  # an OutsideRootError is a ValueError
            inside(clips, os.path.relpath(o.clip, clips), where=f"clip {o.id}", what="cut clip", fix="")
    stat = entry.get("stat")
    if stat is not None and not (isinstance(stat, dict) and all(isinstance(v, int) for v in stat.values())):
        raise ValueError(f"its stat {stat!r} is not a map of integers")
    return outcomes, stat


def _journaled_outcomes(path: Path) -> list[Outcome]:
    """The outcomes in the journal file of an input that is gone (only counted); [] when unreadable."""
    try:
        entry = json.loads(path.read_bytes())
        return [Outcome.from_dict(o) for o in entry["outcomes"]]
    except (ValueError, TypeError, KeyError, AttributeError):  # JSONDecodeError is a ValueError
        return []


@dataclass
class Journaled:
    """What the work dir's journal says about the inputs :func:`scan` found this time."""

    done: dict[str, list[Outcome]]  # unchanged inputs -> their outcomes
    changed: list[str] = field(default_factory=list)  # inputs replaced since journaled: processed again
    deleted: dict[Path, list[Outcome]] = field(default_factory=dict)  # journal files of inputs now gone


def read_finished(work: Path, samples: list[Sample], stats: dict[str, dict[str, int]]) -> Journaled:
    """The ``samples`` the work dir's journal records as finished (input -> its outcomes), the inputs
    whose file changed since (``stats``: input -> :func:`input_stat` now), and the journal files of
    inputs no longer under the source. An entry without a stat (written before stats were kept) is
    trusted as it is, so work dirs of earlier builds still resume.

    Each journal file is written atomically, so a kill never leaves half of one; but the writes skip
    fsync (one per input would slow a long build), so a machine crash can leave an empty or torn file,
    and a disk or a hand edit can damage one. Such a file is not trusted and not fatal: a warning names
    it, and its input counts as not finished, so it is processed again and the file rewritten. A
    guess at its content could silently lose the input's clips; redoing it costs one input's time.
    This is :mod:`medvideocap.journal`'s policy for a torn last line (the entry is redone), applied
    per file: the journal stays one file per input (not that module's JSON lines) so that work dirs
    of earlier builds still resume."""
    found = Journaled(done={})
    for sample in samples:
        path = journal_path(work, sample.key)
        if not path.is_file():
            continue
        try:
            outcomes, stat = _journal_entry(path, sample, clips_dir(work))
        except ValueError as exc:
            log.warning("%s: damaged journal file (%s); %s is processed again", path, exc, sample.input)
            continue
        if stat is not None and stat != stats.get(sample.input):
            found.changed.append(sample.input)
        else:
            found.done[sample.input] = outcomes
    keys = {sample.key for sample in samples}
    folder = journal_dir(work)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        if path.stem not in keys:
            found.deleted[path] = _journaled_outcomes(path)
    return found


def _open_work(work: Path, recipe: Recipe, source: Path | Location) -> None:
    path = state_path(work)
    state = {"recipe": recipe.name, "fingerprint": recipe.fingerprint(), "source": str(source)}
    if path.exists():
        try:
            found = json.loads(path.read_bytes())
            if not isinstance(found, dict):
                raise ValueError(f"expected a JSON object, got {type(found).__name__}")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BuildError(
                f"{path}: unreadable build state ({exc}); pass another --work dir or delete {work} "
                "to start over"
            ) from exc
        if found.get("fingerprint") != state["fingerprint"]:
            raise BuildError(
                f"work dir {work} belongs to a build with recipe {found.get('recipe')!r} (fingerprint "
                f"{found.get('fingerprint')}), not {recipe.name!r} ({state['fingerprint']}); "
                "pass another --work dir or delete it to start over"
            )
        return
    atomic_write_json(path, state, sort_keys=True, ensure_ascii=False, fsync=False)


def build(
    src: Path | str,
    out: Path | str,
    *,
    recipe: Recipe | str | Path = "default",
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    work: Path | str | None = None,
    dry_run: bool = False,
    estimate_seconds: float = 0.0,
    keep_work: bool = False,
    follow_symlinks: bool = False,
    name: str | None = None,
    console: Console | None = None,
    storage_options: dict[str, Any] | None = None,
) -> BuildResult | dict[str, Any]:
    """Run (or with ``dry_run`` plan) a build; returns the result, or the plan for a dry run.

    Symlinks under ``src`` are refused (a ``source`` reject naming the link and its target) unless
    ``follow_symlinks``: a link can point anywhere, and a build reads what its source folder holds.
    ``name`` titles the dataset card (default: named after the recipe); the card also names the
    source folder, so a build from one's own videos never passes for MedVideoCap-55K. ``out`` and
    ``work`` must lie apart from ``src`` (:func:`medvideocap.paths.check_apart`), checked first.

    A build holds the locks of ``out`` and ``work`` while it runs (:func:`medvideocap.lock.output_lock`):
    a second build on either stops before any work with :class:`~medvideocap.lock.LockedError` naming
    the first. A full disk, a used-up quota or a read-only folder stops it with a
    :class:`~medvideocap.disk.ResourceError`; the input it was on is not journaled, so the same
    command resumes into the same bytes once there is room.

    ``src`` and ``out`` may be object-store URLs (``s3://bucket/raw``), opened with ``storage_options``;
    ``work`` is always a local folder (see the module doc).

    ``estimate_seconds`` (dry run only): run the recipe on the first that many seconds of the longest
    input (:func:`estimate`) and add the predicted wall time to the plan."""
    src_at, target, work = _places(src, out, work, storage_options)
    out = target.local or work / OUTPUT_DIR  # the folder written: the output, or its staging copy
    source: Path | Location
    if src_at is None:
        # Written into --src, the output (or the work dir's cut clips) would be scanned as input next run.
        check_apart(src, out, error=BuildError)
        check_apart(src, work, out_label="--work", error=BuildError)
        try:
            source = resolve_path(src, label="--src")
        except PathLoopError as exc:
            raise BuildError(str(exc)) from None
    else:
        source = src_at
        _check_apart_urls(src_at, target)
    console = console or Console(stderr=True)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    missing = _missing(recipe)
    if dry_run:
        if src_at is not None:
            raise BuildError(f"--dry-run plans a local --src only, not {src_at.url}")
        inputs = scan(Path(src), follow_symlinks=follow_symlinks).samples
        done = read_finished(work, inputs, {s.input: input_stat(s.path) for s in inputs}).done
        lengths = durations(inputs)  # probed once, for the plan and the estimate
        planned = {**plan(Path(src), recipe, inputs, set(done), lengths), "missing": missing}
        if estimate_seconds > 0 and not missing:
            workers_ = 1 if engine == "ray" else (workers or os.cpu_count() or 1)
            if engine != "ray" and any(st.resources.gpus > 0 for st in recipe.stages):
                workers_ = pool_size(workers_, recipe, visible_gpus())  # what run_local will start
            planned["estimate"] = estimate(
                lengths, recipe, estimate_seconds, planned["video_seconds"], workers_
            )
        return planned
    if missing:
        raise MissingDependencyError("; ".join(missing))
    if engine not in ("local", "ray"):
        raise BuildError(f"unknown engine {engine!r}; use 'local' or 'ray'")
    for label, at in (("--src", src_at), ("--out", target)):
        if at is not None and at.local is None:
            _check_reachable(at, label)
    run = _Run(
        src=src_at or Path(src),
        out=out,
        work=work,
        source=source,
        recipe=recipe,
        engine=engine,
        workers=workers,
        ray_address=ray_address,
        keep_work=keep_work,
        follow_symlinks=follow_symlinks,
        name=name,
        target=target,
        src_at=src_at,
    )
    # The lock is taken before anything is read or written; writing_to(out) names the output folder for
    # a full disk met where no writer below named the file itself.
    with output_lock(target, verb="build"), output_lock(work, verb="build"), writing_to(out):
        return _run(run, console)


OUTPUT_DIR = "output"
"""The work dir's folder where an object-store output is written before each file is published."""


def default_work(target: Location) -> Path:
    """The work dir of an output with no ``--work``: ``OUT.build`` beside a local one; for an
    object-store one, ``$XDG_CACHE_HOME/medvideocap/build/NAME-HASH`` (``~/.cache/...``), named after
    the URL, so the same command resumes on the same machine."""
    if target.local is not None:
        return target.local.with_name(target.local.name + ".build")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())
    name = target.url.rstrip("/").rsplit("/", 1)[-1]
    return cache / "medvideocap" / "build" / f"{name}-{short_hexdigest(target.url, 12)}"


def _places(
    src: Path | str, out: Path | str, work: Path | str | None, options: dict[str, Any] | None
) -> tuple[Location | None, Location, Path]:
    """The source when it is in object storage (None: a local folder), the output's location and the
    (local) work dir; a URL no build can use is a :class:`BuildError` naming it."""
    try:
        src_at: Location | None = None
        if not isinstance(src, Path):
            found = resolve(src, storage_options=options)
            if found.local is None and found.repo_id is None:  # a bare a/b is a local folder here
                src_at = found
        target = resolve_output(out, storage_options=options)
        work_at = resolve_output(work) if work else None
    except LocationError as exc:
        raise BuildError(str(exc)) from None
    if src_at is not None and src_at.scheme in ("hf", "http", "https"):
        raise BuildError(f"--src {src_at.url}: a build reads a local folder or an object-store prefix")
    if work_at is not None and work_at.local is None:
        raise BuildError(
            f"--work {work_at.url}: the work dir must be a local folder (it holds the build's lock and "
            "resume journal, which object storage cannot hold safely); pass a local --work, the output "
            "can stay in object storage"
        )
    local_work = work_at.local if work_at is not None else None
    return src_at, target, local_work if local_work is not None else default_work(target)


def _check_reachable(at: Location, label: str) -> None:
    """A :class:`BuildError` naming ``at`` (never its storage options, which may hold a secret) when its
    bucket does not exist or the store refuses the credentials, before any work starts."""
    bucket = at.root.split("/", 1)[0]
    try:
        at.fs.info(f"{at.scheme}://{bucket}")
    except FileNotFoundError:
        raise BuildError(f"{label} {at.url}: bucket {bucket!r} does not exist; create it first") from None
    except PermissionError as exc:
        raise BuildError(
            f"{label} {at.url}: the store refused these credentials ({exc}); check the backend's "
            "credentials (AWS_* variables, its config file) or --storage-option key=... secret=..."
        ) from None
    except OSError as exc:  # an unreachable endpoint (ConnectionError is an OSError)
        raise BuildError(f"{label} {at.url}: cannot reach it ({type(exc).__name__}: {exc})") from None


def _check_apart_urls(src: Location | None, out: Location) -> None:
    """:func:`~medvideocap.paths.check_apart` for URLs: the output must not be the source prefix, lie
    under it or hold it."""
    if src is None or out.local is not None or src.scheme != out.scheme:
        return
    a, b = src.root.rstrip("/") + "/", out.root.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise BuildError(
            f"--out {out.url} and --src {src.url} overlap: the source is never modified, and a rerun "
            "would read the output back as input; write the output under another prefix"
        )


@dataclass
class _Run:
    """What one build was asked for, after :func:`build` checked it."""

    src: Path | Location  # a local folder, or the source in object storage
    out: Path  # the folder the dataset is written in (in the work dir when published to a store)
    work: Path
    source: Path | Location  # src with every link followed
    recipe: Recipe
    engine: str
    workers: int | None
    ray_address: str | None
    keep_work: bool
    follow_symlinks: bool
    name: str | None
    target: Location  # where the dataset is: ``out`` itself, or the object-store URL it is published to
    src_at: Location | None = None  # the source in object storage; None: the local folder ``src``


def _run(run: _Run, console: Console) -> BuildResult:
    """The build itself, under both folders' locks."""
    src, out, work, recipe = run.src, run.out, run.work, run.recipe
    identity = {"name": run.name, "source": f"{_source_name(run.source)}/"}
    if isinstance(src, Location):
        try:
            listed = remote.scan_remote(src)
        except OSError as exc:  # refused credentials, an unreachable endpoint: name the URL only
            raise BuildError(f"--src {src.url}: cannot list it ({type(exc).__name__}: {exc})") from None
        except remote.RemoteSourceError as exc:
            raise BuildError(str(exc)) from None
        discovery, stats = listed.discovery, listed.stats
    else:
        discovery = scan(src, follow_symlinks=run.follow_symlinks)
        stats = {s.input: input_stat(s.path) for s in discovery.samples}  # taken before processing
    inputs, refused = discovery.samples, discovery.refused
    journaled = read_finished(work, inputs, stats)  # each journal file read once
    done = journaled.done
    _open_work(work, recipe, run.source)
    if journaled.changed or journaled.deleted:
        _start_output_over(out, work, journaled, {s.input: s.key for s in inputs}, console, target=run.target)
    redo = _lost_work(out, recipe, identity, done, target=run.target)
    if redo:
        console.print(f"redoing {len(redo)} processed inputs whose cut clips are gone and not yet written")
    pending = [s for s in inputs if s.input not in done or s.input in redo]
    resumed = len(inputs) - len(pending)
    labels = [s.label for s in recipe.stages]
    by_input: dict[str, list[Outcome]] = {}
    for s in inputs:
        if s.input in done and s.input not in redo:
            by_input[s.input] = done[s.input]

    started = time.perf_counter()
    # in a log (stderr no terminal) the bar below draws nothing: a line at start, every 30 s and at the end
    lines = None if console.is_terminal else LineProgress(console=console, live=False)
    line_task = lines.task("build", len(pending), unit="input", failed="") if lines is not None else None
    with (
        lines if lines is not None else contextlib.nullcontext(),
        Progress(
            TextColumn("{task.description:>16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        ) as progress,
    ):
        # the first row counts inputs done, clips kept and the ETA; one row per stage below it
        kept_so_far = [0]
        tasks = [
            progress.add_task("inputs" if i == 0 else label, total=len(pending) if i == 0 else None, note="")
            for i, label in enumerate(labels)
        ]
        keyed = {s.input: s for s in inputs}

        def on_done(outcomes: list[Outcome]) -> None:
            sample = keyed[outcomes[0].input]
            atomic_write_json(
                journal_path(work, sample.key),
                {
                    "input": sample.input,
                    "stat": stats[sample.input],
                    "outcomes": [o.to_dict() for o in outcomes],
                },
                sort_keys=True,
                ensure_ascii=False,
                fsync=False,
            )
            by_input[sample.input] = outcomes
            for task, n in zip(tasks, reached(outcomes, labels), strict=True):
                progress.advance(task, n)
            kept_so_far[0] += sum(o.kept for o in outcomes)
            progress.update(tasks[0], note=f"{kept_so_far[0]} clips kept")
            if lines is not None and line_task is not None:
                line_task.note = f"{kept_so_far[0]} clips kept"
                lines.advance(line_task, done=1)

        if resumed:
            console.print(f"resuming: {resumed} of {len(inputs)} inputs already processed in {work}")
        if run.engine == "ray":
            run_ray(pending, recipe, work, address=run.ray_address, on_done=on_done, source=run.src_at)
        else:
            workers = run.workers or os.cpu_count() or 1
            run_local(pending, recipe, work, workers=workers, on_done=on_done, source=run.src_at)

    for o in refused:
        by_input[o.input] = [o]
    names = [s.input for s in inputs] + [o.input for o in refused]
    outcomes = sorted((o for name in names for o in by_input[name]), key=Outcome.sort_key)
    summary = funnel(recipe, {name: by_input[name] for name in names})
    _write(out, recipe, identity, outcomes, summary, target=run.target)
    console.print(funnel_table(summary))
    if pending:
        wall = max(time.perf_counter() - started, 1e-9)
        video = sum(
            next((o.input_seconds for o in by_input[s.input] if o.input_seconds), 0.0) for s in pending
        )
        console.print(
            f"{len(pending)} inputs processed in {wall:.1f} s wall: {video / wall:.2f}x real time"
            + (f" ({run.workers} workers)" if (run.workers or 1) > 1 else "")
        )
    if not run.keep_work:
        shutil.rmtree(clips_dir(work), ignore_errors=True)
        shutil.rmtree(work / INPUTS_DIR, ignore_errors=True)
        if run.target.local is None:  # published: a rerun levels it with the store again
            shutil.rmtree(out, ignore_errors=True)
    return BuildResult(
        out=run.target.local or run.target.url,
        inputs=len(inputs),
        resumed=resumed,
        changed=len(journaled.changed),
        deleted=len(journaled.deleted),
        kept=summary["clips"],
        rejected=sum(not o.kept for o in outcomes),
        funnel=summary,
        outcomes=outcomes,
    )


def _source_name(source: Path | Location) -> str:
    """The source folder's name, as the card shows it (``raw`` for ``/data/raw`` and ``s3://b/raw``)."""
    return source.name if isinstance(source, Path) else source.root.rstrip("/").rsplit("/", 1)[-1]


def _writer(out: Path, recipe: Recipe, identity: dict[str, Any], target: Location | None = None) -> Any:
    """The output's writer; ``identity`` (``--name`` and source folder) rides in the stored recipe as
    ``build``, which is where the card looks for the dataset's title and source. With an object-store
    ``target``, ``out`` is the staging folder its files are published from."""
    from medvideocap.dataset.writer import DatasetWriter

    stored = {**recipe.model_dump(mode="json"), "build": identity}
    dest: Path | Location = target if target is not None and target.local is None else out
    return DatasetWriter(dest, shard_bytes=recipe.output.shard_bytes, recipe=stored, staging=out)


def _start_output_over(
    out: Path,
    work: Path,
    journaled: Journaled,
    keys: dict[str, str],
    console: Console,
    *,
    target: Location | None = None,
) -> None:
    """Inputs changed or deleted since the output was written: write the output anew.

    The writer only appends (its finished shards are a prefix of the clip sequence, which is what
    makes a resumed write byte-identical), so a changed input's new clips cannot replace its old ones
    in place, nor can a deleted input's clips be taken out. The kept clips of unchanged inputs are
    first copied back from the old output to their cut-clip paths in the work dir (a finished build
    removed the cut files), so they are written again without being cut again; a clip that cannot be
    copied back leaves its input to :func:`_lost_work`, which processes it again.

    An object-store ``target`` is first copied into ``out`` (its staging folder) to copy clips back
    from, then deleted with it."""
    from medvideocap.dataset.writer import level_staging

    store = target if target is not None and target.local is None else None
    dropped = sum(o.kept for outs in journaled.deleted.values() for o in outs)
    console.print(
        f"since the last build {len(journaled.changed)} inputs changed (processed again) and "
        f"{len(journaled.deleted)} were deleted ({dropped} of their clips dropped); "
        f"{store.url if store else out} is written anew"
    )
    if store is not None:
        out.mkdir(parents=True, exist_ok=True)
        level_staging(store, out)
    if out.exists():
        _copy_back_clips(out, work, journaled.done)
        for child in out.iterdir():  # all but the lock this build holds on it (medvideocap.lock)
            if fnmatch(child.name, LOCK_GLOB):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    if store is not None and store.exists(store.url):
        store.fs.rm(store.url, recursive=True)
    for name in journaled.changed:  # stale cut clips; processing cuts the new ones
        shutil.rmtree(input_clips_dir(work, keys[name]), ignore_errors=True)
    for path in journaled.deleted:
        shutil.rmtree(input_clips_dir(work, path.stem), ignore_errors=True)
        path.unlink(missing_ok=True)


def _copy_back_clips(out: Path, work: Path, done: dict[str, list[Outcome]]) -> None:
    """Write the kept clips of ``done`` whose cut file is gone back from ``out`` to where the journal
    says they were cut."""
    from medvideocap.dataset.hubnative import HubNativeDataset
    from medvideocap.errors import DataError

    wanted = {
        o.id: o for outs in done.values() for o in outs if o.kept and o.clip and not Path(o.clip).exists()
    }
    if not wanted:
        return
    try:
        dataset = HubNativeDataset(out)
    except (OSError, ValueError) as exc:  # an unfinished output: its inputs are processed again
        log.info("%s: cannot copy clips back (%s); their inputs are processed again", out, exc)
        return
    for split in dataset.splits:
        try:
            ids = dataset.metadata(split)["id"].to_list()
        except (OSError, ValueError) as exc:  # a damaged index: those inputs are processed again
            log.info("%s: cannot copy clips back (%s); their inputs are processed again", out, exc)
            continue
        for clip_id in ids:
            o = wanted.get(clip_id)
            if o is None or o.clip is None:
                continue
            try:  # o.clip lies inside the work dir's clips folder (checked by _journal_entry)
                atomic_write_bytes(o.clip, dataset.read_video(split, clip_id), fsync=False)
            except (DataError, OSError) as exc:
                log.info("clip %s not copied back (%s); %s is processed again", clip_id, exc, o.input)


def _lost_work(
    out: Path,
    recipe: Recipe,
    identity: dict[str, Any],
    done: dict[str, list[Outcome]],
    *,
    target: Location | None = None,
) -> set[str]:
    """Journaled inputs with a kept clip that is neither in the output nor cut in the work dir any
    more (the output was deleted after a finished build, whose clean-up removed the cut clips): they
    are processed again, so a rerun never needs a journal edited by hand."""
    unwritten = [
        (name, o)
        for name, outs in done.items()
        for o in outs
        if o.kept and (o.clip is None or not Path(o.clip).exists())
    ]
    if not unwritten:
        return set()
    if not out.exists() and (target is None or target.local is not None):
        return {name for name, _ in unwritten}
    writer = _writer(out, recipe, identity, target)  # reads what finished shards hold; writes nothing
    try:
        return {name for name, o in unwritten if not writer.has(o.id)}
    finally:
        writer.abort()


def _write(
    out: Path,
    recipe: Recipe,
    identity: dict[str, Any],
    outcomes: list[Outcome],
    summary: dict[str, Any],
    *,
    target: Location | None = None,
) -> None:
    from medvideocap.dataset.schema import ClipRecord

    with _writer(out, recipe, identity, target) as writer:
        for o in outcomes:
            if o.kept:
                if writer.has(o.id):
                    continue
                if o.clip is None or not Path(o.clip).exists():
                    raise BuildError(
                        f"clip {o.id} of {o.input}: its cut file {o.clip} vanished while writing; "
                        "run the same command again (it cuts the clip again)"
                    )
                record = ClipRecord.from_json_dict(o.record or {}, where=f"clip {o.id}")
                writer.write(record, Path(o.clip))
            else:
                writer.reject(o.reject_input, o.stage or "", o.reason or "", o.scores or None)
        atomic_write_json(out / FUNNEL_PATH, summary, sort_keys=True, ensure_ascii=False, fsync=False)
