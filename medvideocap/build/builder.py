"""``medvideocap build``: raw videos -> curated, scored, captioned hub-native dataset, by a recipe.

The work directory (default: ``OUT.build`` next to the output, laid out by
:mod:`medvideocap.build.workdir`) holds the resumable state:

    state.json                 recipe fingerprint + source folder (a different recipe is not resumed)
    journal/{key}.json         one file per finished input: all its outcomes (written atomically)
    clips/{key}/{NNN}.mp4      the cut clips, until they are written into the dataset

Processing fills the journal in any order (pool workers and Ray finish when they finish); writing
happens once every input is journaled, in sorted (input, clip index) order, through the resumable
:class:`~medvideocap.dataset.writer.DatasetWriter`. A kill while processing loses at most the inputs in
flight; a kill while writing is resumed by the writer. Either way the rerun writes the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medvideocap.atomic import atomic_write_json
from medvideocap.build.engine import run_local, run_ray
from medvideocap.build.pipeline import SOURCE_STAGE, Outcome, scan
from medvideocap.build.recipe import Recipe, load_recipe
from medvideocap.build.sample import Sample
from medvideocap.build.stages import MissingDependencyError, check_stage
from medvideocap.build.workdir import clips_dir, journal_path, state_path
from medvideocap.dataset.layout import FUNNEL_PATH
from medvideocap.media.ffmpeg import MediaError, ffmpeg_exe

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The build cannot start or continue as asked; the message says what to change."""


@dataclass
class BuildResult:
    out: Path
    inputs: int
    resumed: int  # inputs found already finished in the journal
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
    """Count in / out / dropped per stage with the top reasons, like the paper's curation funnel."""
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
                "top_reasons": [
                    {"code": code, "count": n, "example": next(o.reason for o in dropped if o.code == code)}
                    for code, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
                ],
            }
        )
    return {
        "recipe": recipe.name,
        "fingerprint": recipe.fingerprint(),
        "inputs": len(by_input),
        "clips": kept_count,
        "stages": rows,
    }


def funnel_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"build funnel ({data['recipe']}): {data['inputs']} inputs -> {data['clips']} clips")
    for col in ("stage", "in", "out", "dropped", "top reasons"):
        table.add_column(col, justify="left" if col in ("stage", "top reasons") else "right")
    for row in data["stages"]:
        reasons = ", ".join(f"{r['code']} ({r['count']})" for r in row["top_reasons"])
        table.add_row(row["stage"], str(row["in"]), str(row["out"]), str(row["dropped"]), reasons)
    return table


# ------------------------------------------------------------------------------------------------
# plan


def plan(src: Path, recipe: Recipe, inputs: list[Sample], done: set[str]) -> dict[str, Any]:
    """What a build would do (``--dry-run``): inputs, stages, models, estimated work."""
    from medvideocap.media.probe import ProbeError, probe

    seconds = 0.0
    readable = 0
    for s in inputs:
        try:
            seconds += probe(s.path, name=s.input).duration
            readable += 1
        except ProbeError:
            continue
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


# ------------------------------------------------------------------------------------------------
# build


def _journal_entry(path: Path, sample: Sample) -> list[Outcome]:
    """The outcomes ``sample``'s journal file holds; ValueError saying why it cannot be trusted."""
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
    return outcomes


def read_finished(work: Path, samples: list[Sample]) -> dict[str, list[Outcome]]:
    """The ``samples`` the work dir's journal records as finished: input -> its outcomes.

    Each journal file is written atomically, so a kill never leaves half of one; but the writes skip
    fsync (one per input would slow a long build), so a machine crash can leave an empty or torn file,
    and a disk or a hand edit can damage one. Such a file is not trusted and not fatal: a warning names
    it, and its input counts as not finished, so it is processed again and the file rewritten. A
    guess at its content could silently lose the input's clips; redoing it costs one input's time.
    This is :mod:`medvideocap.journal`'s policy for a torn last line (the entry is redone), applied
    per file: the journal stays one file per input (not that module's JSON lines) so that work dirs
    of earlier builds still resume."""
    done: dict[str, list[Outcome]] = {}
    for sample in samples:
        path = journal_path(work, sample.key)
        if not path.is_file():
            continue
        try:
            done[sample.input] = _journal_entry(path, sample)
        except ValueError as exc:
            log.warning("%s: damaged journal file (%s); %s is processed again", path, exc, sample.input)
    return done


def _open_work(work: Path, recipe: Recipe, src: Path) -> None:
    path = state_path(work)
    state = {"recipe": recipe.name, "fingerprint": recipe.fingerprint(), "source": str(src.resolve())}
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
    keep_work: bool = False,
    follow_symlinks: bool = False,
    name: str | None = None,
    console: Console | None = None,
) -> BuildResult | dict[str, Any]:
    """Run (or with ``dry_run`` plan) a build; returns the result, or the plan for a dry run.

    Symlinks under ``src`` are refused (a ``source`` reject naming the link and its target) unless
    ``follow_symlinks``: a link can point anywhere, and a build reads what its source folder holds.
    ``name`` titles the dataset card (default: named after the recipe); the card also names the
    source folder, so a build from one's own videos never passes for MedVideoCap-55K."""
    src, out = Path(src), Path(out)
    identity = {"name": name, "source": f"{src.resolve().name}/"}
    console = console or Console(stderr=True)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    missing = _missing(recipe)
    if missing and not dry_run:
        raise MissingDependencyError("; ".join(missing))
    work = Path(work) if work else out.with_name(out.name + ".build")
    discovery = scan(src, follow_symlinks=follow_symlinks)
    inputs, refused = discovery.samples, discovery.refused
    done = read_finished(work, inputs)  # input -> its journaled outcomes (each file read once)
    if dry_run:
        return {**plan(src, recipe, inputs, set(done)), "missing": missing}
    if engine not in ("local", "ray"):
        raise BuildError(f"unknown engine {engine!r}; use 'local' or 'ray'")
    _open_work(work, recipe, src)
    redo = _lost_work(out, recipe, identity, done)
    if redo:
        console.print(f"redoing {len(redo)} processed inputs whose cut clips are gone and not yet written")
    pending = [s for s in inputs if s.input not in done or s.input in redo]
    resumed = len(inputs) - len(pending)
    labels = [s.label for s in recipe.stages]
    by_input: dict[str, list[Outcome]] = {}
    for s in inputs:
        if s.input in done and s.input not in redo:
            by_input[s.input] = done[s.input]

    with Progress(
        TextColumn("{task.description:>16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as progress:
        tasks = [
            progress.add_task(label, total=len(pending) if i == 0 else None) for i, label in enumerate(labels)
        ]
        keyed = {s.input: s for s in inputs}

        def on_done(outcomes: list[Outcome]) -> None:
            sample = keyed[outcomes[0].input]
            atomic_write_json(
                journal_path(work, sample.key),
                {"input": sample.input, "outcomes": [o.to_dict() for o in outcomes]},
                sort_keys=True,
                ensure_ascii=False,
                fsync=False,
            )
            by_input[sample.input] = outcomes
            for task, n in zip(tasks, reached(outcomes, labels), strict=True):
                progress.advance(task, n)

        if resumed:
            console.print(f"resuming: {resumed} of {len(inputs)} inputs already processed in {work}")
        if engine == "ray":
            run_ray(pending, recipe, work, address=ray_address, on_done=on_done)
        else:
            run_local(pending, recipe, work, workers=workers or os.cpu_count() or 1, on_done=on_done)

    for o in refused:
        by_input[o.input] = [o]
    names = [s.input for s in inputs] + [o.input for o in refused]
    outcomes = sorted((o for name in names for o in by_input[name]), key=Outcome.sort_key)
    summary = funnel(recipe, {name: by_input[name] for name in names})
    _write(out, recipe, identity, outcomes, summary)
    console.print(funnel_table(summary))
    if not keep_work:
        shutil.rmtree(clips_dir(work), ignore_errors=True)
    return BuildResult(
        out=out,
        inputs=len(inputs),
        resumed=resumed,
        kept=summary["clips"],
        rejected=sum(not o.kept for o in outcomes),
        funnel=summary,
        outcomes=outcomes,
    )


def _writer(out: Path, recipe: Recipe, identity: dict[str, Any]) -> Any:
    """The output's writer; ``identity`` (``--name`` and source folder) rides in the stored recipe as
    ``build``, which is where the card looks for the dataset's title and source."""
    from medvideocap.dataset.writer import DatasetWriter

    stored = {**recipe.model_dump(mode="json"), "build": identity}
    return DatasetWriter(out, shard_bytes=recipe.output.shard_bytes, recipe=stored)


def _lost_work(
    out: Path, recipe: Recipe, identity: dict[str, Any], done: dict[str, list[Outcome]]
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
    if not out.exists():
        return {name for name, _ in unwritten}
    writer = _writer(out, recipe, identity)  # reads what finished shards hold; nothing is written
    try:
        return {name for name, o in unwritten if not writer.has(o.id)}
    finally:
        writer.abort()


def _write(
    out: Path, recipe: Recipe, identity: dict[str, Any], outcomes: list[Outcome], summary: dict[str, Any]
) -> None:
    from medvideocap.dataset.schema import ClipRecord

    with _writer(out, recipe, identity) as writer:
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
