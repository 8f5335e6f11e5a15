"""A local server run in a thread of the test process, the shared part of the HTTP and S3 stand-ins:
started by :meth:`ServerThread.start`, stopped by :meth:`ServerThread.stop` (shutdown, socket closed,
thread joined, and an assertion if the thread is still alive)."""

from __future__ import annotations

import threading
from typing import Any, Self


class ServerThread:
    """``server`` (anything with ``serve_forever``, ``shutdown``, ``server_close`` and ``server_port``)
    served from a daemon thread named ``name``; :attr:`endpoint` is its ``http://127.0.0.1:PORT``."""

    def __init__(self, server: Any, name: str) -> None:
        self._server = server
        self._name = name
        self.endpoint = f"http://127.0.0.1:{server.server_port}"
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), f"the {self._name} server thread did not stop"
