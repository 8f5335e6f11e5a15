"""``medvideocap eval``'s runner: generate a video per (checkpoint, prompt, seed), score it, resume after a kill.

Why it is shaped this way: generation is the slow, GPU-bound part and metrics change more often than
checkpoints, so the two are separate steps keyed in one journal (:class:`medvideocap.caption.journal.Journal`,
the one recaption uses): ``video/CKPT/PROMPT/SEED`` once its mp4 is on disk (written atomically by
:func:`medvideocap.generate.write_mp4`), ``score/CKPT/PROMPT/SEED/METRIC`` once a score is. A rerun does
only what the journal lacks, so a killed run finishes where it stopped, adding a checkpoint or a metric
to a finished run costs only the new work, and nothing finished is touched. The output tables are
rebuilt from the journal at the end of every run, so they never depend on where a run was interrupted.
A video a metric gives no score (:class:`medvideocap.eval.metrics.Unscored`: a judge that refused or
answered something unreadable) is journalled as settled but not ok, with the reason and the raw reply:
a rerun does not ask again, and the report lists it outside the means.
Every metric reads the mp4 back from disk, so ``--videos`` (scoring someone else's files) and a fresh run
score the same bytes the same way.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.atomic import atomic_write_json
from medvideocap.caption.journal import Journal
from medvideocap.defaults import WAN_TEXT_TOKENS
from medvideocap.eval import report
from medvideocap.eval.items import Item
from medvideocap.eval.metrics import Metric, MetricError, Unscored
from medvideocap.eval.prompts import Prompt, count_truncated
from medvideocap.eval.protocol import get_protocol, protocol_section
from medvideocap.generate import GenerationSettings
from medvideocap.progress import Progress

log = logging.getLogger(__name__)

RUN_FILE = "eval.json"
JOURNAL_FILE = "journal.jsonl"
VIDEOS_DIR = "videos"
#: Videos sampled per round of the three generation phases (text encoder, transformer, VAE; each model
#: loaded once a round). Larger rounds load UMT5-XXL (11.4 GB) less often; smaller ones lose less to a
#: kill, since a round's videos are written and journalled only once its VAE phase decodes them.
GENERATION_CHUNK = 8
_VIDEO_NAME = re.compile(r"^(?P<prompt>.+?)(?:-s(?P<seed>\d+))?$")


class EvalError(ValueError):
    """An eval run that cannot go on as asked; says which file or option and what to do."""


@dataclass
class EvalSummary:
    out: str
    videos: int = 0
    generated: int = 0
    scored: int = 0
    unscored: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_labels(specs: Sequence[str]) -> dict[str, Path]:
    """``[LABEL=]DIR`` -> {label: folder}. Without a label the folder's name is used, or ``parent-name``
    when two folders share a name (``run-a/final``, ``run-b/final``)."""
    pairs: list[tuple[str | None, Path]] = []
    for spec in specs:
        label, sep, rest = spec.partition("=")
        if sep and label and not Path(spec).exists():
            pairs.append((label, Path(rest)))
        else:
            pairs.append((None, Path(spec)))
    names = [p.name for _, p in pairs]
    out: dict[str, Path] = {}
    for given, path in pairs:
        label = given or (path.name if names.count(path.name) == 1 else f"{path.parent.name}-{path.name}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
            raise EvalError(f"--checkpoint {path}: label {label!r} must be letters, digits, '.', '_' or '-'")
        if label in out:
            raise EvalError(f"--checkpoint: two checkpoints are labelled {label!r}; name them LABEL=DIR")
        out[label] = path
    return out


def generation_items(
    out: Path, checkpoints: dict[str, Path], prompts: Sequence[Prompt], seeds: Sequence[int]
) -> list[Item]:
    return [
        Item(label, p, s, out / VIDEOS_DIR / label / f"{p.id}-s{s}.mp4")
        for label in checkpoints
        for p in prompts
        for s in seeds
    ]


def video_items(videos: Path, prompts: Sequence[Prompt]) -> list[Item]:
    """Existing mp4s laid out as ``DIR/LABEL/PROMPT_ID[-sSEED].mp4`` (what eval writes under ``videos/``)
    or flat ``DIR/PROMPT_ID[-sSEED].mp4`` (one checkpoint, labelled by the folder's name)."""
    if not videos.is_dir():
        raise EvalError(f"--videos {videos}: not a folder")
    by_id = {p.id: p for p in prompts}
    files = sorted(videos.glob("*.mp4")) + sorted(videos.glob("*/*.mp4"))
    if not files:
        raise EvalError(
            f"--videos {videos}: no .mp4 files (expected LABEL/PROMPT_ID-sSEED.mp4 or PROMPT_ID.mp4)"
        )
    items = []
    for f in files:
        if f.name.startswith("."):
            continue
        m = _VIDEO_NAME.match(f.stem)
        assert m is not None  # the pattern matches any non-empty stem
        prompt = by_id.get(m["prompt"])
        if prompt is None:
            raise EvalError(
                f"{f}: no prompt with id {m['prompt']!r} in the prompt set (--prompts, cut by --limit); name "
                "files PROMPT_ID[-sSEED].mp4 with ids from the prompt set"
            )
        label = videos.name if f.parent == videos else f.parent.name
        items.append(Item(label, prompt, int(m["seed"] or 0), f))
    return items


def read_video(path: Path) -> np.ndarray:
    """All frames of an mp4 as ``uint8 (T, H, W, 3)``; a file that does not decode is an :class:`EvalError`."""
    from medvideocap.media.decode import DecodeError, all_frames

    try:
        return all_frames(path)
    except DecodeError as exc:
        raise EvalError(f"{path}: cannot decode ({exc})") from exc


def _check_run(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix videos or scores made with other settings into one output folder."""
    run_file = out / RUN_FILE
    old: dict[str, Any] = {}
    if run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        before = old.get("generation") or {}
        now = settings["generation"]
        if "dtype" not in before:  # written before eval recorded the dtype: compare the rest
            now = {k: v for k, v in now.items() if k != "dtype"}
        if before != now:
            raise EvalError(
                f"{run_file}: this folder holds videos made with {old.get('generation')}, not "
                f"{settings['generation']}; rerun with the same settings or use a new --out"
            )
        for section in ("checkpoints", "metrics"):
            for name, value in settings[section].items():
                before = old.get(section, {}).get(name)
                if before is not None and not _same_source(before, value):
                    raise EvalError(
                        f"{run_file}: {section[:-1]} {name!r} was {before}, now {value}; its results would "
                        "mix two models: use a new --out (or another label)"
                    )
    merged = {
        "generation": settings["generation"],
        "prompts": settings["prompts"],
        "checkpoints": {**old.get("checkpoints", {}), **settings["checkpoints"]},
        "metrics": {**old.get("metrics", {}), **settings["metrics"]},
    }
    if settings.get("protocol"):
        merged["protocol"] = settings["protocol"]
    if "truncation" in old:  # counted by earlier runs of the same prompts (see _record_truncations)
        merged["truncation"] = old["truncation"]
    if merged != old:
        atomic_write_json(run_file, merged, sort_keys=True, fsync=False)


def _record_truncations(out: Path, counts: dict[str, int]) -> None:
    """Merge how many prompts each text model cut into ``eval.json`` as soon as they are known, so a run
    that resumes without loading that model again still reports them."""
    run_file = out / RUN_FILE
    run = json.loads(run_file.read_text(encoding="utf-8"))
    merged = {**run.get("truncation", {}), **counts}
    if merged != run.get("truncation"):
        atomic_write_json(run_file, {**run, "truncation": merged}, sort_keys=True, fsync=False)


def _dtype_name(dtype: str | None, device: str | None) -> str:
    """The dtype videos are generated in, as a name: two runs that differ only by it make different
    videos, so one output folder never mixes them."""
    from medvideocap import models
    from medvideocap.devices import resolve_device

    return str(dtype or models.default_compute_dtype(resolve_device(device))).removeprefix("torch.")


def _same_source(before: Any, now: Any) -> bool:
    """A checkpoint path, or a metric's model ids and revisions; a revision only counts where both runs
    could read it (a Hub model seen offline has revision "unknown")."""
    if not isinstance(before, dict) or not isinstance(now, dict):
        return bool(before == now)
    old_models, new_models = before.get("models", {}), now.get("models", {})
    if old_models.keys() != new_models.keys():
        return False
    for role, model in new_models.items():
        prev = old_models[role]
        if prev["id"] != model["id"]:
            return False
        if "unknown" not in (prev["revision"], model["revision"]) and prev["revision"] != model["revision"]:
            return False
    return True


def _remove_stale_temporaries(out: Path) -> None:
    """A SIGKILL leaves the half-written file of :func:`medvideocap.atomic.atomic_path` behind; its item is
    not in the journal, so it is made again, and the fragment goes."""
    for stale in [
        *out.glob(".*.tmp-*"),
        *out.glob(f"{VIDEOS_DIR}/*/.*.tmp-*"),
        *out.glob(f"{report.PLOTS_DIR}/.*.tmp-*"),
    ]:
        log.info("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


def run_eval(
    out: str | Path,
    *,
    prompts: Sequence[Prompt],
    metrics: Sequence[Metric],
    checkpoints: dict[str, Path] | None = None,
    videos: Path | None = None,
    seeds: Sequence[int] = (0,),
    settings: GenerationSettings | None = None,
    prompts_name: str = "",
    device: str | None = None,
    dtype: str | None = None,
    text_encoder_dtype: str | None = None,
    vae_tiling: bool | None = None,
    load_pipeline: Callable[..., Any] | None = None,
    progress: Progress | None = None,
    protocol: str | None = None,
) -> EvalSummary:
    """Generate what the journal in ``out`` lacks (from ``checkpoints``) or take ``videos``, score every
    video with every metric, and rebuild the output tables (:func:`medvideocap.eval.report.write_outputs`).

    Each checkpoint samples through :class:`medvideocap.generate.StagedPipeline` (one model in memory at a
    time), :data:`GENERATION_CHUNK` videos per round of its three phases. ``load_pipeline``, when given, is
    called with ``(checkpoint, base=, device=, dtype=)`` instead; a notebook passes one to reuse a
    ``WanPipeline`` already in memory. ``progress`` counts videos generated and scored.
    """
    from medvideocap import generate

    out = Path(out)
    settings = settings or GenerationSettings()
    if (checkpoints is None) == (videos is None):
        raise EvalError("give --checkpoint DIR (generate, then score) or --videos DIR (score existing mp4s)")
    if checkpoints is not None:
        problems = settings.problems()
        if problems:
            raise EvalError("; ".join(problems))
        for label, path in checkpoints.items():
            try:
                generate.describe_checkpoint(path)
            except FileNotFoundError as exc:
                raise EvalError(f"--checkpoint {label}: {exc}") from exc
        items = generation_items(out, checkpoints, prompts, seeds)
        sources = {label: str(path.resolve()) for label, path in checkpoints.items()}
    else:
        assert videos is not None
        items = video_items(videos, prompts)
        sources = {it.checkpoint: f"videos:{videos.resolve()}" for it in items}
    run_settings = {
        "generation": (
            {**asdict(settings), "dtype": _dtype_name(dtype, device)}
            if checkpoints is not None
            else {"videos": str(videos)}
        ),
        "prompts": prompts_name,
        "checkpoints": sources,
        "metrics": {m.name: m.info() for m in metrics},
    }
    if protocol:  # eval.protocol names it; the report compares with its published table
        run_settings["protocol"] = protocol
    _check_run(out, run_settings)
    _remove_stale_temporaries(out)
    texts = [p.prompt for p in prompts]
    for metric in metrics:
        counts = getattr(metric, "truncations", None)
        if counts is not None:
            _record_truncations(out, counts(texts))
    summary = EvalSummary(out=str(out), videos=len(items))
    counter = progress or Progress(live=False, stream=io.StringIO(), timer=False)  # counts, prints nothing
    timings: dict[str, list[float]] = {}
    with Journal(out / JOURNAL_FILE) as journal:
        if checkpoints is not None:
            made = journal.ok_ids()
            for label, path in checkpoints.items():
                todo = [it for it in items if it.checkpoint == label and f"video/{it.key}" not in made]
                if not todo:
                    continue
                try:
                    if load_pipeline is not None:
                        pipe = load_pipeline(path, base=settings.base, device=device, dtype=dtype)
                    else:
                        pipe = generate.StagedPipeline(
                            path, base=settings.base, device=device, dtype=dtype,
                            text_encoder_dtype=text_encoder_dtype, vae_tiling=vae_tiling,
                        )  # fmt: skip
                    tokenizer = getattr(pipe, "tokenizer", None)
                except OSError as exc:
                    raise EvalError(
                        f"--checkpoint {label}: cannot load {path} (or its --base): {exc}"
                    ) from exc
                if tokenizer is not None:
                    _record_truncations(
                        out,
                        {
                            f"generation {label} (UMT5, {WAN_TEXT_TOKENS} tokens)": count_truncated(
                                tokenizer, texts, WAN_TEXT_TOKENS
                            )
                        },
                    )
                task = counter.task(f"eval {label}: generate", len(todo), unit="video", failed="")
                for start in range(0, len(todo), GENERATION_CHUNK):
                    chunk = todo[start : start + GENERATION_CHUNK]
                    started = time.perf_counter()
                    try:
                        videos_made = settings.sample(
                            pipe, [it.prompt.prompt for it in chunk], seeds=[it.seed for it in chunk],
                            progress=progress,
                        )  # fmt: skip
                    except OSError as exc:
                        raise EvalError(
                            f"--checkpoint {label}: cannot load {path} (or its --base): {exc}"
                        ) from exc
                    seconds = (time.perf_counter() - started) / len(chunk)
                    for it, video in zip(chunk, videos_made, strict=True):
                        generate.write_mp4(video, it.path, fps=settings.fps)
                        timings.setdefault("generation", []).append(seconds)
                        journal.append(
                            {"id": f"video/{it.key}", "ok": True, "path": str(it.path), "seconds": seconds}
                        )
                        summary.generated += 1
                        counter.advance(task, done=1)
                counter.finish(task)
                del pipe
        done = journal.settled_ids()
        scoring = [(it, [m for m in metrics if f"score/{it.key}/{m.name}" not in done]) for it in items]
        scoring = [(it, missing) for it, missing in scoring if missing]
        task = counter.task("eval: score", len(scoring), unit="video", failed="")
        for it, missing in scoring:
            video = read_video(it.path)
            for metric in missing:
                started = time.perf_counter()
                try:
                    value, record = metric.assess(video, it.prompt.prompt)
                except Unscored as exc:
                    journal.append(
                        {
                            "id": f"score/{it.key}/{metric.name}",
                            "ok": False,
                            "final": True,
                            "unscored": exc.kind,
                            "reason": str(exc),
                            "record": exc.record,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                    summary.unscored += 1
                    continue
                except MetricError as exc:
                    raise MetricError(f"{it.path}: {exc}") from exc
                except OSError as exc:  # what transformers / huggingface_hub raise for a missing model
                    raise MetricError(
                        f"{metric.name}: cannot load its model {metric.models}: {exc}; point it at a local "
                        f"copy with --metric-model {metric.name}=PATH (or leave it out with --metrics)"
                    ) from exc
                seconds = time.perf_counter() - started
                if not np.isfinite(value) or not 0.0 <= value <= 1.0:
                    raise MetricError(
                        f"{metric.name} gave {value!r} for {it.path}, outside [0, 1]: a bug, please report it"
                    )
                timings.setdefault(metric.name, []).append(seconds)
                journal.append(
                    {
                        "id": f"score/{it.key}/{metric.name}",
                        "ok": True,
                        "value": float(value),
                        "seconds": seconds,
                        **({"record": record} if record else {}),
                    }
                )
                summary.scored += 1
            counter.advance(task, done=1)
        counter.finish(task)
        summary.seconds = {k: round(float(np.mean(v)), 4) for k, v in timings.items()}
        run_info = json.loads((out / RUN_FILE).read_text())
        chosen = get_protocol(protocol) if protocol else None
        report.write_outputs(
            out,
            items,
            [m.name for m in metrics],
            journal,
            run_info,
            extra=(lambda summary: protocol_section(chosen, summary, run_info)) if chosen else None,
        )
    return summary
