"""An ASGI app served on a free loopback port from a background thread: the scripted model server (for
tests, benchmarks and demos) and the tests' fake GitHub."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Self

import uvicorn


class LoopbackServer:
    def __init__(self, app: Any, *, name: str = "loopback server", tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate chain, key) PEM files to serve https:// with."""
        self.name = name
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._scheme = "https" if tls else "http"
        certificate, key = (str(tls[0]), str(tls[1])) if tls else (None, None)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ssl_certfile=certificate, ssl_keyfile=key)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
