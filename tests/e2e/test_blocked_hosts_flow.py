"""Issue 18's report of blocked requests end to end, on both backends: a labelled issue through the API, an
environment whose agent policy is an allowlist, the worker running the task against the scripted model with the
real egress proxy (squid), the agent's command refused for a host outside the allowlist — and then that host in
the task's result (``GET /v1/tasks/ID``), in ``network_blocked`` events with the command's step, and in the pull
request's body on the fake GitHub (the blocked hosts, with the count of each).

The web servers are the tests' own, on loopback addresses (``tests/egress_web.py``); nothing leaves this machine.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.environments
import store.tasks
import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from api.app import create_app
from overnight.environments import pattern_key
from overnight.github.client import client_from_settings
from overnight.settings import GitHubSettings, Settings
from sandbox.base import SandboxBackend
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import git
from tests.egress_web import Web, egress_web
from tests.github_fake import INSTALLATION, KEYS, SECRET, FakeGitHub, FakeGitHubServer, deliver, labeled
from tests.worker.conftest import make_context, outcome
from worker.github import GitHubHooks
from worker.pipeline import run_task

REPO = "Codertocat/Hello-World"
TIMES = "\N{MULTIPLICATION SIGN}"


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with egress_web() as servers:
        yield servers


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(FakeGitHub(public_key=KEYS[1], installations={INSTALLATION})) as server:
        yield server


def _script(web: Web) -> list[ScriptedTurn]:
    curl = "curl -sS --max-time 10 -o /dev/null -w ' %{http_code}\\n'"
    install = f"{curl} http://allowed.test:{web.port}/pkg; {curl} http://elsewhere.test:{web.port}/a"
    edit = {"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
    finish = {"summary": "fixed", "pr_title": "Fix add", "pr_body": "Fixed add()."}
    return [
        ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": install})]),
        ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": f"{curl} -X POST "
                                                                      f"http://elsewhere.test:{web.port}/b"})]),
        ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments=edit)]),
        ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments=finish)]),
    ]  # fmt: skip


def test_a_refused_host_is_in_the_task_result_and_the_pull_request(
    tmp_path: Path, redis_url: str, buggy_repo: Path, backend: SandboxBackend, scripted_model: ScriptedModelServer,
    fake: FakeGitHubServer, web: Web,
) -> None:  # fmt: skip
    remote = tmp_path / "git" / f"{REPO}.git"
    remote.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(buggy_repo), str(remote))
    git(remote, "branch", "-m", "main", "master")  # the recorded payloads' default branch
    settings = Settings(
        data_dir=tmp_path / "data", broker_url=redis_url, queue=f"test-blocked-{secrets.token_hex(4)}",
        allow_local_repos=True,
        github=GitHubSettings(webhook_secret=SECRET, app_id="4242", private_key=KEYS[0], api_url=fake.url,
                              git_url=str(tmp_path / "git")),  # type: ignore[arg-type]
    )  # fmt: skip
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    client = client_from_settings(settings.github)
    assert client is not None
    hooks = GitHubHooks(client, make_sessionmaker(engine), allow_local=True)
    context = make_context(engine, backend, scripted_model.base_url, tmp_path, hooks=hooks, egress=web.proxy)
    scripted_model.state.extend(_script(web))
    try:
        with TestClient(create_app(settings)) as api:
            task_id = deliver(api, "issues", labeled()).json()["task_id"]
            with make_sessionmaker(engine).begin() as session:
                task = store.tasks.get_task(session, task_id)
                assert task is not None
                environment = store.environments.create_environment(session, pattern_key(task.repo))
                store.environments.update_environment(
                    environment, {"agent_network": {"mode": "allowlist", "domains": ["allowed.test"]}}
                )
                admin = store.users.create_token(session, "root", admin=True)
            run_task(task_id, context)
            shown = api.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {admin}"}).json()
    finally:
        redis.Redis.from_url(redis_url).delete(settings.queue)
        engine.dispose()

    task, _, events = outcome(engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    outputs = [data["output"] for kind, data in events if kind == "tool_result"]
    assert " 200\n 403" in outputs[0] and " 403" in outputs[1], outputs
    blocked = sorted((d["host"], d["method"], d["step"], d["phase"]) for k, d in events if k == "network_blocked")
    assert blocked == [("elsewhere.test", "GET", 1, "agent"), ("elsewhere.test", "POST", 2, "agent")]
    summary = shown["network_blocked"]
    assert summary["requests"] == 2 and summary["more_hosts"] == 0
    assert [(h["host"], h["requests"], h["methods"], h["ports"]) for h in summary["hosts"]] == [
        ("elsewhere.test", 2, ["GET", "POST"], [web.port])
    ]  # fmt: skip
    [pull] = fake.fake.pulls
    assert pull["body"].startswith("Fixed add().\n\nFixes #1\n\n")
    assert f"**Blocked hosts:** `elsewhere.test` {TIMES}2\n" in pull["body"]
    assert "allowed.test" not in pull["body"]
