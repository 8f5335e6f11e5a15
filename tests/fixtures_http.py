"""A web server on localhost for the tests that read a release where it lies: the standard library's
``http.server`` serving one folder on a free 127.0.0.1 port (the OS picks it: port 0), in a thread of
the test process, with what a real file host does for ranged reads and a count of what it sent.

Files answer ``Range: bytes=A-B`` (and ``bytes=A-``, ``bytes=-N``) with ``206 Partial Content`` and
``Content-Range``; ``HEAD`` gives ``Content-Length`` and ``Accept-Ranges: bytes``; a range past the end
is ``416``. Folders answer with the standard index page (what fsspec's HTTP filesystem lists), unless
the server is made with ``listing=False`` (a host such as the Hub's ``resolve`` URLs, which lists
nothing). Every body byte sent is counted per request path (:meth:`HttpStandIn.sent`), the server's
view: a test compares what a reader really fetched with the size of what it served.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from fixtures_server import ServerThread

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 1 << 20


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    listing = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str | None, int]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away is no error
            super().handle_error(request, client_address)

    def count(self, path: str, n: int) -> None:
        with self.lock:
            self.counts[path] += n


class _Handler(SimpleHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as a real host; every answer has a Content-Length

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _log(self, status: int) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self._path(), self.headers.get("Range"), status))

    def _path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def _serve(self, body: bool) -> None:
        local = self.translate_path(self.path)
        if os.path.isdir(local):
            if not self.server.listing:
                self._log(404)
                self.send_error(404, "no folder index here")
                return
            self._log(200)
            super().do_GET() if body else super().do_HEAD()
            return
        if not os.path.isfile(local):
            self._log(404)
            self.send_error(404, "not found")
            return
        size = os.path.getsize(local)
        start, end, status = 0, size - 1, 200
        asked = self.headers.get("Range")
        if asked:
            m = _RANGE.fullmatch(asked.strip())
            if m is None or not (m.group(1) or m.group(2)):
                self._refuse(size)
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                self._refuse(size)
                return
            status = 206
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with open(local, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                try:
                    self.wfile.write(chunk)
                except ConnectionError:  # the client went away (a killed convert)
                    return
                self.server.count(self._path(), len(chunk))
                left -= len(chunk)

    def _refuse(self, size: int) -> None:
        self._log(416)
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def copyfile(self, source: IO[bytes], outputfile: IO[bytes]) -> None:  # folder index pages
        data = source.read()
        outputfile.write(data)
        self.server.count(self._path(), len(data))
        shutil.copyfileobj(source, outputfile)


class HttpStandIn(ServerThread):
    """``root`` served on ``http://127.0.0.1:<free port>/``; :meth:`url` of a path under it, and the
    bytes sent so far (:meth:`sent`)."""

    def __init__(self, root: Path, *, listing: bool = True) -> None:
        self.root = Path(root)
        server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(self.root)))
        server.listing = listing
        super().__init__(server, "HTTP stand-in")

    def url(self, path: str = "") -> str:
        return f"{self.endpoint}/{path.lstrip('/')}"

    def sent(self, suffix: str = "") -> int:
        """Body bytes sent so far for request paths ending in ``suffix`` (all of them by default)."""
        with self._server.lock:
            return sum(n for path, n in self._server.counts.items() if path.endswith(suffix))

    def requests(self) -> list[tuple[str, str, str | None, int]]:
        """``(method, path, Range header, status)`` of every request answered so far."""
        with self._server.lock:
            return list(self._server.requests)

    def reset(self) -> None:
        with self._server.lock:
            self._server.counts.clear()
            self._server.requests.clear()
