"""Best-of-N from GitHub: ``/overnight attempts=N ...`` on an issue makes a task of N attempts (the GitHub link
on the task itself, the attempts queued for the workers); N outside 1..8 starts nothing and says so; the option
is not part of the instruction, nor of a steer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.bestof
import store.github
import store.messages
import store.tasks
from api.app import create_app
from overnight.github.webhooks import MAX_ATTEMPTS, command_options
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker
from store.models import Task
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
    yield from app_settings(tmp_path, redis_url, fake.url, "test-gha")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def all_tasks(settings: Settings) -> list[Task]:
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        return list(session.query(Task).order_by(Task.attempt_index).all())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("attempts=3 also add a test", (3, None, "also add a test")),
        ("ATTEMPTS=8", (8, None, "")),
        ("attempts=1 just once", (1, None, "just once")),
        ("also add a test", (1, None, "also add a test")),
        ("do it with attempts=3", (1, None, "do it with attempts=3")),  # an option only as the first word
        ("", (1, None, "")),
        ("attempts=9 more", (1, "attempts must be a number from 1 to 8, not '9'", "more")),
        ("attempts=0", (1, "attempts must be a number from 1 to 8, not '0'", "")),
        ("attempts=three", (1, "attempts must be a number from 1 to 8, not 'three'", "")),
        ("attempts=", (1, "attempts must be a number from 1 to 8, not ''", "")),
    ],
)
def test_the_command_line_s_attempts_option(line: str, expected: tuple[int, str | None, str]) -> None:
    assert command_options(line) == expected


def test_the_bound_is_the_store_s() -> None:
    assert MAX_ATTEMPTS == store.bestof.MAX_ATTEMPTS


def test_a_command_with_attempts_queues_a_task_of_that_many_attempts(
    client: TestClient, settings: Settings, redis_url: str
) -> None:
    response = deliver(client, "issue_comment", command("/overnight attempts=3 keep the old name as an alias"))
    assert response.status_code == 202, response.text
    group_id = response.json()["task_id"]
    group, *attempts = all_tasks(settings)
    assert group.id == group_id and group.attempts == 3 and group.attempt_of is None
    assert [(a.attempt_of, a.attempt_index, a.state) for a in attempts] == [(group_id, k, "queued") for k in (1, 2, 3)]
    assert group.instruction.endswith("Additional instructions from @Codertocat: keep the old name as an alias")
    assert "attempts=3" not in group.instruction and all(a.instruction == group.instruction for a in attempts)
    # The pull request comes from the task itself: only it is linked to the issue; the workers get the attempts.
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        assert store.github.get_link(session, group_id) is not None
        assert all(store.github.get_link(session, a.id) is None for a in attempts)
    assert all(a.enqueued_at is not None for a in attempts)
    assert redis.Redis.from_url(redis_url).llen(settings.queue) == 3


def test_attempts_out_of_range_start_nothing_and_the_commenter_is_told(
    client: TestClient, settings: Settings, fake: FakeGitHubServer, redis_url: str
) -> None:
    response = deliver(client, "issue_comment", command("/overnight attempts=12 try hard"))
    assert response.status_code == 204
    assert all_tasks(settings) == []
    [reply] = fake.fake.comments.values()
    assert reply["body"].endswith("@Codertocat: attempts must be a number from 1 to 8, not '12'; nothing was started.")
    assert redis.Redis.from_url(redis_url).llen(settings.queue) == 0


def test_one_attempt_is_an_ordinary_task(client: TestClient, settings: Settings) -> None:
    assert deliver(client, "issue_comment", command("/overnight attempts=1")).status_code == 202
    [task] = all_tasks(settings)
    assert task.attempts == 1 and "Additional instructions" not in task.instruction


def test_the_option_is_not_steered_into_a_running_task(client: TestClient, settings: Settings) -> None:
    assert deliver(client, "issue_comment", command("/overnight")).status_code == 202
    [task] = all_tasks(settings)
    # Only an option: nothing to tell the running task, and no second task.
    assert deliver(client, "issue_comment", command("/overnight attempts=4")).status_code == 204
    steered = deliver(client, "issue_comment", command("/overnight attempts=4 use the helper"))
    assert steered.status_code == 202 and steered.json()["status"] == "steered"
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        [message] = store.messages.list_messages(session, task.id)
    assert message.text.endswith("use the helper") and "attempts=4" not in message.text
    assert len(all_tasks(settings)) == 1


def test_a_comment_on_an_issue_whose_task_runs_attempts_steers_nothing_and_says_so(
    client: TestClient, settings: Settings, fake: FakeGitHubServer
) -> None:
    group_id = deliver(client, "issue_comment", command("/overnight attempts=2")).json()["task_id"]
    response = deliver(client, "issue_comment", command("/overnight use the helper"))
    assert response.status_code == 204
    [reply] = fake.fake.comments.values()
    assert f"task `{group_id}` runs 2 attempts, so a comment cannot steer it" in reply["body"]
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        assert store.messages.list_messages(session, group_id) == []
    assert len(all_tasks(settings)) == 3


def test_a_command_with_attempts_on_overnight_s_pull_request_is_a_follow_up_of_attempts_on_its_branch(
    client: TestClient, settings: Settings
) -> None:
    first = deliver(client, "issues", labeled()).json()["task_id"]
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        link = store.github.get_link(session, first)
        assert link is not None
        link.pr_number, link.pr_url, branch = 2, "https://github.com/x/pull/2", link.branch
    on_pr = command("/overnight attempts=2 also update the changelog")
    on_pr["issue"]["number"] = 2
    on_pr["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2"}
    response = deliver(client, "issue_comment", on_pr)
    assert response.status_code == 202, response.text
    group_id = response.json()["task_id"]
    with sessions() as session:
        group = store.tasks.get_task(session, group_id)
        assert group is not None and group.attempts == 2 and group.ref == branch and group.parent_id == first
        assert store.github.get_link(session, group_id).pr_number == 2  # type: ignore[union-attr]
        attempts = store.bestof.attempts_of(session, group_id)
        assert [(a.attempt_index, a.ref) for a in attempts] == [(1, branch), (2, branch)]
        assert "also update the changelog" in group.instruction  # the comment is quoted as written
