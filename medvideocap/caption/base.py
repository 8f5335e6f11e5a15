"""The captioner protocol and what every backend shares: prompting, hygiene retries, provenance.

A backend only turns prompts plus frames into reply strings (``_generate``); everything that decides
whether a reply becomes a caption, and what the caption records about its origin, lives here so the
served and the local backend cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from medvideocap.dataset.schema import Caption, ClipRecord

from .hygiene import HygieneError, parse_reply, reply_head, screen_reply, strip_controls
from .templates import Template, load_template

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "detailed_brief"
RETRY_TEMPERATURE_STEP = 0.3


@dataclass
class CaptionResult:
    """What one clip's captioning produced. ``raw`` is the last reply (kept for audit even when ``ok``)
    with its control characters stripped, only its start when it held markup; ``history`` holds the
    earlier attempts' replies and the reasons they were rejected.
    ``final`` is False for failures of the backend rather than of the reply (HTTP errors after retries,
    timeouts, out of memory): asking again later may well succeed."""

    captions: list[Caption]
    raw: str
    ok: bool
    error: str | None = None
    attempts: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    final: bool = True


@runtime_checkable
class Captioner(Protocol):
    def caption(self, frames: list[Image.Image], record: ClipRecord, *, template: str) -> CaptionResult: ...


@dataclass
class Job:
    """One clip's prompt as a backend sees it."""

    frames: list[Image.Image]
    record: ClipRecord
    timestamps: list[float] | None
    system: str
    user: str
    params: dict[str, Any]
    format: str = "text"
    attempt: int = 0


@dataclass
class Reply:
    """A backend's answer to one job: ``text`` on success; ``error`` when the transport failed for good
    (no hygiene retry then: the backend already retried what was worth retrying)."""

    text: str | None
    error: str | None = None
    revision: str | None = None


class BaseCaptioner:
    """Shared behaviour; subclasses set ``backend``, ``model``, ``revision`` and implement ``_generate``."""

    backend = "base"
    batch_size = 1  # clips per _generate call
    parallelism = 1  # caption_batch calls that may run at once (threads)

    def __init__(
        self,
        *,
        model: str,
        revision: str | None = None,
        name_prefix: str | None = None,
        check_quality: bool = True,
        hygiene_retries: int = 1,
        params: dict[str, Any] | None = None,
    ):
        self.model = model
        self.revision = revision
        self.name_prefix = name_prefix
        self.check_quality = check_quality
        self.hygiene_retries = hygiene_retries
        self.params = dict(params or {})
        self._templates: dict[str, Template] = {}

    def template(self, name: str) -> Template:
        if name not in self._templates:
            self._templates[name] = load_template(name)
        return self._templates[name]

    def caption(
        self,
        frames: list[Image.Image],
        record: ClipRecord,
        *,
        template: str = DEFAULT_TEMPLATE,
        timestamps: list[float] | None = None,
    ) -> CaptionResult:
        """Caption one clip. Timestamps default to those :func:`sample_frames` stored in the images."""
        return self.caption_batch([(frames, record)], template=template, timestamps=[timestamps])[0]

    def caption_batch(
        self,
        items: Sequence[tuple[list[Image.Image], ClipRecord]],
        *,
        template: str = DEFAULT_TEMPLATE,
        timestamps: Sequence[list[float] | None] | None = None,
    ) -> list[CaptionResult]:
        """Caption several clips; a reply that fails hygiene is asked again ``hygiene_retries`` times."""
        tmpl = self.template(template)
        params = {**tmpl.params, **self.params}
        jobs = []
        for i, (frames, record) in enumerate(items):
            ts = timestamps[i] if timestamps is not None and timestamps[i] is not None else None
            if ts is None and frames and all("timestamp" in f.info for f in frames):
                ts = [float(f.info["timestamp"]) for f in frames]
            system, user = tmpl.render(record, ts, len(frames))
            jobs.append(Job(list(frames), record, ts, system, user, dict(params), tmpl.format))
        results: list[CaptionResult | None] = [None] * len(jobs)
        history: list[list[dict[str, Any]]] = [[] for _ in jobs]
        pending = list(range(len(jobs)))
        for attempt in range(self.hygiene_retries + 1):
            for i in pending:
                jobs[i].attempt = attempt
                if attempt:  # a re-ask must be able to differ from the rejected reply; recorded as sent
                    t = float(params.get("temperature", 0.0)) + RETRY_TEMPERATURE_STEP * attempt
                    jobs[i].params = {**params, "temperature": round(t, 3)}
            replies = self._generate([jobs[i] for i in pending])
            retry = []
            for i, reply in zip(pending, replies, strict=True):
                res = self._judge(jobs[i], reply, tmpl, history[i])
                if res.ok or reply.error is not None or attempt == self.hygiene_retries:
                    results[i] = res
                else:
                    history[i].append({"raw": res.raw, "error": res.error})
                    retry.append(i)
            pending = retry
            if not pending:
                break
        return [r for r in results if r is not None]

    def _judge(self, job: Job, reply: Reply, tmpl: Template, history: list[dict[str, Any]]) -> CaptionResult:
        attempts = job.attempt + 1
        if reply.text is None:
            return CaptionResult(
                [], "", False, reply.error or "no reply", attempts, list(history), final=False
            )
        raw = strip_controls(reply.text)
        try:
            texts = parse_reply(raw, tmpl) if self.check_quality else _lenient(raw, tmpl)
        except HygieneError as exc:
            kept = reply_head(raw) if exc.kind == "markup" else raw
            return CaptionResult([], kept, False, str(exc), attempts, list(history))
        now = datetime.now(UTC)
        params = json.dumps(
            {**job.params, "frames": len(job.frames), "attempt": job.attempt}, sort_keys=True, default=str
        )
        captions = [
            Caption(
                name=f"{self.name_prefix}/{out.key}" if self.name_prefix else out.key,
                text=texts[out.key],
                style=out.style,  # type: ignore[arg-type]
                source=self.backend,
                model=self.model,
                model_revision=self.revision or reply.revision,
                prompt=tmpl.name,
                prompt_version=str(tmpl.version),
                created_at=now,
                frame_timestamps=job.timestamps,
                params=params,
            )
            for out in tmpl.outputs
        ]
        return CaptionResult(captions, raw, True, None, attempts, list(history))

    def ask(
        self,
        user: str,
        frames: Sequence[Image.Image] = (),
        *,
        system: str = "",
        params: dict[str, Any] | None = None,
        format: str = "text",
        name: str = "ask",
    ) -> Reply:
        """One prompt (``system`` + ``user``, with ``frames``) and the backend's raw reply: no template,
        no hygiene retry, no caption. For a caller that judges the reply itself (the ``medical_accuracy``
        judge). ``name`` labels the request in the backend's logs. An API failure the backend gave up on
        is a reply with ``text=None`` and its ``error``; a bug raises."""
        job = Job(
            frames=list(frames),
            record=ClipRecord.model_construct(id=name),
            timestamps=None,
            system=system,
            user=user,
            params=dict(params or {}),
            format=format,
        )
        (reply,) = self._generate([job])
        return reply

    def _generate(self, jobs: list[Job]) -> list[Reply]:
        """One reply per job, in order. A backend turns only its API's or its model's known failures
        into a ``Reply(None, error)``; anything else (a bug) propagates."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients or models; safe to call twice."""


def _lenient(raw: str, tmpl: Template) -> dict[str, str]:
    """Quality checks off (tiny test models, debugging): parse what can be parsed, keep the rest raw;
    a reply with markup is still refused."""
    raw = screen_reply(raw)
    try:
        return parse_reply(raw, tmpl)
    except HygieneError:
        text = " ".join(raw.split()) or "(empty)"
        return {out.key: text for out in tmpl.outputs}


def make_captioner(backend: str, **options: Any) -> BaseCaptioner:
    """A captioner for ``backend`` ("openai" or "transformers"); options go to the backend's constructor.

    Common options: ``model``, ``revision``, ``name_prefix`` (caption names become ``prefix/detailed``),
    ``check_quality``, ``hygiene_retries``, ``params`` (generation parameters over the template's).
    """
    if backend == "openai":
        from .openai_api import OpenAICaptioner

        return OpenAICaptioner(**options)
    if backend == "transformers":
        from .local import TransformersCaptioner

        return TransformersCaptioner(**options)
    raise ValueError(f"unknown caption backend {backend!r}; expected 'openai' or 'transformers'")
