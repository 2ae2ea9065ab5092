"""A command comment on an issue whose task has not ended steers that task instead of starting a second one:
the webhook against a real database, a real Redis queue and the fake GitHub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.messages
import store.tasks
from api.app import create_app
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker
from store.models import Task, TaskState
from tests.github_fake import (
    INSTALLATION,
    KEYS,
    FakeGitHub,
    FakeGitHubServer,
    app_settings,
    command,
    deliver,
    labeled,
)


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(FakeGitHub(public_key=KEYS[1], installations={INSTALLATION})) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, fake: FakeGitHubServer) -> Iterator[Settings]:
    yield from app_settings(tmp_path, redis_url, fake.url, "test-gh-steer")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _tasks(settings: Settings) -> list[Task]:
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        return list(session.query(Task).order_by(Task.created_at).all())


def _messages(settings: Settings, task_id: str) -> list[tuple[str, str, str, str]]:
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        return [(m.mode, m.state, m.author, m.text) for m in store.messages.list_messages(session, task_id)]


def _end(settings: Settings, task_id: str) -> None:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.cancelled)


def test_a_command_on_an_issue_whose_task_runs_steers_it_and_starts_nothing_new(
    client: TestClient, settings: Settings, fake: FakeGitHubServer, redis_url: str
) -> None:
    task_id = deliver(client, "issues", labeled()).json()["task_id"]
    comment = command("/overnight don't touch the migrations,\nuse the helper in utils.py instead")
    response = deliver(client, "issue_comment", comment)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "steered" and response.json()["task_id"] == task_id
    assert [task.id for task in _tasks(settings)] == [task_id]
    assert redis.Redis.from_url(redis_url).llen(settings.queue) == 1  # the labelled task only
    assert _messages(settings, task_id) == [
        ("steer", "pending", "github:Codertocat", "@Codertocat commented on issue #1:\n\n"
         "don't touch the migrations,\nuse the helper in utils.py instead"),
    ]  # fmt: skip
    assert ("issues/comments/" + str(comment["comment"]["id"]), "eyes") in fake.fake.reactions


def test_once_the_task_ended_a_command_on_its_issue_starts_a_new_task(client: TestClient, settings: Settings) -> None:
    first = deliver(client, "issues", labeled()).json()["task_id"]
    _end(settings, first)
    response = deliver(client, "issue_comment", command("/overnight try again, more carefully"))
    assert response.status_code == 202 and response.json()["status"] == "queued"
    second = response.json()["task_id"]
    assert [task.id for task in _tasks(settings)] == [first, second]
    assert _messages(settings, first) == []


def test_a_bare_command_on_a_running_task_s_issue_is_ignored_and_starts_nothing(
    client: TestClient, settings: Settings
) -> None:
    task_id = deliver(client, "issues", labeled()).json()["task_id"]
    response = deliver(client, "issue_comment", command("/overnight"))
    assert response.status_code == 204
    assert [task.id for task in _tasks(settings)] == [task_id] and _messages(settings, task_id) == []


def test_someone_without_write_access_cannot_steer_a_running_task(
    client: TestClient, settings: Settings, fake: FakeGitHubServer
) -> None:
    task_id = deliver(client, "issues", labeled()).json()["task_id"]
    response = deliver(client, "issue_comment", command("/overnight delete the tests", association="NONE"))
    assert response.status_code == 204
    assert _messages(settings, task_id) == [] and len(_tasks(settings)) == 1
