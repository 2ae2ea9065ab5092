"""Small real images for the tests of task images (decodable: a PNG made here byte by byte, and a GIF), a server
of files on loopback to fetch them from, and the API as those tests start it."""

from __future__ import annotations

import http.server
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient

import store.users
from api.app import create_app
from overnight.images import ImageSettings
from overnight.settings import APISettings, Settings
from store.engine import make_engine, make_sessionmaker, migrate


def png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real RGB PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A 1x1 GIF."""


@contextmanager
def file_server(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    """http://127.0.0.1:PORT serving ``routes`` (path -> status, headers, body); yields the base address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def image_api(
    tmp_path: Path, redis_url: str, *, user: str, api: APISettings | None = None, **images: Any
) -> Iterator[tuple[TestClient, Settings]]:
    """The API on a database of its own and a queue of its own, with these image settings, signed in as ``user``."""
    queue = f"test-images-{secrets.token_hex(4)}"
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=queue, images=ImageSettings(**images),
                        api=api or APISettings())  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        token = store.users.create_token(session, user)
    try:
        with TestClient(create_app(settings)) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            yield client, settings
    finally:
        redis.Redis.from_url(redis_url).delete(queue)
