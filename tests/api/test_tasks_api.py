"""The task endpoints against a real database and a real Redis queue: validation, auth and isolation,
idempotency, pagination, retry and follow-up rules, events as JSON and as SSE, health and metrics."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

import store.patches
import store.tasks
import store.users
from api.app import create_app
from overnight.queue import TaskQueue
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState

REPO = "https://github.com/acme/widgets.git"


@pytest.fixture
def queue_name() -> str:
    return f"test-api-{secrets.token_hex(4)}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, queue_name: str) -> Settings:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=queue_name, allow_local_repos=False)
    migrate(make_engine(settings.resolved_database_url))
    return settings


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        return {
            "alice": store.users.create_token(session, "alice"),
            "bob": store.users.create_token(session, "bob"),
            "root": store.users.create_token(session, "root", admin=True),
        }


@pytest.fixture
def app_client(settings: Settings, redis_url: str, queue_name: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    redis.Redis.from_url(redis_url).delete(queue_name)


@pytest.fixture
def client(app_client: TestClient, tokens: dict[str, str]) -> TestClient:
    app_client.headers["Authorization"] = f"Bearer {tokens['alice']}"
    return app_client


def as_user(client: TestClient, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it", **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def finish(settings: Settings, task_id: str, state: TaskState = TaskState.failed, patch: bool = False) -> None:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.preparing)
        if patch:
            store.tasks.get_task(session, task_id).base_sha = "a" * 40  # type: ignore[union-attr]
            store.patches.store_patch(session, task_id, base_sha="a" * 40, diff="diff --git a/x b/x\n", title="t",
                                      body="b", files_changed=1)  # fmt: skip
        store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=state, reason="test")


def test_create_task_stores_it_queued_and_enqueues_its_id(client: TestClient, redis_url: str, queue_name: str) -> None:
    task = create(client, ref="main")
    assert task["state"] == "queued" and task["ref"] == "main" and task["attempt"] == 0 and task["kind"] == "task"
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 1
    assert client.get(f"/v1/tasks/{task['id']}").json()["id"] == task["id"]
    assert [t["id"] for t in client.get("/v1/tasks").json()["tasks"]] == [task["id"]]
    events = client.get(f"/v1/tasks/{task['id']}/events").json()["events"]
    assert events[0]["type"] == "state" and events[0]["data"] == {"state": "queued"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/v1/tasks"), ("post", "/v1/tasks"), ("get", "/v1/tasks/x"), ("post", "/v1/tasks/x/cancel"),
     ("post", "/v1/tasks/x/retry"), ("post", "/v1/tasks/x/follow-up"), ("get", "/v1/tasks/x/events"),
     ("get", "/v1/tasks/x/patch"), ("get", "/v1/tasks/x/trajectory")],
)  # fmt: skip
def test_every_task_endpoint_needs_a_valid_token(app_client: TestClient, method: str, path: str) -> None:
    missing = getattr(app_client, method)(path)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = getattr(app_client, method)(path, headers={"Authorization": "Bearer ovn_not-a-token"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the bearer token is not valid"


def test_health_readiness_and_metrics_need_no_token(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    metrics = app_client.get("/metrics").text
    assert 'overnight_tasks{state="queued"}' in metrics and "overnight_queue_depth" in metrics
    assert "overnight_cached_token_share" in metrics and "overnight_sandbox_seconds_total" in metrics


def test_one_user_never_sees_another_s_tasks(client: TestClient, tokens: dict[str, str], settings: Settings) -> None:
    task = create(client)
    finish(settings, task["id"], patch=True)
    bob = as_user(client, tokens["bob"])
    for method, path in (("get", ""), ("post", "/cancel"), ("post", "/retry"), ("get", "/events"),
                         ("get", "/patch"), ("get", "/trajectory")):  # fmt: skip
        response = getattr(client, method)(f"/v1/tasks/{task['id']}{path}", headers=bob)
        assert response.status_code == 404 and response.json()["error"]["code"] == "task_not_found", path
    response = client.post(f"/v1/tasks/{task['id']}/follow-up", headers=bob, json={"instruction": "more"})
    assert response.status_code == 404
    assert client.get("/v1/tasks", headers=bob).json()["tasks"] == []
    admin = as_user(client, tokens["root"])
    assert [t["id"] for t in client.get("/v1/tasks", headers=admin).json()["tasks"]] == [task["id"]]
    assert client.get(f"/v1/tasks/{task['id']}/patch", headers=admin).status_code == 200


def test_idempotency_key_returns_the_first_task(client: TestClient, redis_url: str, queue_name: str,
                                                tokens: dict[str, str]) -> None:  # fmt: skip
    first = client.post("/v1/tasks", json={"repo": REPO, "instruction": "x"}, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/tasks", json={"repo": REPO, "instruction": "x"}, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 1
    other_user = client.post("/v1/tasks", json={"repo": REPO, "instruction": "x"},
                             headers={"Idempotency-Key": "k-1", **as_user(client, tokens["bob"])})  # fmt: skip
    assert other_user.status_code == 201 and other_user.json()["id"] != first.json()["id"]


def test_list_paginates_with_a_cursor_and_filters(client: TestClient, settings: Settings) -> None:
    ids = [create(client, instruction=f"task {n}")["id"] for n in range(5)]
    other = create(client, repo="https://github.com/acme/other.git")["id"]
    finish(settings, ids[0])
    page = client.get("/v1/tasks", params={"limit": 2}).json()
    seen = [t["id"] for t in page["tasks"]]
    while page["next_cursor"]:
        page = client.get("/v1/tasks", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [t["id"] for t in page["tasks"]]
    assert seen == [other, *reversed(ids)]
    assert [t["id"] for t in client.get("/v1/tasks", params={"state": "failed"}).json()["tasks"]] == [ids[0]]
    by_repo = client.get("/v1/tasks", params={"repo": "https://github.com/acme/other.git"}).json()["tasks"]
    assert [t["id"] for t in by_repo] == [other]
    bad = client.get("/v1/tasks", params={"cursor": "bm9wZQ=="})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"


def test_retry_and_follow_up_need_an_ended_task(client: TestClient, settings: Settings) -> None:
    task = create(client, max_steps=7)
    assert client.post(f"/v1/tasks/{task['id']}/retry").json()["error"]["code"] == "task_not_finished"
    assert client.post(f"/v1/tasks/{task['id']}/follow-up", json={"instruction": "more"}).status_code == 409
    finish(settings, task["id"], patch=True)
    retry = client.post(f"/v1/tasks/{task['id']}/retry")
    assert retry.status_code == 201
    assert (retry.json()["instruction"], retry.json()["max_steps"], retry.json()["state"]) == ("Fix it", 7, "queued")
    follow = client.post(f"/v1/tasks/{task['id']}/follow-up", json={"instruction": "Now also add tests"})
    assert follow.status_code == 201
    body = follow.json()
    assert body["kind"] == "follow-up" and body["parent_id"] == task["id"] and body["ref"] == "a" * 40
    no_patch = create(client)
    finish(settings, no_patch["id"])
    assert client.post(f"/v1/tasks/{no_patch['id']}/follow-up", json={"instruction": "x"}).status_code == 409


def test_events_stream_as_sse_resumable_and_ending_with_the_final_state(client: TestClient, settings: Settings) -> None:
    task = create(client)
    finish(settings, task["id"])
    with client.stream("GET", f"/v1/tasks/{task['id']}/events", headers={"Accept": "text/event-stream"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        frames = _frames(stream.iter_text())
    assert [f["id"] for f in frames] == ["1", "2", "3"]
    assert [json.loads(f["data"])["data"]["state"] for f in frames] == ["queued", "preparing", "failed"]
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "2"}
    with client.stream("GET", f"/v1/tasks/{task['id']}/events", headers=headers) as stream:
        resumed = _frames(stream.iter_text())
    assert [f["id"] for f in resumed] == ["3"] and resumed[0]["event"] == "state"
    assert [e["seq"] for e in client.get(f"/v1/tasks/{task['id']}/events", params={"after": 1}).json()["events"]] == [
        2, 3]  # fmt: skip


def _frames(chunks: Iterator[str]) -> list[dict[str, str]]:
    frames, current = [], {}
    for line in "".join(chunks).splitlines():
        if not line.strip():
            if current:
                frames.append(current)
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        frames.append(current)
    return frames


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"instruction": "x"}, "repo", "Field required"),
        ({"repo": REPO}, "instruction", "Field required"),
        ({"repo": REPO, "instruction": "   "}, "instruction", "must not be empty"),
        ({"repo": REPO, "instruction": "x" * (32 * 1024 + 1)}, "instruction", "at most 32768"),
        ({"repo": REPO, "instruction": "x", "max_steps": 0}, "max_steps", "greater than"),
        ({"repo": REPO, "instruction": "x", "colour": "red"}, "colour", "Extra inputs"),
        ({"repo": REPO, "instruction": "x", "setup": "../x.sh"}, "setup", "relative path inside"),
    ],
)
def test_invalid_body_is_422_with_the_field_named(
    client: TestClient, body: dict[str, object], field: str, message: str
) -> None:
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(d["field"] == field and message in d["message"] for d in error["details"]), error


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        ("ftp://example.com/a.git", "unsupported scheme 'ftp': use https://, ssh:// or git@host:path"),
        ("file:///etc", "file:// URLs are not allowed"),
        ("ext::sh", "git transport helpers"),
        ("--upload-pack=touch /tmp/x", "must not start with '-'"),
        ("/srv/repo", "local repository paths are not allowed on this server"),
    ],
)
def test_bad_repository_is_422_with_a_clear_message(
    client: TestClient, repo: str, message: str, redis_url: str, queue_name: str
) -> None:
    response = client.post("/v1/tasks", json={"repo": repo, "instruction": "x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_repo" and message in error["message"]
    assert client.get("/v1/tasks").json()["tasks"] == []
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 0


def test_bad_ref_is_422(client: TestClient) -> None:
    response = client.post("/v1/tasks", json={"repo": REPO, "ref": "--x", "instruction": "x"})
    assert response.status_code == 422 and response.json()["error"]["details"][0]["field"] == "ref"


@pytest.mark.parametrize(
    "path", ["/v1/tasks/nope", "/v1/tasks/nope/events", "/v1/tasks/nope/patch", "/v1/tasks/nope/trajectory"]
)
def test_unknown_task_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "task_not_found", "message": "no task 'nope'"}
    assert client.post("/v1/tasks/nope/cancel").status_code == 404


def test_patch_of_unfinished_task_is_409_and_cancel_of_queued_task_ends_it(client: TestClient) -> None:
    task = create(client)
    assert client.get(f"/v1/tasks/{task['id']}/patch").json()["error"]["code"] == "task_not_finished"
    assert client.get(f"/v1/tasks/{task['id']}/trajectory").json()["error"]["code"] == "trajectory_not_found"
    cancelled = client.post(f"/v1/tasks/{task['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    assert client.get(f"/v1/tasks/{task['id']}/patch").json()["error"]["code"] == "patch_not_found"


def test_unreachable_broker_fails_the_task_with_a_reason(settings: Settings, tokens: dict[str, str]) -> None:
    queue = TaskQueue("redis://127.0.0.1:1/0", queue="unused")
    with TestClient(create_app(settings, queue=queue)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {tokens['alice']}"
        response = test_client.post("/v1/tasks", json={"repo": REPO, "instruction": "x"})
        assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
        task = test_client.get("/v1/tasks").json()["tasks"][0]
        assert task["state"] == "failed" and "broker unreachable" in task["failure_reason"]
        ready = test_client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")


def test_an_unknown_query_parameter_is_refused_not_ignored(client: TestClient) -> None:
    response = client.get("/v1/tasks", params={"stat": "failed", "limit": 5})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "unknown query parameter(s): stat"
    assert client.get("/v1/tasks", params={"state": "failed", "limit": 5}).status_code == 200


def test_an_unexpected_failure_answers_500_in_the_one_error_shape(settings: Settings, tokens: dict[str, str]) -> None:
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        with app.state.sessions.begin() as session:  # the schema gone under the running API
            session.execute(text("DROP TABLE task_events"))
        client.headers["Authorization"] = f"Bearer {tokens['alice']}"
        response = client.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error; the server log has the details"}
    }


def test_an_empty_patch_says_no_changes_were_needed(client: TestClient, settings: Settings) -> None:
    empty, changed = create(client)["id"], create(client)["id"]
    for task_id, diff in ((empty, ""), (changed, "diff --git a/x b/x\n")):
        with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
            store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running)
            store.patches.store_patch(session, task_id, base_sha="a" * 40, diff=diff, title="t", body="b",
                              files_changed=1 if diff else 0)  # fmt: skip
            store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=TaskState.succeeded)
    assert client.get(f"/v1/tasks/{empty}/patch", params={"format": "json"}).json()["no_changes"] is True
    assert client.get(f"/v1/tasks/{changed}/patch", params={"format": "json"}).json()["no_changes"] is False
    assert client.get(f"/v1/tasks/{empty}/patch").text == ""


def test_the_schema_has_response_examples(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("TaskCreate", "TaskPublic", "EventPublic", "ErrorResponse"):
        assert schemas[name].get("examples"), name
    patch = document["paths"]["/v1/tasks/{task_id}/patch"]["get"]["responses"]["200"]["content"]["application/json"]
    assert patch["schema"]["examples"] and "no_changes" in patch["schema"]["properties"]
