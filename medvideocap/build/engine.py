"""Engines: who runs :class:`~medvideocap.build.pipeline.Pipeline` over the pending inputs.

* ``local`` with ``workers=1``: in this process (easiest to debug);
* ``local`` with ``workers=N``: a ``ProcessPoolExecutor`` (spawned workers, so no forked CUDA or
  decoder state), one input per task, each worker building the stage functions once;
* ``ray``: Ray Data, one ``flat_map`` per stage carrying that stage's CPU/GPU hints, so GPU stages get
  GPU workers and the rest stay on CPUs; ``ray_address`` (else ``$RAY_ADDRESS``) joins an existing
  cluster (:func:`medvideocap.dist.ray_session`).

Every engine hands finished inputs (all their outcomes) to ``on_done`` as they complete, in whatever
order; the builder journals them and sorts before writing, so the dataset does not depend on it.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from medvideocap.build.pipeline import Outcome, Pipeline, apply_stage, kept, rejected
from medvideocap.build.recipe import Recipe
from medvideocap.build.sample import Reject, Sample
from medvideocap.disk import writing_to
from medvideocap.dist import ray_session

OnDone = Callable[[list[Outcome]], None]
_PIPELINES: dict[tuple[str, str], Pipeline] = {}


def _pipeline(recipe_json: str, work: str) -> Pipeline:
    """The stage functions of this process (built once per worker)."""
    key = (recipe_json, work)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline(Recipe.model_validate_json(recipe_json), Path(work))
    return _PIPELINES[key]


def _run_one(recipe_json: str, work: str, sample: dict[str, Any]) -> list[dict[str, Any]]:
    return [o.to_dict() for o in _pipeline(recipe_json, work).run(Sample.from_dict(sample))]


def run_local(pending: list[Sample], recipe: Recipe, work: Path, *, workers: int, on_done: OnDone) -> None:
    recipe_json = recipe.model_dump_json()
    if workers <= 1:
        for sample in pending:
            on_done([Outcome.from_dict(d) for d in _run_one(recipe_json, str(work), sample.to_dict())])
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_run_one, recipe_json, str(work), s.to_dict()) for s in pending]
        try:
            for future in as_completed(futures):
                on_done([Outcome.from_dict(d) for d in future.result()])
        except BaseException:
            # A full disk (or any error) stops the build now: the inputs not started are left to the
            # rerun, not processed while the pool winds down.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ------------------------------------------------------------------------------------------------
# Ray Data: rows are {"sample": json or "", "outcome": json or ""}; a row with an outcome is finished


def _ray_stage(row: dict[str, str], *, recipe_json: str, work: str, index: int) -> list[dict[str, str]]:
    if row["outcome"]:
        return [row]
    label, fn = _pipeline(recipe_json, work).stages[index]
    sample = Sample.from_dict(json.loads(row["sample"]))
    out = []
    with writing_to(work):
        items = apply_stage(label, fn, sample)
    for item in items:
        if isinstance(item, Reject):
            out.append({"sample": "", "outcome": json.dumps(rejected(sample, item).to_dict())})
        else:
            out.append({"sample": json.dumps(item.to_dict()), "outcome": ""})
    return out


def _ray_finish(row: dict[str, str]) -> dict[str, str]:
    if row["outcome"]:
        return row
    return {"sample": "", "outcome": json.dumps(kept(Sample.from_dict(json.loads(row["sample"]))).to_dict())}


def run_ray(
    pending: list[Sample], recipe: Recipe, work: Path, *, address: str | None, on_done: OnDone
) -> None:
    if not pending:
        return
    with ray_session(address) as ray:
        ray.data.DataContext.get_current().enable_progress_bars = False
        _run_ray_stages(ray, pending, recipe, work, on_done)


def _run_ray_stages(ray: Any, pending: list[Sample], recipe: Recipe, work: Path, on_done: OnDone) -> None:
    import functools

    recipe_json = recipe.model_dump_json()
    rows = [{"sample": json.dumps(s.to_dict()), "outcome": ""} for s in pending]
    ds: Any = ray.data.from_items(rows, override_num_blocks=len(rows))
    for i, cfg in enumerate(recipe.stages):
        fn = functools.partial(_ray_stage, recipe_json=recipe_json, work=str(work), index=i)
        ds = ds.flat_map(fn, num_cpus=cfg.resources.cpus, num_gpus=cfg.resources.gpus or None)
    ds = ds.map(_ray_finish)
    groups: dict[str, list[Outcome]] = {}
    for row in ds.iter_rows():
        outcome = Outcome.from_dict(json.loads(row["outcome"]))
        group = groups.setdefault(outcome.input, [])
        group.append(outcome)
        if len(group) == outcome.total:
            on_done(sorted(groups.pop(outcome.input), key=Outcome.sort_key))
    if groups:
        missing = ", ".join(sorted(groups))
        raise RuntimeError(f"Ray returned incomplete results for: {missing}")
