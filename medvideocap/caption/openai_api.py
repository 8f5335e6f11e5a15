"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, hosted APIs).

Frames travel as base64 JPEG data URLs. Throttling and overload (429, 5xx, timeouts, dropped
connections, unreadable bodies) are retried with capped exponential backoff and jitter, honouring
``Retry-After``; other 4xx answers are the caller's mistake and fail at once. The API key is read from
the environment and never appears in logs, errors or captions.

A server is not trusted to behave: ``timeout`` is a deadline for the whole request, however slowly the
reply trickles in (:class:`_Deadline`), and a reply body is read only up to ``max_reply_bytes``, so a
runaway or hostile server costs one clip, not the run's memory or disk.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from PIL import Image

from .base import BaseCaptioner, Job, Reply
from .hygiene import REPLY_HEAD_CHARS, reply_head

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"
DEFAULT_MAX_REPLY_BYTES = 1 << 20
"""Bytes of a response body read before giving up on it: a chat completion holding a caption is a few
KB (a 700-token reply is about 3 KB of JSON), so 1 MiB leaves room for verbose servers and bounds what a
runaway one costs: memory per request in flight, and what the journal records (only the first KB)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with "equal jitter": attempt k waits between half and all of
    ``min(max_delay, base_delay * 2**k)`` (or the server's Retry-After if longer, up to
    ``max_retry_after``), so synchronized clients spread out without ever retrying immediately."""

    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 300.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_delay, self.base_delay * 2**retry)
        wait = backoff / 2 + rng.uniform(0, backoff / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def image_data_url(image: Image.Image, *, max_side: int = 768, quality: int = 85) -> str:
    """JPEG data URL of ``image``, shrunk so its long side is at most ``max_side`` (fewer image tokens)."""
    img = image.convert("RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _TooLarge(Exception):
    def __init__(self, head: bytes):
        super().__init__("reply over max_reply_bytes")
        self.head = head


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: the request ended on its own
        sock.shutdown(socket.SHUT_RDWR)


class _Deadline:
    """The total time one request may take, enforced from outside the thread blocked on it.

    httpx's timeouts bound each connect, write and read, not a request: a server that trickles a byte
    a second never trips a 3 s read timeout, and httpcore has no total deadline (encode/httpx#1450).
    Hand-written for that reason: a timer shuts the request's socket down at the deadline, which wakes
    the blocked read or write at once. The socket comes from httpcore's ``trace`` extension when the
    connection is made (after TLS when there is TLS), so the client keeps no connection alive: a
    reused one makes no connect event, and its socket could not be reached."""

    CONNECT_EVENTS = frozenset({"connection.connect_tcp.complete", "connection.start_tls.complete"})

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._timer.cancel()
            self._sockets.clear()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: keeps the socket of each connection this request makes."""
        if event not in self.CONNECT_EVENTS:
            return
        sock = info["return_value"].get_extra_info("socket")
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


class OpenAICaptioner(BaseCaptioner):
    """Captions through a chat-completions endpoint; thread-safe, at most ``concurrency`` requests at once."""

    backend = "openai"

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        endpoint: str = DEFAULT_ENDPOINT,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        image_max_side: int = 768,
        image_detail: str | None = None,
        json_mode: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        **common: Any,
    ):
        super().__init__(model=model, **common)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a number of seconds more than 0, got {timeout}")
        if max_reply_bytes < REPLY_HEAD_CHARS:
            raise ValueError(f"max_reply_bytes must be at least {REPLY_HEAD_CHARS}, got {max_reply_bytes}")
        self.endpoint = endpoint.rstrip("/")
        self.url = (
            self.endpoint
            if self.endpoint.endswith("/chat/completions")
            else self.endpoint + "/chat/completions"
        )
        env_name = api_key_env or "OPENAI_API_KEY"
        key = os.environ.get(env_name)
        if api_key_env and not key:
            raise ValueError(f"environment variable {api_key_env} (the API key) is not set")
        if not key and self.endpoint == DEFAULT_ENDPOINT:
            raise ValueError(
                f"the OpenAI API needs a key: set {env_name} (or name another variable with --api-key-env); "
                "for a local server without keys pass --endpoint"
            )
        self._key_env = env_name
        self._key = key or None
        self.concurrency = concurrency
        self.parallelism = concurrency
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self.retry = retry or RetryPolicy()
        if max_retries is not None:
            self.retry = RetryPolicy(
                max_retries, self.retry.base_delay, self.retry.max_delay, self.retry.max_retry_after
            )
        self.image_max_side = image_max_side
        self.image_detail = image_detail
        self.json_mode = json_mode
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        # identity: the reply cap counts bytes as they arrive, so a compressed reply (a gzip bomb) never
        # expands in memory past it before the cap can stop it
        headers = {"Accept-Encoding": "identity"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            headers=headers,
            transport=transport,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),  # see _Deadline
        )
        self.requests_sent = 0  # HTTP requests including retries: what a test or a bill counts

    def __repr__(self) -> str:  # never the key
        return f"OpenAICaptioner(model={self.model!r}, endpoint={self.endpoint!r}, key from ${self._key_env})"

    def close(self) -> None:
        self._client.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _body(self, job: Job) -> dict[str, Any]:
        images = []
        for frame in job.frames:
            part: dict[str, Any] = {"url": image_data_url(frame, max_side=self.image_max_side)}
            if self.image_detail:
                part["detail"] = self.image_detail
            images.append({"type": "image_url", "image_url": part})
        p = job.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": job.system},
                {"role": "user", "content": [*images, {"type": "text", "text": job.user}]},
            ],
            "max_tokens": int(p.get("max_new_tokens", p.get("max_tokens", 700))),
            "temperature": float(p.get("temperature", 0.2)),
        }
        for key in ("top_p", "seed", "frequency_penalty", "presence_penalty"):
            if key in p:
                body[key] = p[key]
        if self.json_mode and job.format != "text":
            body["response_format"] = {"type": "json_object"}
        return body

    def _read_body(self, resp: httpx.Response) -> bytes:
        """The response body, or :class:`_TooLarge` with its first KB once it passes the cap: the
        rest is never read, so a 50 MB reply costs no more memory than a 1 MiB one."""
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > self.max_reply_bytes:
                raise _TooLarge(bytes(body[:REPLY_HEAD_CHARS]))
        return bytes(body)

    def _post_once(self, body: dict[str, Any]) -> Reply:
        with self._slots, _Deadline(self.timeout) as deadline:
            self.requests_sent += 1
            try:
                with self._client.stream(
                    "POST", self.url, json=body, extensions={"trace": deadline.trace}
                ) as resp:
                    data = self._read_body(resp)
            except _TooLarge as exc:
                head = reply_head(exc.head.decode("utf-8", errors="replace"))
                return Reply(
                    None,
                    f"reply from {self.url} is over {self.max_reply_bytes} bytes (max_reply_bytes), "
                    f"not read further; it starts {self._scrub(head)!r}",
                )
            except httpx.TransportError as exc:
                if deadline.expired or isinstance(exc, httpx.TimeoutException):
                    raise _Retryable(f"timed out: no complete reply within {self.timeout:g} s") from exc
                raise _Retryable(f"connection failed: {self._scrub(str(exc))}") from exc
        text = data.decode("utf-8", errors="replace")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(
                f"HTTP {resp.status_code}: {self._scrub(text[:200])}",
                parse_retry_after(resp.headers.get("retry-after")),
            )
        if resp.status_code >= 400:
            hint = f" (check the API key in ${self._key_env})" if resp.status_code in (401, 403) else ""
            return Reply(None, f"HTTP {resp.status_code} from {self.url}{hint}: {self._scrub(text[:300])}")
        try:
            reply = json.loads(data)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise _Retryable(f"unreadable response body ({type(exc).__name__}): {text[:120]!r}") from exc
        # The body's shape is the server's data, checked as such (no catch-all that would hide a bug here).
        choices = reply.get("choices") if isinstance(reply, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict):
            raise _Retryable(f"unreadable response body (no choices[0].message object): {text[:120]!r}")
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if content is None:
            refusal = message.get("refusal")
            content = str(refusal) if refusal else ""
        return Reply(str(content), None, reply.get("system_fingerprint"))

    def _request(self, job: Job) -> Reply:
        body = self._body(job)
        retries = 0
        while True:
            try:
                return self._post_once(body)
            except _Retryable as exc:
                if retries >= self.retry.max_retries:
                    return Reply(None, f"{exc} (gave up after {retries + 1} attempts)")
                with self._rng_lock:
                    wait = self.retry.delay(retries, exc.retry_after, self._rng)
                log.info("clip %s: %s; retrying in %.1fs", job.record.id, exc, wait)
                self._sleep(wait)
                retries += 1

    def _generate(self, jobs: list[Job]) -> list[Reply]:
        if len(jobs) == 1:
            return [self._request(jobs[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return list(pool.map(self._request, jobs))
