"""GitHub end to end: a signed delivery to the API, the worker running the task in Docker against the
scripted model, then the branch pushed to a real git remote, a draft pull request and the progress comment
on the fake GitHub — and every way publishing can fail leaving a succeeded task with its patch stored."""

from __future__ import annotations

import logging
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import store.events
import store.github
import store.patches
import store.tasks
import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from api.app import create_app
from overnight.github.client import client_from_settings
from overnight.settings import GitHubSettings, Settings
from sandbox.docker import DockerBackend
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import git
from tests.e2e.test_submit_to_patch import FIX_SCRIPT
from tests.github_fake import INSTALLATION, KEYS, SECRET, FakeGitHub, FakeGitHubServer, deliver, fixture, labeled
from tests.worker.conftest import make_context
from worker.github import GitHubHooks
from worker.pipeline import run_task

REPO = "Codertocat/Hello-World"


@dataclass
class World:
    api: TestClient
    fake: FakeGitHub
    remote: Path
    engine: Engine
    settings: Settings
    run: object

    def outcome(self, task_id: str):  # type: ignore[no-untyped-def]
        with make_sessionmaker(self.engine)() as session:
            task = store.tasks.get_task(session, task_id)
            return (task, store.patches.get_patch(session, task_id), store.github.get_link(session, task_id),
                    [(e.type, e.data) for e in store.events.list_events(session, task_id)])  # fmt: skip


@pytest.fixture
def world(
    tmp_path: Path, redis_url: str, buggy_repo: Path, docker_backend: DockerBackend,
    scripted_model: ScriptedModelServer,
) -> Iterator[World]:  # fmt: skip
    remote = tmp_path / "git" / f"{REPO}.git"
    remote.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(buggy_repo), str(remote))
    git(remote, "branch", "-m", "main", "master")  # the recorded payloads' default branch
    with FakeGitHubServer(FakeGitHub(public_key=KEYS[1], installations={INSTALLATION})) as server:
        settings = Settings(
            data_dir=tmp_path / "data", broker_url=redis_url, queue=f"test-ghflow-{secrets.token_hex(4)}",
            allow_local_repos=True,
            github=GitHubSettings(webhook_secret=SECRET, app_id="4242", private_key=KEYS[0], api_url=server.url,
                                  git_url=str(tmp_path / "git")),  # type: ignore[arg-type]
        )  # fmt: skip
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        client = client_from_settings(settings.github)
        assert client is not None
        hooks = GitHubHooks(client, make_sessionmaker(engine), allow_local=True)
        context = make_context(engine, docker_backend, scripted_model.base_url, tmp_path, hooks=hooks)
        try:
            with TestClient(create_app(settings)) as api:
                yield World(api, server.fake, remote, engine, settings, lambda task_id: run_task(task_id, context))
        finally:
            redis.Redis.from_url(redis_url).delete(settings.queue)
            engine.dispose()


def _file_on_branch(remote: Path, branch: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{branch}:{path}"], cwd=remote, check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def test_a_labelled_issue_ends_as_a_draft_pull_request_and_a_review_comment_adds_a_commit(
    world: World, scripted_model: ScriptedModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scripted_model.state.extend(FIX_SCRIPT)
    response = deliver(world.api, "issues", labeled())
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    world.run(task_id)  # type: ignore[operator]
    task, patch, link, events = world.outcome(task_id)
    assert task.state == "succeeded", task.failure_reason
    assert link.publish_state == "published" and link.pr_number == 1
    # The branch holds the stored commit on the base: the fix, the agent's title, the configured author.
    assert "return a + b" in _file_on_branch(world.remote, link.branch, "calc.py")
    log = git(world.remote, "log", "--format=%an|%s|%P", "-1", link.branch).strip()
    assert log == f"Overnight|Fix add() to add instead of subtract|{task.base_sha}"
    assert git(world.remote, "rev-parse", link.branch).strip() == patch.mbox.split()[1]  # the mbox's own commit
    [pull] = world.fake.pulls
    assert pull["draft"] and pull["head"]["ref"] == link.branch and pull["base"]["ref"] == "master"
    assert pull["title"] == patch.title and "Fixes #1" in pull["body"] and task_id in pull["body"]
    # One progress comment, made at the start and edited in place with the link; 👀 first; the label off.
    [progress] = world.fake.comments.values()
    assert progress["edits"] == 1 and pull["html_url"] in progress["body"]
    assert world.fake.reactions == [("issues/1", "eyes")]
    assert world.fake.labels_removed == [(REPO, 1, "overnight")]
    assert ("publish", {"state": "published", "branch": link.branch, "pull_request": pull["html_url"]}) in events
    # The API shows where the task came from and went (to an admin: GitHub tasks belong to github:LOGIN).
    with make_sessionmaker(world.engine).begin() as session:
        admin = store.users.create_token(session, "root", admin=True)
    shown = world.api.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {admin}"}).json()
    expected = {"repo": REPO, "number": 1, "source": "label", "branch": link.branch, "pr_number": 1,
                "pr_url": pull["html_url"], "publish_state": "published", "publish_error": None}  # fmt: skip
    assert shown["github"] == expected
    # No token anywhere a user or the sandbox could see.
    tokens = list(world.fake.tokens)
    assert tokens
    seen = repr(events) + patch.diff + patch.mbox + task.instruction + (task.failure_reason or "")
    seen += "".join(path.read_text(errors="replace") for path in world.remote.rglob("config"))
    assert "HTTP Request: POST" in caplog.text  # the REST calls were logged, and below, without their tokens
    seen += caplog.text  # every log line of the API, the worker and the HTTP clients, at DEBUG
    assert not any(token in seen for token in tokens)

    # A review comment on that pull request: a follow-up task on the branch, one more commit, no new PR.
    scripted_model.state.extend([
        ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
            "file_path": "calc.py", "old_string": "def add(a, b):", "new_string": "def add(a: int, b: int) -> int:"})]),
        ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments={
            "summary": "Typed add().", "pr_title": "Type add()", "pr_body": "Annotations as asked."})]),
    ])  # fmt: skip
    review = fixture("pull_request_review_comment.created.json")
    review["installation"]["id"] = INSTALLATION
    review["pull_request"]["number"] = 1
    review["comment"]["body"] = "/overnight add type hints to add()"
    follow = deliver(world.api, "pull_request_review_comment", review)
    assert follow.status_code == 202, follow.text
    follow_id = follow.json()["task_id"]
    world.run(follow_id)  # type: ignore[operator]
    task2, _, link2, _ = world.outcome(follow_id)
    assert task2.state == "succeeded", task2.failure_reason
    assert link2.publish_state == "published" and link2.branch == link.branch and len(world.fake.pulls) == 1
    on_branch = _file_on_branch(world.remote, link.branch, "calc.py")
    assert "def add(a: int, b: int) -> int:" in on_branch and "return a + b" in on_branch
    parents = git(world.remote, "log", "--format=%P", "-1", link.branch).strip()
    assert parents == task2.base_sha  # a fast-forward on top of the first commit
    assert ("pulls/comments/" + str(review["comment"]["id"]), "eyes") in world.fake.reactions
    assert len(world.fake.comments) == 2  # the follow-up's own progress comment, on the pull request


def test_a_rejected_push_leaves_the_task_succeeded_with_its_patch_and_says_so(
    world: World, scripted_model: ScriptedModelServer
) -> None:
    hook = world.remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected: pushes are not allowed' >&2\nexit 1\n")
    hook.chmod(0o755)
    scripted_model.state.extend(FIX_SCRIPT)
    task_id = deliver(world.api, "issues", labeled()).json()["task_id"]
    world.run(task_id)  # type: ignore[operator]
    task, patch, link, events = world.outcome(task_id)
    assert task.state == "succeeded" and task.failure_reason is None
    assert patch is not None and "return a + b" in patch.diff
    assert link.publish_state == "failed" and "rejected" in link.publish_error and link.pr_number is None
    assert "(pre-receive hook declined)" in link.publish_error
    assert "remote: protected: pushes are not allowed" in link.publish_error
    assert ("publish", {"state": "failed", "reason": link.publish_error}) in events
    assert world.fake.pulls == []
    [progress] = world.fake.comments.values()
    assert "could not publish the result" in progress["body"] and "patch is stored" in progress["body"]


def test_a_failed_pull_request_leaves_the_task_succeeded_with_its_patch_and_says_so(
    world: World, scripted_model: ScriptedModelServer
) -> None:
    world.fake.pull_failure = (403, {"message": "Resource not accessible by integration",
                                     "documentation_url": "https://docs.github.com/rest/pulls/pulls"})  # fmt: skip
    scripted_model.state.extend(FIX_SCRIPT)
    task_id = deliver(world.api, "issues", labeled()).json()["task_id"]
    world.run(task_id)  # type: ignore[operator]
    task, patch, link, _ = world.outcome(task_id)
    assert task.state == "succeeded" and patch is not None and patch.diff
    assert link.publish_state == "failed"
    assert link.publish_error == "pull request failed: GitHub answered 403 Resource not accessible by integration"
    assert "return a + b" in _file_on_branch(world.remote, link.branch, "calc.py")  # the push itself went through
    [progress] = world.fake.comments.values()
    assert "Resource not accessible by integration" in progress["body"]


def test_a_failed_task_reports_its_reason_on_the_issue_and_opens_nothing(
    world: World, scripted_model: ScriptedModelServer
) -> None:
    scripted_model.state.extend([ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "true"})])]
                                * 12)  # fmt: skip  # more than the ten steps make_context allows
    task_id = deliver(world.api, "issues", labeled()).json()["task_id"]
    world.run(task_id)  # type: ignore[operator]
    task, _, link, _ = world.outcome(task_id)
    assert task.state == "failed" and "step budget" in task.failure_reason
    assert link.publish_state == "skipped" and world.fake.pulls == []
    [progress] = world.fake.comments.values()
    assert "could not finish this: failed, step budget" in progress["body"]
    assert git(world.remote, "branch", "--list", "overnight/*").strip() == ""


def test_clone_credentials_are_the_installation_s_token_for_https_only(world: World) -> None:
    task_id = deliver(world.api, "issues", labeled()).json()["task_id"]
    client = client_from_settings(world.settings.github)
    assert client is not None
    hooks = GitHubHooks(client, make_sessionmaker(world.engine), allow_local=True)
    credentials = hooks.git_credentials(task_id, f"https://github.com/{REPO}.git")
    assert list(credentials) == ["github.com"] and credentials["github.com"] in world.fake.tokens
    assert world.fake.tokens[credentials["github.com"]][0] == INSTALLATION
    assert hooks.git_credentials(task_id, str(world.remote)) == {}  # a local remote needs none
    assert hooks.git_credentials("no-such-task", f"https://github.com/{REPO}.git") == {}
