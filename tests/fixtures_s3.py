"""A real S3 API on localhost for the object-storage tests: moto's server app, served by werkzeug on a
free port (the OS picks it: port 0), with a log of every request it answered.

The log is the server's view, so a test can count what a reader really asked for: one ranged GET
(``Range: bytes=A-B``, answered 206) for a clip, never the whole shard. The server runs in a thread of
the test process and stops with :meth:`S3StandIn.stop` (shutdown, socket closed, thread joined).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures_server import ServerThread
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """``/bucket/key``: the client is told the endpoint, so it addresses buckets by path."""
    range: str | None
    """The ``Range`` header (``bytes=A-B``), None for a whole-object request."""
    status: int


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class S3StandIn(ServerThread):
    """moto's S3 on ``127.0.0.1:<free port>``; :attr:`storage_options` are what s3fs needs to reach it."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        app = DomainDispatcherApplication(create_backend_app)
        server = make_server("127.0.0.1", 0, self._logged(app), threaded=True, request_handler=_QuietHandler)
        super().__init__(server, "moto S3")

    def _logged(self, app: Any) -> Any:
        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            def start(status: str, headers: Any, exc_info: Any = None) -> Any:
                request = Request(
                    environ["REQUEST_METHOD"],
                    environ.get("PATH_INFO", ""),
                    environ.get("HTTP_RANGE"),
                    int(status.split()[0]),
                )
                self.requests.append(request)
                return start_response(status, headers, exc_info)

            return app(environ, start)

        return wsgi

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
        }

    def cli_options(self) -> list[str]:
        """The same options as ``--storage-option KEY=VALUE`` flags."""
        flags = []
        for key in ("endpoint_url", "key", "secret"):
            flags += ["--storage-option", f"{key}={self.storage_options[key]}"]
        return flags

    def upload(self, folder: Path, prefix: str = "ds") -> str:
        """Every file under ``folder`` into a new bucket under ``prefix``; the ``s3://`` URL of it."""
        import fsspec

        fs = fsspec.filesystem("s3", **self.storage_options)
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(folder).as_posix()}")
        fs.invalidate_cache()
        return f"s3://{bucket}/{prefix}"

    def gets(self, suffix: str = "") -> list[Request]:
        """The GET requests logged so far for keys ending in ``suffix``."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]
