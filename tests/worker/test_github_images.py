"""Images in a GitHub issue (issue 17 part 3): the webhook notes the ones on GitHub's own hosts (the configured
server here: the fake GitHub), the worker fetches them with the installation token when the task starts, and
the agent is handed them with an ``images`` event; an image that cannot be fetched is reported, and the task
keeps its other images and goes on."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.events
import store.images
from api.app import create_app
from overnight.events import ImagesEvent, TaskEvent
from overnight.github.client import client_from_settings
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from tests.github_fake import INSTALLATION, KEYS, SECRET, FakeGitHub, FakeGitHubServer, deliver, labeled
from tests.images import png
from worker.attempt import Attempt
from worker.github import GitHubHooks
from worker.images import agent_images

SHOT = png(8, 6)


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    github = FakeGitHub(public_key=KEYS[1], installations={INSTALLATION}, attachments={"shot-1": SHOT})
    with FakeGitHubServer(github) as server:
        yield server


def _settings(tmp_path: Path, redis_url: str, fake: FakeGitHubServer, networks: list[str]) -> Settings:
    settings = Settings.model_validate({
        "data_dir": tmp_path / "data", "broker_url": redis_url, "queue": f"test-ghi-{secrets.token_hex(4)}",
        "allow_local_repos": True, "images": {"fetch_allowed_networks": networks},
        "github": {"webhook_secret": SECRET, "api_url": fake.url, "git_url": str(tmp_path / "git"), "app_id": "4242",
                   "private_key": KEYS[0]},
    })  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    return settings


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, fake: FakeGitHubServer) -> Iterator[Settings]:
    settings = _settings(tmp_path, redis_url, fake, ["127.0.0.1/32"])
    yield settings
    redis.Redis.from_url(redis_url).delete(settings.queue)


def _issue_task(settings: Settings, fake: FakeGitHubServer) -> str:
    payload = labeled()
    payload["issue"]["body"] = (
        f"The button is the wrong colour:\n\n![screenshot]({fake.url}/user-attachments/assets/shot-1)\n\n"
        f'<img width="300" alt="gone" src="{fake.url}/user-attachments/assets/missing">\n'
        "![elsewhere](https://images.example.com/a.png) ![metadata](http://169.254.169.254/latest)"
    )
    with TestClient(create_app(settings)) as api:
        response = deliver(api, "issues", payload)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def _start(settings: Settings, task_id: str) -> tuple[list[bytes], list[TaskEvent]]:
    """What the worker does as the task starts: acknowledge (and fetch), then hand the agent its images."""
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    client = client_from_settings(settings.github)
    assert client is not None
    GitHubHooks(client, sessions, allow_local=True, images=settings.images).started(task_id)
    events: list[TaskEvent] = []
    images = agent_images(Attempt(sessions, task_id, 1, retry_seconds=5), task_id, events.append)
    return [image.data for image in images], events


def test_an_issue_image_is_fetched_with_the_installation_token_and_given_to_the_agent(
    settings: Settings, fake: FakeGitHubServer
) -> None:
    task_id = _issue_task(settings, fake)
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        noted = [(row.source, row.url) for row in store.images.list_images(session, task_id)]
    # Only GitHub's own hosts are noted: the other host and the metadata address are left out.
    assert noted == [("github", f"{fake.url}/user-attachments/assets/shot-1"),
                     ("github", f"{fake.url}/user-attachments/assets/missing")]  # fmt: skip
    given, events = _start(settings, task_id)
    assert given == [SHOT]
    [fetch] = [call for call in fake.fake.calls if call.path == "/user-attachments/assets/shot-1"]
    token = fetch.auth.removeprefix("token ")
    assert token in fake.fake.tokens and fake.fake.tokens[token][0] == INSTALLATION
    [event] = events
    assert isinstance(event, ImagesEvent)
    assert [(note.media_type, note.size, note.source) for note in event.images] == [("image/png", len(SHOT), "github")]
    [failure] = event.failed
    assert failure.url.endswith("/missing") and "HTTP 404" in failure.reason
    # Said on the issue too, in the progress comment (edited in place).
    [comment] = fake.fake.comments.values()
    assert "without 1 image(s) of the issue that could not be fetched" in comment["body"] and comment["edits"] == 1


def test_an_issue_image_on_a_refused_address_is_reported_and_the_task_goes_on(
    tmp_path: Path, redis_url: str, fake: FakeGitHubServer
) -> None:
    settings = _settings(tmp_path, redis_url, fake, [])  # loopback not allowed: the fake's address is refused
    try:
        task_id = _issue_task(settings, fake)
        given, events = _start(settings, task_id)
        with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
            stored = store.events.list_events(session, task_id)
    finally:
        redis.Redis.from_url(redis_url).delete(settings.queue)
    assert given == []
    [event] = events
    assert isinstance(event, ImagesEvent) and len(event.failed) == 2
    assert all("not a public address" in failure.reason for failure in event.failed)
    assert not fake.fake.calls_to("GET", "/user-attachments/")
    assert [row.type for row in stored if row.type == "state"]  # the task is still there, queued
