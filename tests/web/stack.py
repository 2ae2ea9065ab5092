"""The real stack for the browser tests: Redis of the test's own, a worker process, the API under uvicorn in a
process of its own (stopped and started again on the same port when a test asks), the scripted model, Docker
sandboxes; and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

import store.users
from agent.scripted import ScriptedModelServer, ScriptedTurn
from tests.e2e.cluster import ROOT, Cluster, database, run_cluster
from tests.e2e.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}


@dataclass(kw_only=True)
class WebStack:
    cluster: Cluster
    model: ScriptedModelServer
    port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self) -> None:
        log = (self.cluster.tmp / f"api-{self.starts}.log").open("wb")
        self.starts += 1
        command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(self.port),
                   "--log-level", "warning", "--timeout-graceful-shutdown", "2"]  # fmt: skip
        self.api = subprocess.Popen(command, env=self.cluster.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.api.poll() is None and time.monotonic() < deadline, self.logs()
            with suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)

    def stop_api(self) -> None:
        if self.api is None or self.api.poll() is not None:
            return
        os.killpg(self.api.pid, signal.SIGTERM)
        try:
            self.api.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.api.pid, signal.SIGKILL)
            self.api.wait()

    def token(self, user: str, *, admin: bool = False) -> str:
        with self.cluster.sessions().begin() as session:
            return store.users.create_token(session, user, admin=admin)

    def script(self, *turns: ScriptedTurn) -> None:
        """What the model answers next, in order, whichever task asks."""
        self.model.state.extend(list(turns))

    def api_client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def logs(self) -> str:
        api = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.cluster.tmp.glob("api-*.log")))
        return f"API:\n{api}\nworkers:\n{self.cluster.logs()}"


@pytest.fixture
def stack(
    tmp_path: Path, scripted_model: ScriptedModelServer, docker_client: docker.DockerClient
) -> Iterator[WebStack]:
    with database("sqlite", tmp_path) as url:
        clusters = run_cluster(url, tmp_path, scripted_model)
        cluster = next(clusters)
        web = WebStack(cluster=cluster, model=scripted_model)
        try:
            cluster.start_worker()
            web.start_api()
            yield web
        finally:
            web.stop_api()
            print(web.logs())  # pytest shows it when the test failed
            with suppress(StopIteration):
                next(clusters)  # the cluster's own clean-up


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
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
    """A browser context of its own (its own cookies) and the page it looks at; script errors are collected."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def sign_in(self, base: str, token: str) -> None:
        self.page.goto(f"{base}/")
        self.page.wait_for_url("**/sign-in?next=/")
        self.page.get_by_label("Overnight token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(f"{base}/")


@pytest.fixture
def visit(chromium: Browser) -> Iterator[Any]:
    """``visit()``: a new visitor at 1280 x 800 in Tokyo's time zone (times must show in it, not in UTC)."""
    contexts = []

    def make(**options: Any) -> Visitor:
        context = chromium.new_context(viewport=VIEWPORT, timezone_id="Asia/Tokyo", locale="en-GB", **options)
        contexts.append(context)
        visitor = Visitor(page=context.new_page())
        visitor.page.on("pageerror", lambda error: visitor.errors.append(f"page error: {error}"))
        return visitor

    try:
        yield make
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the tests' screenshots go: docs/web/ when OVERNIGHT_WEB_SCREENSHOTS says so (to refresh the docs'
    pictures), else the test's own folder (a run does not rewrite tracked files)."""
    folder = Path(os.environ.get("OVERNIGHT_WEB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
