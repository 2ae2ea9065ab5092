"""Red team of task images (issue 17 part 3): each test tries one attack through the real API (a real database and
Redis queue) or the worker's real GitHub image fetch, and fails if it works.

Address tricks in ``image_urls`` (IPv4 written inside IPv6, loopback in other spellings), redirects, slow and
endless servers, compressed bodies, images that lie in their header, multipart before authentication, and the
installation token of GitHub image fetches going anywhere but the GitHub host. Every server is on loopback; the
addresses that are tried and must be refused are never connected to.
"""

from __future__ import annotations

import gzip
import json
import secrets
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import store.images
import store.tasks
import store.users
from overnight.github.images import image_url_allowed
from overnight.images import ImageSettings
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from tests.images import image_api, png
from worker.images import fetch_issue_images

REPO = "https://github.com/acme/widgets.git"
TASK = {"repo": REPO, "ref": "main", "instruction": "Make it look like the picture"}


def _client(tmp_path: Path, redis_url: str, **images: Any) -> Iterator[tuple[TestClient, Settings]]:
    return image_api(tmp_path, redis_url, user="mallory", **images)


@pytest.fixture
def api(tmp_path: Path, redis_url: str) -> Iterator[tuple[TestClient, Settings]]:
    """As deployed: no private network allowed; a short fetch timeout so a wrongly attempted address fails fast."""
    yield from _client(tmp_path, redis_url, max_bytes=64 * 1024, fetch_timeout=2)


@pytest.fixture
def api_loopback(tmp_path: Path, redis_url: str) -> Iterator[tuple[TestClient, Settings]]:
    """The operator allowed 127.0.0.1 (where the test's hostile servers are), nothing else."""
    yield from _client(tmp_path, redis_url, max_bytes=64 * 1024, fetch_timeout=2,
                       fetch_allowed_networks=["127.0.0.1/32"])  # fmt: skip


def _error(answer: httpx.Response) -> dict[str, Any]:
    return answer.json()["error"]  # type: ignore[no-any-return]


# --- addresses ---------------------------------------------------------------------------------------------------

EMBEDDED = [
    "http://[64:ff9b::7f00:1]/x.png",  # NAT64 (RFC 6052) of 127.0.0.1: an IPv6-only cloud host's gateway
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 of the metadata address
    "http://[64:ff9b::a00:1]/x.png",  # NAT64 of 10.0.0.1
    "http://[64:ff9b:1::a00:1]/x.png",  # the local-use NAT64 prefix (RFC 8215)
    "http://[2002:7f00:1::]/x.png",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::]/x.png",  # 6to4 of the metadata address
    "http://[::7f00:1]/x.png",  # IPv4-compatible 127.0.0.1 (deprecated, ::/96)
    "http://[::127.0.0.1]/x.png",
    "http://[::ffff:169.254.169.254]/x.png",  # IPv4-mapped
    "http://[fec0::1]/x.png",  # site-local (deprecated, private)
]
LOOPBACK_SPELLINGS = [
    "http://2130706433/x.png", "http://0x7f000001/x.png", "http://0177.0.0.1/x.png", "http://127.1/x.png",
    "http://0/x.png", "http://localhost/x.png", "http://LOCALHOST/x.png", "http://[::1]/x.png",
    "http://[0:0:0:0:0:ffff:7f00:1]/x.png", "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1%25eth0]/x.png",
]  # fmt: skip


@pytest.mark.parametrize("url", EMBEDDED)
def test_ipv4_written_inside_ipv6_is_refused_as_its_ipv4_address(api: tuple[TestClient, Settings], url: str) -> None:
    """An IPv6 address that carries an IPv4 one (NAT64, 6to4, IPv4-compatible, mapped) is judged by the IPv4
    address it leads to: on an IPv6-only host with NAT64 (AWS, GCP), ``64:ff9b::a9fe:a9fe`` is the metadata
    service. They must be refused before any connection, as their IPv4 addresses are."""
    client, _ = api
    started = time.monotonic()
    answer = client.post("/v1/tasks", json={**TASK, "image_urls": [url]})
    assert answer.status_code == 422, answer.text
    assert _error(answer)["code"] == "image_url_refused", f"{url} was tried, not refused: {_error(answer)['message']}"
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
def test_loopback_and_metadata_in_every_spelling_are_refused(api: tuple[TestClient, Settings], url: str) -> None:
    client, _ = api
    answer = client.post("/v1/tasks", json={**TASK, "image_urls": [url]})
    assert answer.status_code == 422, answer.text
    error = _error(answer)
    assert error["code"] == "image_url_refused" or "does not resolve" in error["message"], error["message"]


class _Hostile(BaseHTTPRequestHandler):
    """Routes: /to?u=URL redirects there; /slow drips a PNG a byte at a time; /endless sends chunks forever;
    /gzip is a gzip bomb declared as a PNG; /silent never answers."""

    seen: list[dict[str, str]] = []
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        path, _, query = self.path.partition("?")
        if path == "/to":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("u="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "60000")
            self.end_headers()
            try:
                for byte in png() * 1000:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                return
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(png()), png()))
                for _ in range(100000):
                    self.wfile.write(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n")
            except OSError:
                return
        elif path == "/gzip":
            body = gzip.compress(png() + b"\0" * (64 * 2**20), compresslevel=9)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/silent":
            time.sleep(8)
        elif path == "/ok.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(png())))
            self.end_headers()
            self.wfile.write(png())
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    _Hostile.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


REDIRECTS = [
    *EMBEDDED[1:4], "http://127.0.0.2/x.png", "http://[::1]/x.png", "http://2130706434/x.png",
    "http://user:pw@127.0.0.1/x.png", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1:6379/_INFO",
    "//169.254.169.254/latest/", "https:///169.254.169.254/",
]  # fmt: skip


@pytest.mark.parametrize("target", REDIRECTS)
def test_a_redirect_cannot_lead_where_an_address_could_not(
    api_loopback: tuple[TestClient, Settings], hostile: str, target: str
) -> None:
    client, _ = api_loopback
    answer = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{hostile}/to?u={target}"]})
    assert answer.status_code == 422, answer.text
    assert _error(answer)["code"] == "image_url_refused", _error(answer)["message"]


@pytest.mark.parametrize("location", ["data:image/png;base64,AA", "http://[::1", "http://a b/", "javascript:alert(1)"])
def test_a_redirect_the_client_cannot_parse_gets_a_4xx_not_a_500(
    api_loopback: tuple[TestClient, Settings], hostile: str, location: str
) -> None:
    """Whatever Location a hostile image server answers, the task's creator gets a 4xx naming the image, never an
    unhandled error (httpx raises InvalidURL, which is no HTTPError, while building the redirect)."""
    client, _ = api_loopback
    answer = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{hostile}/to?u={location}"]})
    assert answer.status_code == 422, answer.text
    assert _error(answer)["code"] in ("image_url_refused", "image_fetch_failed"), answer.text


@pytest.mark.parametrize("path", ["/slow", "/silent"])
def test_a_slow_server_holds_the_request_no_longer_than_the_fetch_timeout(
    api_loopback: tuple[TestClient, Settings], hostile: str, path: str
) -> None:
    """A server that drips its image (slowloris) or never answers gets the fetch timeout (2 s here), not more."""
    client, _ = api_loopback
    started = time.monotonic()
    answer = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{hostile}{path}"]})
    took = time.monotonic() - started
    assert answer.status_code == 422 and _error(answer)["code"] == "image_fetch_failed", answer.text
    assert took < 5, f"the fetch held the request {took:.1f} s with a 2 s timeout"


@pytest.mark.parametrize("path", ["/endless", "/gzip"])
def test_an_endless_or_compressed_body_is_cut_at_the_limit(
    api_loopback: tuple[TestClient, Settings], hostile: str, path: str
) -> None:
    """An endless chunked body, and a 64 MiB body sent as a 65 KB gzip (Content-Encoding), stop at the image
    limit (64 KiB here) with 413 naming it: the limit is on the bytes that would be stored, not those sent."""
    client, _ = api_loopback
    answer = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{hostile}{path}"]})
    assert answer.status_code == 413, answer.text
    assert "OVERNIGHT_IMAGES_MAX_BYTES" in _error(answer)["message"]


# --- images that lie --------------------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says ``width`` x ``height`` (what a decompression bomb's header says)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 1000), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _form(*files: tuple[str, bytes, str]) -> dict[str, Any]:
    return {"data": {"task": json.dumps(TASK)}, "files": [("image", file) for file in files]}


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("magic-then-html.png", b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>" + b" " * 64),
        ("magic-only.jpg", b"\xff\xd8\xff" + b"\0" * 64),
        ("gif-header-only.gif", b"GIF89a" + b"\0" * 64),
        ("riff-webp-only.webp", b"RIFF\0\0\0\0WEBP" + b"\0" * 64),
    ],
    ids=["png", "jpeg", "gif", "webp"],
)
def test_a_file_that_only_starts_like_an_image_is_refused(
    api: tuple[TestClient, Settings], name: str, data: bytes
) -> None:
    """The magic bytes alone do not make an image: a file that no decoder reads would reach the model server,
    which refuses the whole request mid-task (vLLM answers 400, the agent reports a server without vision)."""
    client, _ = api
    answer = client.post("/v1/tasks", **_form((name, data, "image/png")))
    assert answer.status_code == 415, f"{name} was accepted as an image: {answer.status_code} {answer.text[:200]}"


def test_an_image_whose_header_claims_a_huge_canvas_is_refused(api: tuple[TestClient, Settings]) -> None:
    """A 1 KB PNG that says it is 100000 x 100000 pixels (a decompression bomb: 30 GB decoded) must not reach the
    model server, which would decode it; refused with a 4xx that names a limit."""
    client, _ = api
    bomb = _png_claiming(100_000, 100_000)
    assert len(bomb) < 4096
    answer = client.post("/v1/tasks", **_form(("bomb.png", bomb, "image/png")))
    assert 400 <= answer.status_code < 500, f"a 100000x100000 PNG was accepted: {answer.status_code}"


# --- before authentication --------------------------------------------------------------------------------------


def test_a_multipart_body_without_a_valid_token_gets_401_and_nothing_is_stored(
    api: tuple[TestClient, Settings],
) -> None:
    """Nobody without a token makes the server judge images: the answer is 401 whatever the parts hold (not 415,
    413 or 422, which would say the files were read and checked), and no task or image row exists after."""
    client, settings = api
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not-a-token"}):
        for files in ((("a.png", b"not an image", "image/png"),), (("a.png", png(), "image/png"),) * 9):
            answer = client.post("/v1/tasks", headers=headers, **_form(*files))
            assert answer.status_code == 401, (headers, answer.status_code, answer.text[:200])
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        assert store.tasks.list_tasks(session, limit=10)[0] == []


# --- the GitHub installation token ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://evilgithubusercontent.com/x.png", "https://githubusercontent.com.evil.test/x.png",
        "https://github.com.evil.test/user-attachments/assets/x", "https://github.com@evil.test/user-attachments/x",
        "https://evil.test/github.com/user-attachments/x", "https://evil.test#.githubusercontent.com/x.png",
        "http://user-images.githubusercontent.com/x.png",
        "https://user-images.githubusercontent.com:8443/x.png", "https://github.com/settings/tokens",
        "https://api.github.com/user", "https://gist.github.com/x/raw/y.png", "https://evil.github.io/x.png",
        "https://x.githubusercontent.com@evil.test/x.png",
    ],
)  # fmt: skip
def test_look_alike_hosts_are_not_githubs(url: str) -> None:
    """The hosts a GitHub image (and so the installation token) may go to: look-alikes, userinfo, fragments,
    plain http, other ports, GitHub pages that are not images and GitHub Pages sites are not among them."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return
    assert not image_url_allowed("https://api.github.com")(parsed), url


class _Tokens(BaseHTTPRequestHandler):
    """A server that notes every Authorization header it is sent."""

    seen: list[tuple[int, str, str | None]] = []
    redirect_to = ""

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        type(self).seen.append((port, self.path, self.headers.get("Authorization")))
        if self.path.startswith("/user-attachments/go"):
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(png())))
        self.end_headers()
        self.wfile.write(png())

    def log_message(self, *args: object) -> None:
        pass


def _token_server(address: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, 0), _Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("where", ["other-port", "other-address", "userinfo", "scheme-relative"])
def test_the_installation_token_goes_to_the_github_server_only(tmp_path: Path, where: str) -> None:
    """A GitHub (Enterprise) image that redirects elsewhere — another port of the same address, another address,
    a URL with the GitHub host as userinfo — is not followed, and only the GitHub server ever sees the token."""
    _Tokens.seen = []
    github, elsewhere = _token_server("127.0.0.1"), _token_server("127.0.0.2")
    try:
        gh_port, other_port = github.server_address[1], elsewhere.server_address[1]
        _Tokens.redirect_to = {
            "other-port": f"http://127.0.0.1:{other_port}/x.png",
            "other-address": f"http://127.0.0.2:{other_port}/x.png",
            "userinfo": f"http://127.0.0.1:{gh_port}@127.0.0.2:{other_port}/x.png",
            "scheme-relative": f"//127.0.0.2:{other_port}/x.png",
        }[where]
        engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        migrate(engine)
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            task = store.tasks.create_task(session, repo=REPO, ref="main", instruction="x")
            task_id = task.id
            store.images.add_pending(session, task_id, [f"http://127.0.0.1:{gh_port}/user-attachments/go"])
        secret = f"ghs_{secrets.token_hex(16)}"
        limits = ImageSettings(fetch_timeout=3, fetch_allowed_networks=["127.0.0.0/8"])
        fetch_issue_images(sessions, task_id, token=lambda: secret, api_url=f"http://127.0.0.1:{gh_port}/api/v3",
                           limits=limits)  # fmt: skip
        with sessions() as session:
            [row] = store.images.list_images(session, task_id)
            outcome = (row.data, row.error)
    finally:
        for server in (github, elsewhere):
            server.shutdown()
            server.server_close()
    assert [port for port, _, _ in _Tokens.seen] == [gh_port], _Tokens.seen  # only the GitHub server was asked
    assert all(token in (None, f"token {secret}") for _, _, token in _Tokens.seen)
    assert outcome[0] is None and outcome[1], outcome


def test_a_github_image_address_never_resolving_to_a_private_address_is_fetched_with_the_token(tmp_path: Path) -> None:
    """The counterpart that keeps the test above honest: the same server's own image is fetched, with the token."""
    _Tokens.seen = []
    github = _token_server("127.0.0.1")
    try:
        gh_port = github.server_address[1]
        engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        migrate(engine)
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            task_id = store.tasks.create_task(session, repo=REPO, ref="main", instruction="x").id
            store.images.add_pending(session, task_id, [f"http://127.0.0.1:{gh_port}/user-attachments/ok.png"])
        limits = ImageSettings(fetch_timeout=3, fetch_allowed_networks=["127.0.0.0/8"])
        fetch_issue_images(sessions, task_id, token=lambda: "ghs_x", api_url=f"http://127.0.0.1:{gh_port}/api/v3",
                           limits=limits)  # fmt: skip
        with sessions() as session:
            [row] = store.images.list_images(session, task_id)
            assert row.data == png() and row.error is None
    finally:
        github.shutdown()
        github.server_close()
    assert _Tokens.seen == [(gh_port, "/user-attachments/ok.png", "token ghs_x")]


def test_loopback_names_resolve_as_the_operating_system_says() -> None:
    """(Sanity for the spellings above: each of them names loopback here, so refusing them is the point.)"""
    for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "localhost"):
        assert socket.getaddrinfo(host, 80)[0][4][0] in ("127.0.0.1", "::1")
