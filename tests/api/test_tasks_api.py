"""The task endpoints against a real database and a real Redis queue."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.queue import TaskQueue
from overnight.settings import Settings


@pytest.fixture
def queue_name() -> str:
    return f"test-api-{secrets.token_hex(4)}"


@pytest.fixture
def client(tmp_path: Path, redis_url: str, queue_name: str) -> Iterator[TestClient]:
    from migrations.store import make_engine, migrate

    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=queue_name, allow_local_repos=False)
    migrate(make_engine(settings.resolved_database_url))
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    redis.Redis.from_url(redis_url).delete(queue_name)


def test_create_task_stores_it_queued_and_enqueues_its_id(client: TestClient, redis_url: str, queue_name: str) -> None:
    response = client.post(
        "/v1/tasks", json={"repo": "https://github.com/acme/widgets.git", "ref": "main", "instruction": "Fix it"}
    )
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["state"] == "queued" and task["ref"] == "main" and task["created_at"]
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 1
    assert client.get(f"/v1/tasks/{task['id']}").json()["id"] == task["id"]
    assert [t["id"] for t in client.get("/v1/tasks").json()["tasks"]] == [task["id"]]
    events = client.get(f"/v1/tasks/{task['id']}/events").json()["events"]
    assert events[0]["type"] == "state" and events[0]["data"] == {"state": "queued"}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"instruction": "x"}, "repo", "Field required"),
        ({"repo": "https://github.com/a/b"}, "instruction", "Field required"),
        ({"repo": "https://github.com/a/b", "instruction": "   "}, "instruction", "must not be empty"),
        ({"repo": "https://github.com/a/b", "instruction": "x" * (32 * 1024 + 1)}, "instruction", "at most 32768"),
        ({"repo": "https://github.com/a/b", "instruction": "x", "max_steps": 0}, "max_steps", "greater than"),
        ({"repo": "https://github.com/a/b", "instruction": "x", "colour": "red"}, "colour", "Extra inputs"),
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
    response = client.post("/v1/tasks", json={"repo": "https://github.com/a/b", "ref": "--x", "instruction": "x"})
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
    task = client.post("/v1/tasks", json={"repo": "https://github.com/a/b", "instruction": "x"}).json()
    assert client.get(f"/v1/tasks/{task['id']}/patch").json()["error"]["code"] == "task_not_finished"
    assert client.get(f"/v1/tasks/{task['id']}/trajectory").json()["error"]["code"] == "trajectory_not_found"
    cancelled = client.post(f"/v1/tasks/{task['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    assert client.get(f"/v1/tasks/{task['id']}/patch").json()["error"]["code"] == "patch_not_found"


def test_unreachable_broker_fails_the_task_with_a_reason(tmp_path: Path) -> None:
    from migrations.store import make_engine, migrate

    settings = Settings(data_dir=tmp_path, queue="unused")
    migrate(make_engine(settings.resolved_database_url))
    queue = TaskQueue("redis://127.0.0.1:1/0", queue="unused")
    with TestClient(create_app(settings, queue=queue)) as test_client:
        response = test_client.post("/v1/tasks", json={"repo": "https://github.com/a/b", "instruction": "x"})
        assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
        task = test_client.get("/v1/tasks").json()["tasks"][0]
        assert task["state"] == "failed" and "broker unreachable" in task["failure_reason"]
