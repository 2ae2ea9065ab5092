"""GitHub Enterprise on a port of its own, end to end: a signed label delivery to the API, the worker cloning
over HTTPS from https://127.0.0.1:<random port>/OWNER/REPO.git (git's smart HTTP, refusing requests without
the installation token), the task in Docker against the scripted model, the push and the draft pull request —
every REST call and git request through one TLS server whose certificate authority the test made.

Git applies an ``http.<url>.extraheader`` key only to the port it names (none: 443), so a token keyed by host
alone never reaches this server: git then asks for a username, which is what these tests also show."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.github
import store.tasks
from agent.scripted import ScriptedModelServer
from api.app import create_app
from overnight.github.client import client_from_settings
from overnight.settings import Settings
from sandbox.docker import DockerBackend
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import git
from tests.e2e.test_submit_to_patch import FIX_SCRIPT
from tests.github_fake import INSTALLATION, KEYS, SECRET, FakeGitHub, deliver, labeled
from tests.github_https import GitHubEnterprise
from tests.worker.conftest import make_context
from worker.github import GitHubHooks
from worker.mirrors import git_env
from worker.pipeline import run_task

REPO = "Codertocat/Hello-World"


@pytest.fixture
def enterprise(tmp_path: Path, buggy_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubEnterprise]:
    root = tmp_path / "ghe"
    remote = root / f"{REPO}.git"
    remote.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(buggy_repo), str(remote))
    git(remote, "branch", "-m", "main", "master")  # the recorded payloads' default branch
    fake = FakeGitHub(public_key=KEYS[1], installations={INSTALLATION}, personal_token="ghp_" + "e" * 36)
    with GitHubEnterprise(fake, root, tmp_path / "tls") as server:
        # The server's trust in the test's certificate authority, as an operator gives it to the API and workers:
        monkeypatch.setenv("GIT_SSL_CAINFO", str(server.ca))  # git
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))  # the REST client (httpx)
        yield server


def test_a_label_becomes_a_draft_pull_request_on_github_enterprise_on_its_own_port(
    enterprise: GitHubEnterprise, tmp_path: Path, redis_url: str, docker_backend: DockerBackend,
    scripted_model: ScriptedModelServer,
) -> None:  # fmt: skip
    settings = Settings.model_validate({
        "data_dir": tmp_path / "data", "broker_url": redis_url, "queue": f"test-ghe-{secrets.token_hex(4)}",
        "github": {"webhook_secret": SECRET, "app_id": "4242", "private_key": KEYS[0], "api_url": enterprise.api_url},
    })  # fmt: skip
    assert settings.github.git_base == enterprise.url == f"https://127.0.0.1:{enterprise.port}"
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    client = client_from_settings(settings.github)
    assert client is not None
    hooks = GitHubHooks(client, make_sessionmaker(engine), allow_local=False)
    context = make_context(engine, docker_backend, scripted_model.base_url, tmp_path, hooks=hooks)
    scripted_model.state.extend(FIX_SCRIPT)
    try:
        with TestClient(create_app(settings)) as api:
            response = deliver(api, "issues", labeled())
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        run_task(task_id, context)
        with make_sessionmaker(engine)() as session:
            task, link = store.tasks.get_task(session, task_id), store.github.get_link(session, task_id)
        assert task is not None and link is not None
        assert task.repo == f"{enterprise.url}/{REPO}.git"
        assert task.state == "succeeded", task.failure_reason
        assert link.publish_state == "published", link.publish_error
    finally:
        redis.Redis.from_url(redis_url).delete(settings.queue)
        engine.dispose()
    [pull] = enterprise.fake.pulls
    assert pull["draft"] and pull["head"]["ref"] == link.branch and pull["base"]["ref"] == "master"
    shown = subprocess.run(["git", "show", f"{link.branch}:calc.py"], cwd=enterprise.git.root / f"{REPO}.git",
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "return a + b" in shown
    # The clone and the push carried the installation token to this port (git's first, anonymous probe of
    # info/refs is refused, as GitHub does, and git then retries with the header configured for the URL).
    served = [(r.path.rsplit("/", 1)[-1], r.authorised) for r in enterprise.git.requests if r.method == "POST"]
    assert ("git-upload-pack", True) in served and ("git-receive-pack", True) in served
    assert all(authorised for _, authorised in served)
    # Who labelled was asked of GitHub (the same server), and so were the reaction, label and comments.
    assert enterprise.fake.calls_to("GET", "/collaborators/Codertocat/permission")
    assert enterprise.fake.reactions == [("issues/1", "eyes")]
    [progress] = enterprise.fake.comments.values()
    assert pull["html_url"] in progress["body"]


def test_credentials_keyed_by_host_and_port_reach_that_port_and_only_that(
    enterprise: GitHubEnterprise, tmp_path: Path
) -> None:
    """OVERNIGHT_GIT_CREDENTIALS keys, as git_env turns them into git configuration, against the real server."""
    url = f"{enterprise.url}/{REPO}.git"
    token = enterprise.fake.personal_token
    assert token is not None

    def ls_remote(credentials: dict[str, str]) -> subprocess.CompletedProcess[str]:
        env = git_env(allow_local=False, credentials=credentials, url=url)
        return subprocess.run(["git", "ls-remote", url], env=env, capture_output=True, text=True, timeout=60)

    by_port = ls_remote({f"127.0.0.1:{enterprise.port}": token})
    assert by_port.returncode == 0 and "refs/heads/master" in by_port.stdout, by_port.stderr
    # The host alone means port 443 to git: nothing is sent here, and git wants a username it may not ask for.
    host_only = ls_remote({"127.0.0.1": token})
    assert host_only.returncode != 0 and "could not read Username" in host_only.stderr
    other_port = ls_remote({f"127.0.0.1:{enterprise.port + 1}": token})
    assert other_port.returncode != 0 and "could not read Username" in other_port.stderr
    assert token not in host_only.stderr + other_port.stderr
