"""Red team, one user reaching another's tasks (issue 16): every route of the app that names a task, found by
walking the app's routes (so that a route added later is tried too), with the session cookie and with a
bearer token, on another user's task and on a task that does not exist. The two answers must be the same
(nothing tells "someone else's" from "none"), say nothing of the task, and change nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import store.patches
from store.models import Task, TaskEvent, TaskState
from tests.web.conftest import Browser
from tests.web.redteam import routes

DIFF = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-a\n+SECRET-DIFF\n"
NOBODYS = "0123456789abcdef"
QUERIES = {
    "/v1/tasks/{task_id}/patch": ["format=diff", "format=mbox", "format=json"],
    "/v1/tasks/{task_id}/events": ["after=0", "after=0&limit=1000"],
}
BODIES: dict[str, Any] = {"follow-up": {"instruction": "steal"}, "messages": {"text": "steal", "message": "steal"}}


def task_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = sorted({(method, path) for method, path in routes(app) if "{task_id}" in path})
    known = {("GET", "/tasks/{task_id}"), ("GET", "/tasks/{task_id}/summary"), ("GET", "/v1/tasks/{task_id}"),
             ("POST", "/v1/tasks/{task_id}/cancel"), ("GET", "/v1/tasks/{task_id}/patch")}  # fmt: skip
    assert known <= set(found), f"the route walk missed some: {known - set(found)}"
    return found


def requests_for(method: str, path: str) -> list[dict[str, Any]]:
    """The ways to call one route: each query variant, the event stream, the body a POST needs."""
    variants: list[dict[str, Any]] = [{"query": query} for query in QUERIES.get(path, [""])]
    if path.endswith("/events"):
        variants.append({"query": "", "headers": {"Accept": "text/event-stream"}})
    if method == "POST":
        name = path.rsplit("/", 1)[-1]
        variants = [{**variant, "json": BODIES.get(name)} for variant in variants]
    return variants


def same_shape(text: str, task_id: str) -> str:
    return text.replace(task_id, "TASK").replace(NOBODYS, "TASK")


def snapshot(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    with sessions() as session:
        tasks = session.execute(select(Task.id, Task.state, Task.cancel_requested).order_by(Task.id)).all()
        events = session.scalar(select(func.count()).select_from(TaskEvent))
        return tuple(tasks), events


@pytest.mark.parametrize("owner", ["alice", "root"])
def test_every_route_naming_a_task_answers_another_users_task_as_if_there_were_none(
    app: FastAPI,
    browser: Callable[..., Browser],
    make_task: Callable[..., str],
    sessions: sessionmaker[Session],
    tokens: dict[str, str],
    owner: str,
) -> None:
    """Bob tries a user's and the admin's tasks: a running one (events, cancel) and an ended one with a patch and
    a trajectory (downloads, retry, follow-up)."""
    running = make_task(owner, instruction="SECRET-INSTRUCTION running", state=TaskState.running)
    ended = make_task(owner, instruction="SECRET-INSTRUCTION ended", repo="https://github.com/secret/repo.git",
                      state=TaskState.succeeded, diff=DIFF)  # fmt: skip
    with sessions.begin() as session:
        store.patches.store_trajectory(session, ended, {"messages": [{"role": "user", "content": "SECRET-TRAJ"}]})
    bob = browser("bob")
    bearer = {"Authorization": f"Bearer {tokens['bob']}"}
    before = snapshot(sessions)
    tried = 0
    for method, path in task_routes(app):
        for variant in requests_for(method, path):
            for task_id in (running, ended):
                answers = []
                for target in (task_id, NOBODYS):
                    url = path.format(task_id=target) + (f"?{variant['query']}" if variant["query"] else "")
                    headers = dict(variant.get("headers", {}))
                    with_cookie = bob.api(method, url, headers=headers, json=variant.get("json"))
                    with_bearer = bob.client.request(method, url, headers={**headers, **bearer},
                                                     json=variant.get("json"))  # fmt: skip
                    answers.append((with_cookie, with_bearer))
                for theirs, nobodys in zip(answers[0], answers[1], strict=True):
                    where = f"{method} {path} {variant}"
                    assert 400 <= theirs.status_code < 500, (where, theirs.status_code, theirs.text[:300])
                    assert theirs.status_code == nobodys.status_code, where
                    assert same_shape(theirs.text, task_id) == same_shape(nobodys.text, task_id), where
                    assert not re.search(r"SECRET|secret/repo", theirs.text), where
                    tried += 1
    assert tried >= 40
    assert snapshot(sessions) == before, "a refused request changed something"


def test_users_see_only_their_own_tasks_in_every_list_and_the_admin_sees_all(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    """The list pages, their fragment and the API's list, with filters that name the others' repositories."""
    mine = make_task("bob", instruction="bob's own")
    theirs = {
        "alice": make_task("alice", instruction="SECRET alice", repo="https://github.com/alice/hidden.git"),
        "root": make_task("root", instruction="SECRET root", repo="https://github.com/root/hidden.git"),
    }
    bob = browser("bob")
    paths = ["/", "/?partial=rows", "/tasks/new", "/v1/tasks", "/v1/tasks?limit=200"]
    for owner in theirs:
        repo = f"https://github.com/{owner}/hidden.git"
        paths += [f"/?repo={repo}", f"/?repo={repo}&partial=rows", f"/v1/tasks?repo={repo}", f"/tasks/new?repo={repo}"]
    for path in paths:
        text = bob.page(path).text
        assert mine in text or "repo=" in path or path == "/tasks/new", path
        assert not any(task_id in text for task_id in theirs.values()), path
        assert "SECRET" not in text, path
    admin = browser("root")
    for path in ["/", "/v1/tasks"]:
        text = admin.page(path).text
        assert all(task_id in text for task_id in [mine, *theirs.values()]), path


def test_static_files_are_the_same_for_everyone_and_carry_no_session(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    make_task("alice", instruction="SECRET static")
    alice, nobody = browser("alice"), browser()
    page = alice.page("/").text
    assets = sorted(set(re.findall(r'(?:src|href)="(/static/[^"?]+)', page)))
    assert len(assets) >= 3, assets
    for asset in assets:
        signed, anonymous = alice.page(asset), nobody.page(asset)
        assert signed.status_code == anonymous.status_code == 200, asset
        assert signed.content == anonymous.content, asset
        assert alice.csrf not in signed.text and "SECRET" not in signed.text, asset
        assert "set-cookie" not in signed.headers, asset
    for probe in ["/static/../web/session.py", "/static/%2e%2e/session.py", "/static/..%2fsession.py",
                  "/static/%2e%2e%2f%2e%2e%2fweb-session.key", "/static//etc/passwd"]:  # fmt: skip
        answer = nobody.page(probe)
        assert answer.status_code == 404, probe
        assert "SessionCodec" not in answer.text and "root:" not in answer.text, probe
