"""POST /v1/github/webhook against a real database, a real Redis queue and the fake GitHub: the signature
first, redeliveries, triggers, who may trigger, known installations, follow-ups on Overnight's own PRs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.github
import store.tasks
from api.app import create_app
from overnight.github.webhooks import sign
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker
from store.models import GitHubDelivery, Task, User
from tests.github_fake import (
    INSTALLATION,
    KEYS,
    SECRET,
    FakeGitHub,
    FakeGitHubServer,
    app_settings,
    command,
    deliver,
    fixture,
    labeled,
)


def with_github(settings: Settings, **changes: object) -> Settings:
    """``settings`` with some GitHub settings changed (validated, as they would be from the environment)."""
    return Settings(**{**settings.model_dump(), "github": {**settings.github.model_dump(), **changes}})


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(FakeGitHub(public_key=KEYS[1], installations={INSTALLATION})) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, fake: FakeGitHubServer) -> Iterator[Settings]:
    yield from app_settings(tmp_path, redis_url, fake.url, "test-gh")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def tasks(settings: Settings) -> list[Task]:
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        return list(session.query(Task).all())


def test_a_labelled_issue_queues_one_task_and_a_redelivery_none(
    client: TestClient, settings: Settings, redis_url: str
) -> None:
    response = deliver(client, "issues", labeled(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    [task] = tasks(settings)
    assert task.id == task_id and task.state == "queued" and task.ref == "master"
    assert task.repo == f"{settings.github.git_url}/Codertocat/Hello-World.git"
    assert "Resolve issue #1 of the GitHub repository Codertocat/Hello-World" in task.instruction
    assert "Spelling error in the README file" in task.instruction
    assert redis.Redis.from_url(redis_url).llen(settings.queue) == 1
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        link = store.github.get_link(session, task_id)
        assert link is not None and link.installation_id == INSTALLATION and link.number == 1
        assert link.branch == f"overnight/{task_id}-spelling-error-in-the-readme-file" and link.base_branch == "master"
        user = session.get(User, store.tasks.get_task(session, task_id).user_id)  # type: ignore[union-attr]
        assert user is not None and user.name == "github:Codertocat" and not user.is_admin
    again = deliver(client, "issues", labeled(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(tasks(settings)) == 1 and redis.Redis.from_url(redis_url).llen(settings.queue) == 1


@pytest.mark.parametrize("secret", [None, "wrong secret", ""])
def test_missing_or_wrong_signature_is_401_and_creates_nothing(
    client: TestClient, settings: Settings, secret: str | None
) -> None:
    response = deliver(client, "issues", labeled(), secret=secret)
    assert response.status_code == 401 and response.json()["error"]["code"] == "bad_signature"
    assert tasks(settings) == []
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        assert session.query(GitHubDelivery).count() == 0


def test_without_a_configured_secret_every_delivery_is_refused_and_the_log_says_why(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(with_github(settings, webhook_secret=None))
    with TestClient(app) as client, caplog.at_level(logging.ERROR, logger="api.routes.github"):
        response = deliver(client, "issues", labeled())
    assert response.status_code == 401 and response.json()["error"]["code"] == "webhook_secret_unset"
    assert "OVERNIGHT_GITHUB_WEBHOOK_SECRET is not set" in caplog.text
    assert tasks(settings) == []


def test_ping_other_labels_other_events_and_plain_comments_start_nothing(
    client: TestClient, settings: Settings
) -> None:
    assert deliver(client, "ping", fixture("ping.with-app_id.json")).json()["status"] == "pong"
    assert deliver(client, "issues", labeled("bug")).status_code == 204
    assert deliver(client, "issues", fixture("issues.opened.json")).status_code == 204
    assert deliver(client, "check_suite", fixture("check_suite.rerequested.bot-sender.json")).status_code == 204
    assert deliver(client, "pull_request", fixture("pull_request.closed.json")).status_code == 204
    assert deliver(client, "issue_comment", command("Thanks, looks good")).status_code == 204
    assert deliver(client, "some_future_event", {"action": "created"}).status_code == 204
    assert tasks(settings) == []
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        outcomes = {row.event: row.outcome for row in session.query(GitHubDelivery).all()}
    assert outcomes["issues"].startswith("ignored: ") and outcomes["ping"] == "pong"


def test_a_command_from_an_owner_queues_a_task_with_its_extra_instructions(
    client: TestClient, settings: Settings
) -> None:
    response = deliver(client, "issue_comment", command("/overnight keep the old function as an alias"))
    assert response.status_code == 202, response.text
    [task] = tasks(settings)
    assert task.instruction.endswith("Additional instructions from @Codertocat: keep the old function as an alias")


def test_an_unauthorised_commenter_gets_a_polite_reply_and_no_task(
    client: TestClient, settings: Settings, fake: FakeGitHubServer
) -> None:
    response = deliver(client, "issue_comment", command("/overnight do it", association="NONE"))
    assert response.status_code == 204
    assert tasks(settings) == []
    [reply] = fake.fake.comments.values()
    assert reply["number"] == 1 and "Only people with write access" in reply["body"]
    assert "@Codertocat" in reply["body"]


def test_only_known_installations_may_trigger(client: TestClient, settings: Settings, fake: FakeGitHubServer) -> None:
    unknown = labeled()
    unknown["installation"]["id"] = 99
    assert deliver(client, "issues", unknown).status_code == 204
    missing = labeled()
    del missing["installation"]
    assert deliver(client, "issues", missing).status_code == 204
    assert tasks(settings) == []
    # The installation event is remembered (no lookup needed afterwards); a deletion forgets it.
    fake.fake.installations.add(1234)
    installed = fixture("installation.created.json")
    installed["installation"]["id"] = 1234
    assert deliver(client, "installation", installed).status_code == 200
    again = labeled()
    again["installation"]["id"] = 1234
    assert deliver(client, "issues", again).status_code == 202
    installed["action"] = "deleted"
    fake.fake.installations.discard(1234)
    assert deliver(client, "installation", installed).status_code == 200
    after = labeled()
    after["installation"]["id"] = 1234
    assert deliver(client, "issues", after).status_code == 204
    assert len(tasks(settings)) == 1
    # Looked up when unknown only: 99 (never installed) and 1234 after its deletion, not while it was recorded.
    assert [c.path for c in fake.fake.calls_to("GET", "/app/installations/")] == [
        "/app/installations/99", "/app/installations/1234"]  # fmt: skip


def test_personal_token_mode_limits_triggers_to_the_listed_repositories(settings: Settings, fake: FakeGitHubServer):
    fake.fake.personal_token = "ghp_" + "b" * 36
    personal = with_github(settings, app_id=None, private_key=None, token=fake.fake.personal_token,
                           repositories=["acme/other"])  # fmt: skip
    with TestClient(create_app(personal)) as client:
        plain = labeled()
        del plain["installation"]
        assert deliver(client, "issues", plain).status_code == 204
        personal.github.repositories.append("codertocat/hello-world")
        plain = labeled()  # labelled again: the first was refused, and its replay would start nothing
        del plain["installation"]
        assert deliver(client, "issues", plain).status_code == 202


def test_payloads_github_would_not_send_are_400(client: TestClient, settings: Settings) -> None:
    payload = labeled()
    del payload["issue"]
    response = deliver(client, "issues", payload)
    assert response.status_code == 400 and "issue is missing" in response.json()["error"]["message"]
    body = b"{not json"
    headers = {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "abc",
               "X-Hub-Signature-256": sign(SECRET.encode(), body)}  # fmt: skip
    assert client.post("/v1/github/webhook", content=body, headers=headers).status_code == 400
    no_delivery_id = {"X-GitHub-Event": "issues", "X-Hub-Signature-256": sign(SECRET.encode(), b"{}")}
    assert client.post("/v1/github/webhook", content=b"{}", headers=no_delivery_id).status_code == 400
    assert tasks(settings) == []


def test_comments_on_overnight_s_pull_request_become_follow_ups_on_its_branch(
    client: TestClient, settings: Settings
) -> None:
    first = deliver(client, "issues", labeled()).json()["task_id"]
    review = fixture("pull_request_review_comment.created.json")
    review["comment"]["body"] = "/overnight use a constant here"
    review["installation"]["id"] = INSTALLATION
    assert deliver(client, "pull_request_review_comment", review).status_code == 204  # not a PR Overnight opened
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        link = store.github.get_link(session, first)
        assert link is not None
        link.pr_number, link.pr_url = review["pull_request"]["number"], "https://github.com/x/pull/2"
        branch = link.branch
    review["comment"]["id"] += 1  # a new comment (the first one asked of a pull request Overnight had not opened)
    response = deliver(client, "pull_request_review_comment", review)
    assert response.status_code == 202, response.text
    follow_up = response.json()["task_id"]
    on_pr = command("/overnight also update the changelog")
    on_pr["issue"]["number"] = review["pull_request"]["number"]
    on_pr["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2"}
    second = deliver(client, "issue_comment", on_pr).json()["task_id"]
    with sessions() as session:
        for task_id, source, parent in ((follow_up, "review-comment", first), (second, "pr-comment", follow_up)):
            task = store.tasks.get_task(session, task_id)
            row = store.github.get_link(session, task_id)
            assert task is not None and row is not None
            assert task.ref == branch and task.parent_id == parent and task.kind == "task"
            assert row.branch == branch and row.pr_number == 2 and row.source == source
        assert "use a constant here" in store.tasks.get_task(session, follow_up).instruction  # type: ignore[union-attr]
        assert "also update the changelog" in store.tasks.get_task(session, second).instruction  # type: ignore[union-attr]


def test_a_trigger_switched_off_starts_nothing(settings: Settings) -> None:
    only_comments = with_github(settings, triggers=["issue-comment"])
    with TestClient(create_app(only_comments)) as client:
        assert deliver(client, "issues", labeled()).status_code == 204
        assert deliver(client, "issue_comment", command("/overnight go")).status_code == 202
    assert len(tasks(settings)) == 1
