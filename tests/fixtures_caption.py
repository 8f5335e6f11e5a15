"""Shared fixtures for the captioner tests: a scriptable OpenAI-compatible chat-completions server on
loopback, and a few clip records."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medvideocap.dataset.schema import ClipRecord, SourceContext

DETAILED = (
    "A surgeon's gloved hands work inside an open abdominal cavity under bright operating-room light. "
    "The left hand holds curved forceps that lift a fold of pink tissue while the right hand passes a "
    "needle driver with a curved needle and dark suture through the tissue edge. Blue drapes frame the "
    "field and a metal retractor holds the incision open as the surgeon ties a knot."
)
BRIEF = "Gloved hands suture tissue inside an open abdomen with forceps and a needle driver."
GOOD_REPLY = json.dumps({"detailed": DETAILED, "brief": BRIEF})
REFUSAL = "I'm sorry, but I can't help with describing this medical content."


def record(clip_id: str = "clip_a", title: str | None = "Laparoscopic suturing basics") -> ClipRecord:
    return ClipRecord(
        id=clip_id,
        group=clip_id,
        file_name=f"{clip_id}.mp4",
        duration=2.0,
        fps=8,
        width=64,
        height=48,
        category="clinical_practice",
        source=SourceContext(title=title, transcript="Now we pass the needle through both edges."),
    )


@dataclass
class Action:
    """What the server does with one request: reply ``content`` after ``delay`` seconds, or answer
    ``status`` with ``headers``/``body``; ``raw_body`` sends bytes that are not JSON. ``trickle``
    spreads the body over that many seconds, a byte at a time (the status line and headers too
    when ``trickle_head``)."""

    content: str | None = GOOD_REPLY
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    delay: float = 0.0
    raw_body: bytes | None = None
    trickle: float = 0.0
    trickle_head: bool = False


class FakeChatServer:
    """A chat-completions server that pops one scripted :class:`Action` per request (``default`` when
    the script is empty) and records every request it saw."""

    def __init__(self, default: Callable[[dict[str, Any]], Action] | None = None):
        self.script: list[Action] = []
        self.default = default or (lambda body: Action())
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def trickle(self, action: Action, payload: bytes) -> None:
                lines = [f"HTTP/1.0 {action.status} Scripted", "content-type: application/json"]
                lines += [
                    f"content-length: {len(payload)}",
                    *(f"{k}: {v}" for k, v in action.headers.items()),
                ]
                head = ("\r\n".join(lines) + "\r\n\r\n").encode()
                slow = head + payload if action.trickle_head else payload
                if not action.trickle_head:
                    self.wfile.write(head)
                for i in range(len(slow)):
                    self.wfile.write(slow[i : i + 1])
                    time.sleep(action.trickle / len(slow))

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = server.script.pop(0) if server.script else server.default(body)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if action.delay:
                        time.sleep(action.delay)
                    if action.raw_body is not None:
                        payload = action.raw_body
                    elif action.status != 200:
                        payload = (action.body or json.dumps({"error": {"message": "scripted"}})).encode()
                    else:
                        payload = json.dumps(
                            {
                                "id": "chatcmpl-1",
                                "object": "chat.completion",
                                "model": body["model"],
                                "system_fingerprint": "fp_test42",
                                "choices": [
                                    {
                                        "index": 0,
                                        "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": action.content},
                                    }
                                ],
                            }
                        ).encode()
                    if action.trickle:
                        self.trickle(action, payload)
                        return
                    self.send_response(action.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for k, v in action.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up: expected in timeout tests
                finally:
                    with server.lock:
                        server.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @contextmanager
    def running(self) -> Iterator[FakeChatServer]:
        thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
