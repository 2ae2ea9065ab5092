"""Messages to a running task through the API, on a real database: sent and listed with their delivery state,
refused clearly once the task ended, dropped (and listed so) when it ends with some pending, and neither sent
nor read by another user."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

import store.messages
import store.tasks
import store.users
from api.app import create_app
from api.routes.messages import MAX_PENDING_MESSAGES
from api.schemas import MAX_MESSAGE_BYTES
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=f"test-steer-{secrets.token_hex(4)}")
    migrate(make_engine(settings.resolved_database_url))
    return settings


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        return {
            name: store.users.create_token(session, name, admin=name == "root") for name in ("alice", "bob", "root")
        }


@pytest.fixture
def client(settings: Settings, redis_url: str, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['alice']}"}) as test_client:
        yield test_client
    redis.Redis.from_url(redis_url).delete(settings.queue)


def _task(client: TestClient) -> str:
    response = client.post("/v1/tasks", json={"repo": "https://github.com/acme/widgets.git", "instruction": "Fix it"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _run(settings: Settings, task_id: str, to_state: TaskState | None = None, reason: str | None = None) -> None:
    """Claim the task as a worker would; with ``to_state``, end it too."""
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running)
        if to_state is not None:
            store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=to_state, reason=reason)


def _say(client: TestClient, task_id: str, text: str, mode: str = "steer", **headers: str) -> Any:
    return client.post(f"/v1/tasks/{task_id}/messages", json={"mode": mode, "text": text}, headers=headers)


def test_messages_to_a_running_task_are_stored_pending_and_listed_oldest_first(
    client: TestClient, settings: Settings
) -> None:
    task_id = _task(client)
    _run(settings, task_id)
    steer = _say(client, task_id, "Don't touch the migrations")
    queued = _say(client, task_id, "Then also update the changelog", mode="queue")
    assert steer.status_code == queued.status_code == 201, steer.text
    assert steer.json() | {"created_at": None} == {
        "id": steer.json()["id"], "task_id": task_id, "mode": "steer", "author": "alice",
        "text": "Don't touch the migrations", "state": "pending", "step": None, "reason": None, "created_at": None,
        "settled_at": None,
    }  # fmt: skip
    listed = client.get(f"/v1/tasks/{task_id}/messages").json()["messages"]
    assert [(m["mode"], m["state"], m["text"]) for m in listed] == [
        ("steer", "pending", "Don't touch the migrations"),
        ("queue", "pending", "Then also update the changelog"),
    ]
    assert _say(client, _task(client), "before it even started").status_code == 201  # a queued task takes them too


def test_a_message_to_an_ended_task_is_refused_with_409_and_not_stored(client: TestClient, settings: Settings) -> None:
    task_id = _task(client)
    _run(settings, task_id, TaskState.succeeded)
    response = _say(client, task_id, "one more thing")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "task_ended"
    assert error["message"] == (
        f"task {task_id} has ended (succeeded); messages reach only a queued, preparing or running task "
        "(a follow-up starts from its patch)"
    )
    assert client.get(f"/v1/tasks/{task_id}/messages").json() == {"messages": []}


def test_pending_messages_are_dropped_with_the_reason_when_the_task_ends(
    client: TestClient, settings: Settings
) -> None:
    task_id = _task(client)
    _run(settings, task_id)
    first = _say(client, task_id, "use the helper").json()
    second = _say(client, task_id, "and add a test", mode="queue").json()
    _run_end = "step budget exhausted (2 steps) before the model called finish"
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=TaskState.failed,
                               reason=_run_end)  # fmt: skip
    listed = client.get(f"/v1/tasks/{task_id}/messages").json()["messages"]
    reason = f"the task ended before it was delivered: failed ({_run_end})"
    assert [(m["id"], m["state"], m["reason"]) for m in listed] == [
        (first["id"], "dropped", reason),
        (second["id"], "dropped", reason),
    ]
    assert all(m["settled_at"] is not None and m["step"] is None for m in listed)
    events = client.get(f"/v1/tasks/{task_id}/events").json()["events"]
    dropped = [e["data"] for e in events if e["type"] == "message_dropped"]
    assert dropped == [
        {"message_id": first["id"], "mode": "steer", "reason": reason},
        {"message_id": second["id"], "mode": "queue", "reason": reason},
    ]


def test_cancelling_a_queued_task_drops_its_pending_messages(client: TestClient) -> None:
    task_id = _task(client)
    _say(client, task_id, "hold on")
    assert client.post(f"/v1/tasks/{task_id}/cancel").json()["state"] == "cancelled"
    [message] = client.get(f"/v1/tasks/{task_id}/messages").json()["messages"]
    assert message["state"] == "dropped"
    assert message["reason"] == "the task ended before it was delivered: cancelled (cancelled by user)"


def test_another_user_can_neither_send_nor_read_messages_of_a_task_not_theirs(
    client: TestClient, settings: Settings, tokens: dict[str, str]
) -> None:
    task_id = _task(client)
    _run(settings, task_id)
    _say(client, task_id, "alice's steer")
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    refused = _say(client, task_id, "bob's steer", **bob)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "task_not_found"
    assert client.get(f"/v1/tasks/{task_id}/messages", headers=bob).status_code == 404
    root = {"Authorization": f"Bearer {tokens['root']}"}
    assert [m["text"] for m in client.get(f"/v1/tasks/{task_id}/messages", headers=root).json()["messages"]] == [
        "alice's steer"
    ]
    assert _say(client, task_id, "an admin may steer", **root).json()["author"] == "root"
    no_token = client.get(f"/v1/tasks/{task_id}/messages", headers={"Authorization": ""})
    assert no_token.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "steer", "text": "   "}, "text"),
        ({"mode": "shout", "text": "hi"}, "mode"),
        ({"mode": "steer", "text": "é" * (MAX_MESSAGE_BYTES // 2 + 1)}, "text"),
        ({"text": "hi", "priority": 1}, "priority"),
        ({"mode": "queue"}, "text"),
    ],
)
def test_a_malformed_message_is_refused_with_422_naming_the_field(
    client: TestClient, settings: Settings, body: dict[str, Any], field: str
) -> None:
    task_id = _task(client)
    response = client.post(f"/v1/tasks/{task_id}/messages", json=body)
    assert response.status_code == 422, response.text
    assert any(field in detail["field"] for detail in response.json()["error"]["details"]), response.text
    assert client.get(f"/v1/tasks/{task_id}/messages").json() == {"messages": []}


def test_a_task_holds_at_most_so_many_undelivered_messages(client: TestClient, settings: Settings) -> None:
    task_id = _task(client)
    _run(settings, task_id)
    for number in range(MAX_PENDING_MESSAGES):
        assert _say(client, task_id, f"message {number}").status_code == 201
    refused = _say(client, task_id, "one too many")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_messages"
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        store.messages.deliver_pending(session, task_id, mode="steer", step=3)
    assert _say(client, task_id, "room again").status_code == 201
