"""The red team's tools (issue 16): the web app served for real (uvicorn in a thread, over the conftest's app and
its SQLite file), Debian's Chromium through Playwright, the attacker's own site, and ``probe``, which reads what a
page made of the hostile strings of ``tests.web.redteam_hostile``: labels pushed by script that ran, elements of the
class ``h9-injected`` (markup made of data, even when no script ran), event-handler attributes, ``javascript:``
links, inline scripts, and the Content-Security-Policy violations the page reported.

Test modules load the fixtures with ``pytest_plugins = ["tests.web.redteam"]``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.e2e.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
WATCH = """
window.__h9pwn = [];
window.__h9violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__h9violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample || ""}`);
});
"""
PROBE = """
() => {
  const cut = (node) => node.outerHTML.slice(0, 240);
  const all = [...document.querySelectorAll("*")];
  const linkLike = (node) => node.getAttribute("href") || node.getAttribute("src") || node.getAttribute("action") || "";
  return {
    ran: window.__h9pwn || [],
    injected: [...document.querySelectorAll(".h9-injected")].map(cut),
    handlers: all.filter((node) => [...node.attributes].some((a) => a.name.toLowerCase().startsWith("on"))).map(cut),
    script_links: all.filter((node) => /^\\s*(javascript:|vbscript:|data:text\\/html)/i.test(linkLike(node))).map(cut),
    inline_scripts: [...document.scripts].filter((s) => !s.src && s.type !== "application/json").map(cut),
    violations: window.__h9violations || [],
  };
}
"""


def probe(page: Page) -> dict[str, list[str]]:
    return page.evaluate(PROBE)  # type: ignore[no-any-return]


def routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, those of included routers too."""

    def walk(items: Any, prefix: str) -> Iterator[tuple[str, str]]:
        for item in items:
            inner = getattr(item, "original_router", None) or getattr(item, "router", None)
            if inner is not None and hasattr(inner, "routes"):
                context = getattr(item, "include_context", None)
                yield from walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
            elif getattr(item, "methods", None) and getattr(item, "path", None):
                for method in sorted(item.methods - {"HEAD"}):
                    yield method, prefix + item.path

    yield from walk(app.routes, "")


# --- the server and the browser -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LiveServer:
    app: FastAPI
    port: int = field(default_factory=free_port)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.server.force_exit = True  # open event streams would hold a graceful stop
            self.thread.join(timeout=15)


@pytest.fixture
def live(app: FastAPI) -> Iterator[LiveServer]:
    """The conftest's app (its SQLite file, its own Redis queue, no worker) served on a free port."""
    server = LiveServer(app=app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def red_chromium(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """The browser of tests/web's own browser tests when the conftest offers one (a process may run one Playwright
    at a time), else one of ours."""
    try:
        shared: Browser | None = request.getfixturevalue("chromium")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield shared
        return
    if not Path(CHROMIUM).exists():
        pytest.fail(f"these tests need Debian's chromium at {CHROMIUM} (bash infra/setup-host.sh --dev installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass(kw_only=True)
class Visitor:
    """A browser context of its own (its own cookies); page errors are collected."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    def sign_in(self, base: str, token: str) -> None:
        self.page.goto(f"{base}/sign-in")
        self.page.get_by_label("Overnight token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(f"{base}/")

    def session_cookie(self) -> str | None:
        return next((c["value"] for c in self.context.cookies() if c["name"] == "overnight_session"), None)


@pytest.fixture
def visitor(red_chromium: Browser) -> Iterator[Any]:
    """``visitor(bypass_csp=False)``: a fresh browser context watching for script that runs and for CSP
    violations."""
    contexts: list[BrowserContext] = []

    def make(**options: Any) -> Visitor:
        context = red_chromium.new_context(viewport={"width": 1280, "height": 800}, **options)
        contexts.append(context)
        context.add_init_script(WATCH)
        visitor = Visitor(context=context, page=context.new_page())
        visitor.page.on("pageerror", lambda error: visitor.errors.append(str(error)))
        return visitor

    try:
        yield make
    finally:
        for context in contexts:
            with suppress(Exception):
                context.close()


class _AttackerHandler(BaseHTTPRequestHandler):
    pages: dict[str, str] = {}

    def do_GET(self) -> None:
        html = self.server.pages.get(self.path.split("?")[0])  # type: ignore[attr-defined]
        body = (html or "not found").encode()
        self.send_response(200 if html is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(kw_only=True)
class AttackerSite:
    """Pages of the attacker, on a server of their own: at ``localhost`` (another site than the app's
    ``127.0.0.1``, so the browser's SameSite rules apply) or at ``127.0.0.1`` (the same site, another origin:
    the cookie goes along). Both on the loopback, so that the browser's private-network rules stay out of it."""

    server: ThreadingHTTPServer

    def page(self, html: str, *, same_site: bool = False) -> str:
        pages: dict[str, str] = self.server.pages  # type: ignore[attr-defined]
        path = f"/attack-{len(pages)}"
        pages[path] = html
        host = "127.0.0.1" if same_site else "localhost"
        return f"http://{host}:{self.server.server_address[1]}{path}"


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerHandler)
    server.pages = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield AttackerSite(server=server)
    finally:
        server.shutdown()
        server.server_close()


def http(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, follow_redirects=False, timeout=10)
