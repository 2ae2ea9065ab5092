"""A task's typed events through the API: the OpenAPI schema carries their union, and a row that is no known
event comes through the JSON list and the SSE stream marked with the reason, between the others, unharmed."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

import store.events
import store.tasks
import store.users
from api.app import create_app
from overnight.events import EVENT_MODELS, RetryEvent, ToolCallEvent
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskEvent as TaskEventRow
from store.models import TaskState


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=f"test-events-{secrets.token_hex(4)}")
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(settings.queue)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        token = store.users.create_token(session, "alice")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as test_client:
        yield test_client


def _task_with_unreadable_rows(client: TestClient, settings: Settings) -> str:
    """A task whose events are: queued, a tool call, a row of an unknown type, a tool call row missing its id,
    a retry, failed."""
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        user = store.users.user_for_token(session, client.headers["Authorization"].removeprefix("Bearer "))
        assert user is not None
        task_id = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="x",
                                          user_id=user.id).id  # fmt: skip
        store.events.append_event(session, task_id, ToolCallEvent(step=1, id="c1", name="bash", arguments="{}"))
        session.add(TaskEventRow(task_id=task_id, seq=3, type="note", data={"n": 1}))
        session.add(TaskEventRow(task_id=task_id, seq=4, type="tool_call", data={"step": 1, "name": "bash"}))
        session.flush()
        store.events.append_event(session, task_id, RetryEvent(retry_of="0" * 16))
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.failed,
                               reason="x")  # fmt: skip
    return task_id


def _check(events: list[dict[str, Any]]) -> None:
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "state"), (2, "tool_call"), (3, "note"), (4, "tool_call"), (5, "retry"), (6, "state")]  # fmt: skip
    assert events[1]["data"] == {"step": 1, "id": "c1", "name": "bash", "arguments": "{}"} and "error" not in events[1]
    assert events[2]["data"] == {"n": 1} and events[2]["error"] == "unknown event type 'note'"
    assert events[3]["data"] == {"step": 1, "name": "bash"}
    assert events[3]["error"] == "tool_call event: id: Field required; arguments: Field required"
    assert events[4]["data"] == {"retry_of": "0" * 16}
    assert events[5]["data"] == {"state": "failed", "reason": "x"}


def test_unreadable_rows_are_listed_as_stored_with_the_reason(client: TestClient, settings: Settings) -> None:
    task_id = _task_with_unreadable_rows(client, settings)
    response = client.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    _check(response.json()["events"])


def test_unreadable_rows_do_not_break_the_event_stream(client: TestClient, settings: Settings) -> None:
    task_id = _task_with_unreadable_rows(client, settings)
    with client.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Accept": "text/event-stream"}) as stream:
        frames = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line.startswith("data:")]
    _check(frames)


def test_the_openapi_schema_declares_every_event_type_as_a_discriminated_record(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    typed, unreadable = schemas["EventPublic"]["anyOf"]
    assert typed["discriminator"]["propertyName"] == "type"
    mapping = typed["discriminator"]["mapping"]
    assert set(mapping) == set(EVENT_MODELS)
    for type_, model in EVENT_MODELS.items():
        record = schemas[mapping[type_].rsplit("/", 1)[-1]]
        assert record["properties"]["type"]["const"] == type_
        data = schemas[record["properties"]["data"]["$ref"].rsplit("/", 1)[-1]]
        assert set(data["properties"]) == set(model.model_fields) - {"type"}  # the wire's data carries no type
        assert set(data.get("required", [])) == {n for n, f in model.model_fields.items() if f.is_required()}
    assert unreadable["$ref"].endswith("/UnreadableEventRecord")
    assert schemas["EventList"]["properties"]["events"]["items"]["$ref"].endswith("/EventPublic")
