"""The web app in process (FastAPI's TestClient) over a SQLite file and a Redis queue of its own; a browser
client per user, each with its own cookie jar."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

import store.patches
import store.tasks
import store.users
from api.app import create_app
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState
from tests.web.stack import chromium, shots, stack, visit  # noqa: F401  (the browser tests' fixtures)

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
SIGN_IN_NONCE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(kw_only=True)
class Browser:
    """A TestClient with its own cookies, signed in (or not) as one user."""

    client: TestClient
    csrf: str = ""

    def page(self, path: str) -> Any:
        return self.client.get(path)

    def api(self, method: str, path: str, *, csrf: bool = True, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        return self.client.request(method, path, headers=headers, **kwargs)


def sign_in(client: TestClient, token: str, next_path: str = "/") -> Any:
    form = client.get("/sign-in")
    nonce = SIGN_IN_NONCE.search(form.text)
    assert nonce, form.text
    return client.post("/sign-in", data={"token": token, "csrf_token": nonce.group(1), "next": next_path})


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    queue = f"test-web-{secrets.token_hex(4)}"
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, queue=queue, allow_local_repos=False)
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(queue)


@pytest.fixture
def sessions(settings: Settings) -> Any:
    return make_sessionmaker(make_engine(settings.resolved_database_url))


@pytest.fixture
def tokens(sessions: Any) -> dict[str, str]:
    with sessions.begin() as session:
        return {
            "alice": store.users.create_token(session, "alice"),
            "bob": store.users.create_token(session, "bob"),
            "root": store.users.create_token(session, "root", admin=True),
        }


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def browser(app: FastAPI, tokens: dict[str, str]) -> Callable[..., Browser]:
    """``browser("alice")``: a client signed in as alice; ``browser()``: one signed in as nobody."""

    def make(user: str | None = None, *, base_url: str = "http://testserver") -> Browser:
        client = TestClient(app, base_url=base_url, follow_redirects=False)
        if user is None:
            return Browser(client=client)
        answer = sign_in(client, tokens[user])
        assert answer.status_code == 303, answer.text
        page = client.get("/")
        match = CSRF_META.search(page.text)
        assert match, page.text
        return Browser(client=client, csrf=match.group(1))

    return make


@pytest.fixture
def make_task(sessions: Any) -> Callable[..., str]:
    """``make_task("alice", state=..., patch=...)``: a task of that user as the worker would leave it."""

    def make(
        user: str,
        *,
        instruction: str = "Fix the parser",
        repo: str = "https://github.com/acme/widgets.git",
        state: TaskState = TaskState.queued,
        diff: str | None = None,
        reason: str | None = None,
    ) -> str:
        with sessions.begin() as session:
            owner = store.users.list_tokens(session, user_name=user)[0].user
            task = store.tasks.create_task(session, repo=repo, ref="main", instruction=instruction, user_id=owner.id)
            if state is not TaskState.queued:
                store.tasks.transition(session, task.id, from_states=[TaskState.queued], to_state=TaskState.preparing)
            if diff is not None:
                task.base_sha = "a" * 40
                patch = store.patches.store_patch(session, task.id, base_sha="a" * 40, diff=diff, title="Fix",
                                                  body="Fixed.", files_changed=1)  # fmt: skip
                patch.diffstat = " 1 file changed, 1 insertion(+), 1 deletion(-)"
            if state not in (TaskState.queued, TaskState.preparing):
                store.tasks.transition(session, task.id, from_states=[TaskState.preparing], to_state=state,
                                       reason=reason)  # fmt: skip
            return task.id

    return make
