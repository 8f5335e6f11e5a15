"""``medvideocap eval``: score checkpoints (or existing videos), compare runs, and run doctors' ratings.

Four modes, one verb: ``--checkpoint``/``--videos`` scores into ``--out``; ``--compare A/ B/`` compares
finished eval folders; ``--rating-sheet`` writes a blind pairwise sheet for the eval in ``--out``;
``--import-ratings FILE`` aggregates a filled sheet.
"""

from __future__ import annotations

from pathlib import Path

import click

from medvideocap.cli.generate import phased_options
from medvideocap.cli.options import generation_options
from medvideocap.plan import PLAN_HELP

METRICS_HELP = (
    "Comma-separated metrics. Default: subject_consistency, background_consistency, temporal_flickering, "
    "rife_interpolation_smoothness (VBench's motion-smoothness protocol with RIFE instead of AMT-S), "
    "imaging_quality (MUSIQ-SPAQ via pyiqa, by VBench's resize rule), aesthetic_quality, "
    "text_video_alignment (CLIP score). By name only: flow_interpolation_smoothness and "
    "imaging_quality_clipiqa (offline fallbacks for the two above), videoscore (TIGER-Lab/VideoScore-v1.1, an "
    "8B Idefics2 regression model: 16.5 GB of weights, ~17 GB of GPU memory in bf16), medical_accuracy (a VLM "
    "judge scores anatomy, procedure, instruments and safety with a versioned rubric; needs a judge: an "
    "OpenAI-compatible server, --judge-endpoint, or --judge-backend transformers; the model from "
    "--metric-model medical_accuracy=MODEL)."
)


def _ints(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 0,1,2") from exc
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"{value!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


@click.command(name="eval")
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    help="[LABEL=]DIR of a trainer output or WanPipeline folder; repeat to evaluate several.",
)
@click.option(
    "--videos",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Score existing mp4s instead: DIR/LABEL/PROMPT_ID-sSEED.mp4 or DIR/PROMPT_ID.mp4.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output folder.")
@click.option(
    "--prompts",
    default="medgen-200",
    show_default=True,
    help="medgen-paper (the MedGen paper's 200 prompts: fetched once from the authors' pinned commit, "
    "sha256-checked, cached), a shipped set name, or a .jsonl / .txt file.",
)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, one video per seed.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N prompts.")
@click.option("--metrics", "metric_names", default=None, help=METRICS_HELP)
@click.option(
    "--protocol",
    default=None,
    help="medgen-paper: the paper's prompts and dimensions, its published table beside ours in the report, "
    "and every remaining difference listed (fixes --prompts and --metrics).",
)
@click.option(
    "--metric-model",
    multiple=True,
    help="NAME=PATH_OR_ID (or NAME.head=FILE for aesthetic_quality's MLP head) to replace a default model.",
)
@click.option(
    "--judge-backend",
    type=click.Choice(["openai", "transformers"]),
    default=None,
    help="medical_accuracy's judge: openai (default; an OpenAI-compatible server) or transformers (a local "
    "VLM, default Qwen/Qwen2.5-VL-7B-Instruct).",
)
@click.option(
    "--judge-endpoint",
    default=None,
    help="medical_accuracy, openai judge: base URL of the server, e.g. http://localhost:8000/v1 (default: "
    "api.openai.com, which needs a key).",
)
@click.option(
    "--judge-api-key-env",
    default=None,
    help="medical_accuracy, openai judge: name of the environment variable holding the API key (default "
    "OPENAI_API_KEY).",
)
@click.option("--compare", is_flag=True, help="Compare the eval output FOLDERS given as arguments.")
@click.option(
    "--bootstrap", default=2000, show_default=True, help="Bootstrap resamples for --compare / ratings."
)
@click.option(
    "--rating-sheet", is_flag=True, help="Write a blind pairwise rating sheet for the eval in --out."
)
@click.option("--rating-seed", default=0, show_default=True, help="Seed of the sheet's randomised order.")
@click.option(
    "--import-ratings",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A filled rating sheet CSV: win rates per category with confidence intervals.",
)
@generation_options
@phased_options
@click.option("--plan", "show_plan", is_flag=True, help=PLAN_HELP)
def command(
    folders: tuple[Path, ...],
    checkpoints: tuple[str, ...],
    videos: Path | None,
    out: Path | None,
    prompts: str,
    seeds: str,
    limit: int | None,
    metric_names: str | None,
    metric_model: tuple[str, ...],
    judge_backend: str | None,
    judge_endpoint: str | None,
    judge_api_key_env: str | None,
    base: str | None,
    negative_prompt: str | None,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    fps: float,
    device: str | None,
    dtype: str | None,
    text_encoder_dtype: str | None,
    vae_tiling: bool | None,
    compare: bool,
    bootstrap: int,
    rating_sheet: bool,
    rating_seed: int,
    import_ratings: Path | None,
    show_plan: bool,
    protocol: str | None,
) -> None:
    """Score checkpoints the way the MedGen paper does (VBench dimensions, CLIP score), compare runs with
    paired bootstrap intervals, and collect doctors' blind pairwise ratings."""
    from medvideocap.eval import compare as compare_mod
    from medvideocap.eval import ratings
    from medvideocap.eval.metrics import DEFAULT_METRICS, MetricError, build_metrics, parse_metric_models
    from medvideocap.eval.prompts import PromptError, describe_prompts, load_prompts
    from medvideocap.eval.protocol import get_protocol
    from medvideocap.eval.runner import EvalError, checkpoint_labels, run_eval
    from medvideocap.generate import GenerationSettings
    from medvideocap.plan import peak_report, plan_eval, render_plan
    from medvideocap.progress import Progress

    modes = sum([compare, rating_sheet, import_ratings is not None, bool(checkpoints or videos)])
    if modes != 1:
        raise click.UsageError(
            "choose one: --checkpoint DIR / --videos DIR (with --out), --compare A/ B/, --rating-sheet "
            "--out DIR, or --import-ratings FILE"
        )
    if folders and not compare:
        raise click.UsageError(
            f"unexpected arguments {[str(f) for f in folders]} (only --compare takes folders)"
        )
    try:
        if compare:
            text = compare_mod.compare_runs(list(folders), out=out, resamples=bootstrap)
            click.echo(text)
            return
        if import_ratings is not None:
            click.echo(ratings.import_ratings(import_ratings, out=out, resamples=bootstrap))
            return
        if out is None:
            raise click.UsageError("--out DIR is required")
        if rating_sheet:
            sheet = ratings.write_rating_sheet(out, seed=rating_seed)
            click.echo(f"{sheet} (send the .html and .csv, keep key.json: it unblinds the sheet)")
            return
        names = [n.strip() for n in metric_names.split(",") if n.strip()] if metric_names else None
        if protocol:
            try:
                chosen = get_protocol(protocol)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from exc
            given = click.get_current_context().get_parameter_source("prompts")
            if names or given == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--protocol {protocol} fixes --prompts and --metrics; leave them out")
            prompts, names = chosen.prompts, chosen.metrics
        prompt_set = load_prompts(prompts)[:limit]
        judge = {
            key: value
            for key, value in (
                ("backend", judge_backend),
                ("endpoint", judge_endpoint),
                ("api_key_env", judge_api_key_env),
            )
            if value
        }
        metrics = build_metrics(
            names or DEFAULT_METRICS,
            parse_metric_models(metric_model),
            device=device,
            options={"medical_accuracy": judge} if judge else None,
        )
        settings = GenerationSettings(
            frames=frames,
            height=height,
            width=width,
            steps=steps,
            guidance=guidance,
            fps=fps,
            negative_prompt=negative_prompt,
            base=base,
        )
        paths = checkpoint_labels(checkpoints).values() if checkpoints else ()
        plan = plan_eval(metrics, settings=settings, checkpoints=paths, device=device, dtype=dtype)
        if show_plan:
            click.echo(render_plan(plan))
            return
        with Progress() as progress:
            summary = run_eval(
                out,
                prompts=prompt_set,
                metrics=metrics,
                checkpoints=checkpoint_labels(checkpoints) if checkpoints else None,
                videos=videos,
                seeds=_ints(seeds),
                settings=settings,
                prompts_name=describe_prompts(prompts),
                device=device,
                dtype=dtype,
                text_encoder_dtype=text_encoder_dtype,
                vae_tiling=vae_tiling,
                progress=progress,
                protocol=protocol,
            )
    except (EvalError, MetricError, PromptError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    unscored = f", {summary.unscored} unscored" if summary.unscored else ""
    click.echo(
        f"{summary.videos} videos ({summary.generated} generated, {summary.scored} scores new{unscored}); "
        f"report: {out / 'report.md'}"
    )
    if summary.seconds:
        timings = ", ".join(f"{k} {v:.3f}" for k, v in summary.seconds.items())
        click.echo(f"seconds per video this run: {timings}", err=True)
    click.echo(peak_report(plan), err=True)
