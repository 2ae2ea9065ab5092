"""The pull request lists the hosts the sandbox's network policy refused: a labelled issue through the API, the
task's patch committed on a real mirror, its network_blocked events written through the store, and
``GitHubHooks.finished`` pushing to a real bare remote and opening the pull request on the fake GitHub."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.events
import store.github
import store.patches
import store.tasks
from api.app import create_app
from overnight.events import NetworkBlockedEvent
from overnight.github.client import client_from_settings
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState
from tests.conftest import git
from tests.github_fake import INSTALLATION, KEYS, SECRET, FakeGitHub, FakeGitHubServer, deliver, labeled
from worker.github import GitHubHooks
from worker.repo import commit_patch

REPO = "Codertocat/Hello-World"
DIFF = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n"
AT = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
TIMES = "\N{MULTIPLICATION SIGN}"


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(FakeGitHub(public_key=KEYS[1], installations={INSTALLATION})) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, fake: FakeGitHubServer) -> Iterator[Settings]:
    settings = Settings.model_validate({
        "data_dir": tmp_path / "data", "broker_url": redis_url, "queue": f"test-ghb-{secrets.token_hex(4)}",
        "allow_local_repos": True,
        "github": {"webhook_secret": SECRET, "api_url": fake.url, "git_url": str(tmp_path / "git"), "app_id": "4242",
                   "private_key": KEYS[0]},
    })  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(settings.queue)


def _mirror(tmp_path: Path) -> tuple[Path, str]:
    """A bare remote where the fake GitHub's git address points, with one commit on master, and a mirror of it."""
    work, remote, mirror = tmp_path / "work", tmp_path / "git" / f"{REPO}.git", tmp_path / "mirror.git"
    work.mkdir()
    git(work, "init", "-q", "-b", "master")
    (work / "a.txt").write_text("one\n")
    git(work, "add", "a.txt")
    git(work, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first")
    remote.parent.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True)
    subprocess.run(["git", "clone", "-q", "--mirror", str(remote), str(mirror)], check=True)
    return mirror, git(work, "rev-parse", "HEAD").strip()


def _publish(settings: Settings, tmp_path: Path, blocked: list[NetworkBlockedEvent], *, pull: bool = False) -> str:
    """A labelled issue's task, succeeded with a one-line patch and ``blocked`` among its events, published
    (``pull``: as a follow-up of a task whose pull request is open already)."""
    mirror, base = _mirror(tmp_path)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with TestClient(create_app(settings)) as api:
        response = deliver(api, "issues", labeled())
        assert response.status_code == 202, response.text
        task_id = str(response.json()["task_id"])
    with sessions.begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running)
        for event in blocked:
            store.events.append_event(session, task_id, event)
        store.patches.store_patch(session, task_id, base_sha=base, diff=DIFF, title="Say two",
                                  body="a.txt says two now.", files_changed=1)  # fmt: skip
        store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=TaskState.succeeded)
        if pull:
            link = store.github.get_link(session, task_id)
            assert link is not None
            link.pr_number, link.pr_url = 7, "https://github.com/Codertocat/Hello-World/pull/7"
    commit = commit_patch(mirror, base, DIFF, "Say two\n", into=tmp_path / "task.git", author="Overnight",
                          email="overnight@example.com")  # fmt: skip
    client = client_from_settings(settings.github)
    assert client is not None
    GitHubHooks(client, sessions, allow_local=True).finished(task_id, TaskState.succeeded, None, commit)
    return task_id


def test_the_pull_request_lists_the_blocked_hosts_most_refused_first(
    settings: Settings, fake: FakeGitHubServer, tmp_path: Path
) -> None:
    task_id = _publish(settings, tmp_path, [
        NetworkBlockedEvent(host="registry.example.com", port=443, method="CONNECT", at=AT, phase="agent", step=2,
                            reason="not in the allowlist", count=3),
        NetworkBlockedEvent(host="files.example.org", port=80, method="GET", at=AT, phase="setup",
                            reason="not in the allowlist"),
    ])  # fmt: skip
    [pull] = fake.fake.pulls
    body = pull["body"]
    assert body.startswith("a.txt says two now.\n\nFixes #1\n\n")
    assert f"**Blocked hosts:** `registry.example.com` {TIMES}3, `files.example.org` {TIMES}1\n" in body
    assert "refused 4 requests" in body and body.rstrip().endswith(f"(`overnight show {task_id}`)")


def test_a_pull_request_without_refusals_says_nothing_of_them(
    settings: Settings, fake: FakeGitHubServer, tmp_path: Path
) -> None:
    _publish(settings, tmp_path, [])
    [pull] = fake.fake.pulls
    assert pull["body"].startswith("a.txt says two now.\n\nFixes #1\n\n") and "Blocked" not in pull["body"]


def test_a_failed_task_says_on_the_issue_which_hosts_were_blocked(
    settings: Settings, fake: FakeGitHubServer, tmp_path: Path
) -> None:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with TestClient(create_app(settings)) as api:
        task_id = str(deliver(api, "issues", labeled()).json()["task_id"])
    with sessions.begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running)
        store.events.append_event(session, task_id, NetworkBlockedEvent(
            host="registry.npmjs.org", port=443, method="CONNECT", at=AT, phase="setup",
            reason="not in the allowlist", count=2,
        ))  # fmt: skip
        store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=TaskState.failed,
                               reason="set-up failed (exit 1)")  # fmt: skip
    client = client_from_settings(settings.github)
    assert client is not None
    GitHubHooks(client, sessions, allow_local=True).finished(task_id, TaskState.failed, "set-up failed (exit 1)", None)
    [report] = fake.fake.comments.values()
    assert "could not finish this: failed, set-up failed (exit 1)." in report["body"]
    assert f"**Blocked hosts:** `registry.npmjs.org` {TIMES}2\n" in report["body"] and not fake.fake.pulls


def test_a_commit_pushed_to_an_open_pull_request_says_which_hosts_were_blocked(
    settings: Settings, fake: FakeGitHubServer, tmp_path: Path
) -> None:
    _publish(settings, tmp_path, [
        NetworkBlockedEvent(host="registry.example.com", port=443, method="CONNECT", at=AT, phase="agent", step=1,
                            reason="not in the allowlist"),
    ], pull=True)  # fmt: skip
    assert not fake.fake.pulls  # the pull request's body is the first task's
    [report] = fake.fake.comments.values()
    assert "pushed a new commit to" in report["body"]
    assert f"**Blocked hosts:** `registry.example.com` {TIMES}1\n" in report["body"]
