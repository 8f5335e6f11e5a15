"""Engines: who runs :class:`~medvideocap.build.pipeline.Pipeline` over the pending inputs.

* ``local`` with ``workers=1``: in this process (easiest to debug), every input through one stream
  (``Pipeline.run_many``), so a batched model stage gathers the clips of several short inputs;
* ``local`` with ``workers=N``: a ``ProcessPoolExecutor`` (spawned workers, so no forked CUDA or
  decoder state), one input per task (a batch gathers the clips of that input), each worker building
  the stage functions once; with GPU stages, at most as many workers as the GPUs hold at the
  recipe's ``resources.gpus`` share, each pinned to one GPU (:func:`pool_size`);
* ``ray``: Ray Data, one task per input running every stage (``ray_address``, else ``$RAY_ADDRESS``,
  joins an existing cluster: :func:`medvideocap.dist.ray_session`).

Every engine hands finished inputs (all their outcomes) to ``on_done`` as they complete, in whatever
order; the builder journals them and sorts before writing, so the dataset does not depend on it.

Why Ray runs a whole input in one task. A Ray cluster need not share a disk: a worker on another
machine cannot write into the driver's work dir, and the driver cannot read the worker's. So a Ray
task cuts its clips into a work dir of its own (a temporary folder of the worker process), reads the
kept ones back and returns their bytes in the result rows (the Ray object store carries them); the
driver writes them to the cut-clip paths of its own work dir, where the local engine would have cut
them, before journaling the input. The driver never opens a path on a worker, and the journal and the
dataset are byte for byte the local engine's. One task per input (with the largest CPU/GPU hint of the
recipe's stages) rather than one per stage keeps the frames a stage decoded in the process where the
next stage of the same clip reads them (the per-sample frame cache), instead of shipping or decoding
them again on another node; a GPU stage then holds its GPU for the input's CPU stages too, which is the
price of never moving frames.

Inputs in object storage (``--src s3://...``) are fetched by the worker that processes them, one at a
time, to its work dir (``workdir.fetched_path``), and deleted when the input is done. Whatever an
outcome says about where a worker read a file (a decoder error naming it) is rewritten to the input's
name relative to the source and the driver's work dir (:func:`_portable`), so a dataset never depends
on the folder or machine it was built from.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from medvideocap.atomic import atomic_write_bytes
from medvideocap.build.pipeline import Outcome, Pipeline
from medvideocap.build.recipe import Recipe
from medvideocap.build.sample import Sample
from medvideocap.build.workdir import fetched_path, input_clips_dir
from medvideocap.disk import writing_to
from medvideocap.dist import ray_session
from medvideocap.locations import Location

log = logging.getLogger(__name__)
OnDone = Callable[[list[Outcome]], None]
_PIPELINES: dict[tuple[str, str], Pipeline] = {}
_SCRATCH: list[Path] = []  # this process's own work dir when it is a Ray worker (made once)


def _pipeline(recipe_json: str, work: str) -> Pipeline:
    """The stage functions of this process (built once per worker)."""
    key = (recipe_json, work)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline(Recipe.model_validate_json(recipe_json), Path(work))
    return _PIPELINES[key]


def _fetch(sample: Sample, source: Location, work: Path) -> Sample:
    """``sample`` with its input (a URL of ``source``) copied to a local file under ``work``."""
    dest = fetched_path(work, sample.key, "input" + Path(sample.input).suffix)  # our name: never ".."
    with writing_to(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with source.open(sample.path, block_size=8 << 20) as src, open(dest, "wb") as fh:
            shutil.copyfileobj(src, fh, 8 << 20)
    return Sample.from_dict({**sample.to_dict(), "path": str(dest)})


def _portable(outcomes: list[Outcome], renames: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """``outcomes`` as dicts, every ``(old, new)`` of ``renames`` replaced in their strings, in order.

    A stage's message may name the file it read (``Invalid data found ...: '/mnt/raw/a.mp4'``) or a
    cut clip (under a worker's own work dir); such a path says where a process read a file, not which
    input it was, so it becomes the input's name and the driver's work dir before anything is
    journaled. The JSON text is rewritten, which covers every field, nested ones included."""
    text = json.dumps([o.to_dict() for o in outcomes], ensure_ascii=False)
    for old, new in renames:
        if old and old != new:
            text = text.replace(_escaped(old), _escaped(new))
    result: list[dict[str, Any]] = json.loads(text)
    return result


def _escaped(text: str) -> str:
    """``text`` as it appears inside a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _run_sample(
    recipe_json: str, work: str, sample: Sample, source: Location | None, *, home: str | None = None
) -> list[dict[str, Any]]:
    """All stages over one input in this process's ``work`` dir; its outcomes as portable dicts.

    ``home`` is the driver's work dir when ``work`` is a worker's own: the outcomes' paths under
    ``work`` are given as under ``home``."""
    original = sample.path
    local = _fetch(sample, source, Path(work)) if source is not None else sample
    try:
        outcomes = _pipeline(recipe_json, work).run(local)
    finally:
        if source is not None:
            Path(local.path).unlink(missing_ok=True)
    renames = [(local.path, sample.input), (original, sample.input), (work, home or work)]
    return _portable(outcomes, renames)


def _run_here(
    pending: list[Sample], pipeline: Pipeline, work: Path, on_done: OnDone, source: Location | None
) -> None:
    """Every input through ``pipeline`` in this process, as one stream (:meth:`Pipeline.run_many`):
    a batched stage gathers clips across inputs. Each input in object storage is fetched when the
    pipeline takes it and deleted when its outcomes are handed on."""
    where: dict[str, tuple[str, str]] = {}  # input -> (the file read, its path in the listing)

    def taken() -> Iterator[Sample]:
        for sample in pending:
            local = _fetch(sample, source, work) if source is not None else sample
            where[sample.input] = (local.path, sample.path)
            yield local

    try:
        for name, outcomes in pipeline.run_many(taken()):
            read, original = where.pop(name)
            if source is not None:
                Path(read).unlink(missing_ok=True)
            renames = [(read, name), (original, name)]
            on_done([Outcome.from_dict(d) for d in _portable(outcomes, renames)])
    finally:
        if source is not None:
            for read, _ in where.values():
                Path(read).unlink(missing_ok=True)


def _run_one(
    recipe_json: str, work: str, sample: dict[str, Any], source: Location | None = None
) -> list[dict[str, Any]]:
    return _run_sample(recipe_json, work, Sample.from_dict(sample), source)


def share_cores(threads: int, gpus: tuple[str, ...] = (), started: Any = None) -> None:
    """A pool worker's thread budget: ``threads`` decoder, OpenCV and OpenMP threads (its share of the
    cores), not one per core in each of N workers. A thread count the user set in the environment
    (``OMP_NUM_THREADS``) is kept. With ``gpus`` (``CUDA_VISIBLE_DEVICES`` entries), the k-th worker
    to start (``started``: a shared counter) sees only ``gpus[k % len(gpus)]``, so the workers' model
    stages spread over the GPUs instead of all loading onto the first."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if gpus and started is not None:
        with started.get_lock():
            k = started.value
            started.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
    import cv2

    from medvideocap.media.ffmpeg import set_decode_threads

    set_decode_threads(threads)
    cv2.setNumThreads(threads)


def visible_gpus() -> tuple[str, ...]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (the variable's own
    when set, else ``0..n-1``); () without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return tuple(d for d in (x.strip() for x in env.split(",")) if d and not d.startswith("-"))
    try:
        import torch
    except ImportError:
        return ()
    return tuple(str(i) for i in range(torch.cuda.device_count()))


def pool_size(workers: int, recipe: Recipe, gpus: tuple[str, ...]) -> int:
    """Worker processes for ``workers`` asked: no more than the GPUs hold when the recipe's stages ask
    for a share of one (``resources.gpus``, as Ray would schedule them: 0.25 is four workers a GPU).
    Every worker loads the recipe's models, so 16 workers on one GPU would hold 16 copies of each."""
    per_task = max((s.resources.gpus for s in recipe.stages), default=0.0)
    if per_task <= 0 or not gpus:
        return workers
    return min(workers, len(gpus) * max(1, int(1.0 / per_task + 1e-9)))


def run_local(
    pending: list[Sample],
    recipe: Recipe,
    work: Path,
    *,
    workers: int,
    on_done: OnDone,
    source: Location | None = None,
) -> None:
    """Process ``pending`` here (``workers=1``) or in a pool of spawned processes; ``source`` is the
    object-store location the inputs' paths are URLs of (None: local files). A recipe whose stages ask
    for a GPU share gets at most as many workers as the visible GPUs hold (:func:`pool_size`), each
    pinned to one GPU."""
    recipe_json = recipe.model_dump_json()
    gpus = visible_gpus() if any(s.resources.gpus > 0 for s in recipe.stages) else ()
    size = pool_size(workers, recipe, gpus)
    if size < workers:
        log.warning(
            "%d workers asked; the recipe's stages take %g of a GPU each and %d GPU(s) are visible: "
            "running %d workers (one model copy each)",
            workers,
            max(s.resources.gpus for s in recipe.stages),
            len(gpus),
            size,
        )
    workers = size
    if workers <= 1:
        _run_here(pending, _pipeline(recipe_json, str(work)), work, on_done, source)
        return
    ctx = multiprocessing.get_context("spawn")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // workers)
    started = ctx.Value("i", 0)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=share_cores, initargs=(share, gpus, started)
    ) as pool:
        futures = [pool.submit(_run_one, recipe_json, str(work), s.to_dict(), source) for s in pending]
        try:
            for future in as_completed(futures):
                on_done([Outcome.from_dict(d) for d in future.result()])
        except BaseException:
            # A full disk (or any error) stops the build now: the inputs not started are left to the
            # rerun, not processed while the pool winds down.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ------------------------------------------------------------------------------------------------
# Ray Data: one row per input in ({"sample": json}); one row per outcome out ({"outcome": json,
# "clip": the cut clip's bytes for a kept clip, else b""}).


def _scratch() -> Path:
    """This Ray worker process's own work dir: a temporary folder on its machine, removed at exit."""
    if not _SCRATCH:
        path = Path(tempfile.mkdtemp(prefix="medvideocap-build-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _SCRATCH.append(path)
    return _SCRATCH[0]


def _ray_input(
    row: dict[str, Any], *, recipe_json: str, work: str, source: Location | None
) -> list[dict[str, Any]]:
    sample = Sample.from_dict(json.loads(row["sample"]))
    scratch = _scratch()
    try:
        outcomes = _run_sample(recipe_json, str(scratch), sample, source, home=work)
        rows = []
        for o in outcomes:
            clip = b""
            if o["stage"] is None and o["clip"] is not None:  # kept: its bytes travel with it
                own = scratch / Path(o["clip"]).relative_to(work)
                clip = own.read_bytes()
            rows.append({"outcome": json.dumps(o, ensure_ascii=False), "clip": clip})
        return rows
    finally:
        shutil.rmtree(input_clips_dir(scratch, sample.key), ignore_errors=True)


def _ray_resources(recipe: Recipe) -> dict[str, Any]:
    """The task's request: the largest CPU and GPU hints among the stages it runs."""
    cpus = max((s.resources.cpus for s in recipe.stages), default=1.0)
    gpus = max((s.resources.gpus for s in recipe.stages), default=0.0)
    return {"num_cpus": cpus, "num_gpus": gpus or None}


def run_ray(
    pending: list[Sample],
    recipe: Recipe,
    work: Path,
    *,
    address: str | None,
    on_done: OnDone,
    source: Location | None = None,
) -> None:
    if not pending:
        return
    with ray_session(address) as ray:
        ray.data.DataContext.get_current().enable_progress_bars = False
        _run_ray_inputs(ray, pending, recipe, work, on_done, source)


def _run_ray_inputs(
    ray: Any, pending: list[Sample], recipe: Recipe, work: Path, on_done: OnDone, source: Location | None
) -> None:
    import functools

    fn = functools.partial(_ray_input, recipe_json=recipe.model_dump_json(), work=str(work), source=source)
    rows = [{"sample": json.dumps(s.to_dict(), ensure_ascii=False)} for s in pending]
    ds: Any = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.flat_map(fn, **_ray_resources(recipe))
    groups: dict[str, list[Outcome]] = {}
    for row in ds.iter_rows():
        outcome = Outcome.from_dict(json.loads(row["outcome"]))
        if row["clip"] and outcome.clip is not None:  # where the local engine would have cut it
            atomic_write_bytes(work / Path(outcome.clip).relative_to(work), bytes(row["clip"]), fsync=False)
        group = groups.setdefault(outcome.input, [])
        group.append(outcome)
        if len(group) == outcome.total:
            on_done(sorted(groups.pop(outcome.input), key=Outcome.sort_key))
    if groups:
        missing = ", ".join(sorted(groups))
        raise RuntimeError(f"Ray returned incomplete results for: {missing}")
