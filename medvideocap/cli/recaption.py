"""``medvideocap recaption SOURCE --out DIR --backend ...``: parse arguments, run
:func:`medvideocap.caption.recaption.recaption`, print the summary."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A click callback: ``value`` when it is a finite number. click's ranges let ``nan`` through
    (every comparison with it is false) and ``inf`` past an open upper end."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


#: Each backend's own options, declared once: the command's flags (their help prefixed with the backend's
#: name) and the keywords handed to that backend's captioner (those not left at None) both come from here.
BACKEND_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "openai": {
        "endpoint": {
            "help": "base URL of the server, e.g. http://localhost:8000/v1 (default: api.openai.com)."
        },
        "api_key_env": {
            "help": "name of the environment variable holding the API key (default OPENAI_API_KEY)."
        },
        "concurrency": {"default": 8, "type": click.IntRange(min=1), "help": "requests in flight at once."},
        "timeout": {
            "default": 120.0,
            "type": click.FloatRange(min=0, min_open=True),
            "callback": _finite,
            "help": "seconds per request (more than 0).",
        },
        "max_retries": {
            "default": 5,
            "type": click.IntRange(min=0),
            "help": "retries on 429/5xx/timeouts (0: ask once).",
        },
    },
    "transformers": {
        "batch_size": {"default": 4, "type": click.IntRange(min=1), "help": "clips per generate call."},
        "device": {"help": "cuda, cpu, mps (default: best available)."},
    },
}


def backend_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """The flags of :data:`BACKEND_OPTIONS`, ``--snake-case`` spelt with dashes."""
    for backend, options in reversed(BACKEND_OPTIONS.items()):
        for key, spec in reversed(options.items()):
            spec = {"default": None, **spec, "help": f"{backend} backend: {spec['help']}"}
            command = click.option(
                f"--{key.replace('_', '-')}", show_default=spec["default"] is not None, **spec
            )(command)
    return command


@click.command(name="recaption")
@click.argument("source")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: run.json, journal.jsonl (resumed if present), summary.json, dataset/ with --write.",
)
@click.option(
    "--backend",
    required=True,
    type=click.Choice(list(BACKEND_OPTIONS)),
    help="openai: an OpenAI-compatible chat-completions server; transformers: a local VLM.",
)
@click.option(
    "--model",
    default=None,
    help="Model id (default gpt-4o for openai, Qwen/Qwen2.5-VL-7B-Instruct for transformers) or a local folder.",
)
@click.option(
    "--model-revision",
    default=None,
    help="Model revision: transformers loads it; both record it in the captions' provenance.",
)
@click.option(
    "--template",
    default="detailed_brief",
    show_default=True,
    help="Prompt template: detailed_brief, brief, structured, NAME@VERSION, or a path to a .yaml template.",
)
@click.option(
    "--frames",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Evenly spaced frames per clip.",
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Caption at most this many clips.")
@click.option(
    "--where",
    default=None,
    help="Filter on record fields, e.g. 'category == \"clinical_practice\" and duration < 9'.",
)
@click.option(
    "--name", "name_prefix", default=None, help="Prefix of the new caption names (default MODEL/TEMPLATE-vN)."
)
@click.option(
    "--write", is_flag=True, help="Also write DIR/dataset: a hub-native copy with the new captions added."
)
@click.option("--retry-failed", is_flag=True, help="Caption again the clips whose earlier attempt failed.")
@click.option(
    "--engine",
    default="local",
    show_default=True,
    type=click.Choice(["local", "ray"]),
    help="local: threads in this process; ray: Ray Data actors (cluster from RAY_ADDRESS or a local one).",
)
@click.option(
    "--ray-address",
    default=None,
    help="--engine ray: address of an existing Ray cluster (default: $RAY_ADDRESS, else start a local one).",
)
@click.option(
    "--max-new-tokens",
    default=None,
    type=click.IntRange(min=1),
    help="Reply length cap (default: the template's).",
)
@click.option(
    "--temperature",
    default=None,
    type=click.FloatRange(min=0),
    help="Sampling temperature (default: the template's).",
)
@click.option(
    "--no-hygiene",
    is_flag=True,
    help="Keep replies that fail the refusal/garbage/length checks (debugging, tiny demo models only).",
)
@click.option(
    "--ray-actors",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="--engine ray: captioner actors (each loads the model once; one GPU each when the cluster has GPUs).",
)
@click.option(
    "--max-failures",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Failed clips (unreadable video, rejected reply, backend error) to accept before exiting 1.",
)
@click.option("--revision", default=None, help="Hub revision when SOURCE is a repo id.")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@backend_flags
def command(source: str, out: str, backend: str, **opts: Any) -> None:
    """Re-caption SOURCE (a hub-native dataset or an upstream release, folder or Hub repo id) with a
    multimodal LLM. Each clip's new captions, with model, prompt and frame provenance, go to a journal
    in --out; a rerun captions only what the journal lacks. The source is never modified.

    Exits 1 when no clip was selected or captioned, or more clips than --max-failures failed
    (counted over the journal; everything captioned is kept)."""
    import json

    from medvideocap.caption.recaption import recaption
    from medvideocap.disk import ResourceError
    from medvideocap.lock import LockedError

    backend_options: dict[str, Any] = {
        "revision": opts["model_revision"],
        "check_quality": not opts["no_hygiene"],
    }
    params = {k: opts[k] for k in ("max_new_tokens", "temperature") if opts[k] is not None}
    if params:
        backend_options["params"] = params
    if opts["model"]:
        backend_options["model"] = opts["model"]
    backend_options.update({k: opts[k] for k in BACKEND_OPTIONS[backend] if opts[k] is not None})
    if opts["engine"] == "ray":
        backend_options["ray_actors"] = opts["ray_actors"]
    try:
        summary = recaption(
            source,
            out,
            backend=backend,
            template=opts["template"],
            frames=opts["frames"],
            limit=opts["limit"],
            where=opts["where"],
            name_prefix=opts["name_prefix"],
            write=opts["write"],
            retry_failed=opts["retry_failed"],
            engine=opts["engine"],
            ray_address=opts["ray_address"],
            source_revision=opts["revision"],
            progress=not opts["no_progress"],
            **backend_options,
        )
    except ValueError as exc:  # our errors say what to change; no stack trace for them
        raise click.ClickException(str(exc)) from exc
    except (LockedError, ResourceError) as exc:  # another run on --out, or a full or read-only disk
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary.to_json(), indent=2))
    failure = summary.failure(opts["max_failures"])
    if failure is not None:
        raise click.ClickException(failure)
