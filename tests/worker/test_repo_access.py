"""Who may read which repository, on the worker: against a real HTTPS git server (``git http-backend``) that
wants a token and records every Authorization header it is offered, with a worker whose own identity (a
``~/.netrc``, a credential helper with stored credentials, an SSH agent) would answer for any user if let."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import store.tasks
import store.users
from agent.scripted import ScriptedModelServer
from overnight.loopback import LoopbackServer
from sandbox.docker import DockerBackend
from store.engine import make_sessionmaker
from tests.conftest import git
from tests.github_https import SmartHTTP, make_tls
from tests.worker.conftest import local_access, make_context
from worker.mirrors import ANONYMOUS_SSH, MirrorCache, git_env
from worker.pipeline import run_task
from worker.repo import Checkout

TOKEN = "s3cret-token"


class OneToken:
    """What SmartHTTP asks of the fake GitHub: is this the token that opens the repositories."""

    def _token_ok(self, header: str) -> bool:
        return header == f"token {TOKEN}"


@dataclass
class RecordingGit(SmartHTTP):
    offered: list[str | None] = field(default_factory=list)
    """The Authorization header of every request, its scheme lower-case (None: it came without)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        header = dict(scope["headers"]).get(b"authorization")
        scheme, _, value = header.decode().partition(" ") if header else ("", "", "")
        self.offered.append(f"{scheme.lower()} {value}" if header else None)
        await super().__call__(scope, receive, send)


@dataclass
class World:
    server: RecordingGit
    base: str
    engine: Engine
    tmp: Path
    context: Any

    def task(self, repo: str, user: str, *, admin: bool = False) -> str:
        with make_sessionmaker(self.engine).begin() as session:
            user_id = store.users.user_for_token(session, store.users.create_token(session, user, admin=admin)).id  # type: ignore[union-attr]
            return store.tasks.create_task(session, repo=repo, ref=None, instruction="look", user_id=user_id).id

    def run(self, task_id: str) -> Any:
        run_task(task_id, self.context)
        with make_sessionmaker(self.engine)() as session:
            return store.tasks.get_task(session, task_id)

    def mirrors_with_objects(self) -> list[Path]:
        return [p for p in (self.tmp / "mirrors").glob("*.git") if any((p / "objects").rglob("*.pack"))]


@pytest.fixture
def world(
    tmp_path: Path, buggy_repo: Path, sqlite_engine: Engine, docker_backend: DockerBackend,
    scripted_model: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:  # fmt: skip
    root = tmp_path / "served"
    for name in ("acme/private.git", "other/private.git"):
        git(tmp_path, "clone", "-q", "--bare", str(buggy_repo), str(root / name))
    ca, chain, key = make_tls(tmp_path / "tls")
    server = RecordingGit(root, OneToken())  # type: ignore[arg-type]
    with LoopbackServer(server, name="git server", tls=(chain, key)) as loopback:
        base = loopback.url
        # The worker's own identity, as an operator's account may carry it: every one would answer this server.
        home = tmp_path / "worker-home"
        home.mkdir()
        (home / ".netrc").write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
        (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
        (home / ".git-credentials").write_text(f"https://helper-user:helper-password@127.0.0.1:{loopback.port}\n")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
        monkeypatch.setenv("GIT_SSL_CAINFO", str(ca))
        context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
        context.checkout = Checkout(
            mirrors=MirrorCache(tmp_path / "mirrors", max_bytes=2**30),
            access=local_access(tmp_path, mapping={f"{base}/acme/*": ("alice",)}),
            credentials={f"127.0.0.1:{loopback.port}": TOKEN},
        )
        yield World(server, base, sqlite_engine, tmp_path, context)


def _basic(user: str, password: str) -> str:
    return "basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_repository_mapped_to_others_is_refused_before_anything_is_fetched(world: World) -> None:
    task = world.run(world.task(f"{world.base}/ACME/private", "bob"))
    assert task.state == "failed"
    assert task.failure_reason == (
        f"repository refused: bob may not use repository {world.base}/ACME/private: "
        "OVERNIGHT_REPO_ACCESS does not list them for it"
    )
    assert world.server.offered == [] and world.mirrors_with_objects() == []  # not one request


def test_an_unmapped_private_repository_gets_no_credentials_of_the_worker(world: World) -> None:
    task = world.run(world.task(f"{world.base}/other/private.git", "bob"))
    assert task.state == "failed" and task.failure_reason.startswith("clone failed:"), task.failure_reason
    assert world.server.offered and set(world.server.offered) == {None}  # asked, and offered nothing
    assert world.mirrors_with_objects() == []


def test_the_worker_s_identity_would_answer_if_it_were_let(world: World) -> None:
    """The server and the worker's home are such that credentials do arrive when the worker's identity is
    used: the test above would see them."""
    env = git_env(allow_local=False, url=f"{world.base}/other/private.git", worker_identity=True)
    done = subprocess.run(["git", "ls-remote", f"{world.base}/other/private.git"], env=env, capture_output=True)
    assert done.returncode != 0  # neither the netrc's nor the helper's password opens it...
    offered = {header for header in world.server.offered if header}
    assert offered & {_basic("netrc-user", "netrc-password"), _basic("helper-user", "helper-password")}  # ...but sent


def test_mapped_users_and_admins_clone_with_the_configured_token(world: World, tmp_path: Path) -> None:
    from worker.repo import clone_repository, task_owner

    mapped, unmapped = f"{world.base}/acme/private.git", f"{world.base}/other/private.git"
    for repo, user, admin in ((mapped, "alice", False), (unmapped, "root", True)):
        task_id = world.task(repo, user, admin=admin)
        with make_sessionmaker(world.engine)() as session:
            owner = task_owner(session, store.tasks.get_task(session, task_id).user_id)  # type: ignore[union-attr]
        world.server.offered.clear()
        sha, _ = clone_repository(repo, None, tmp_path / "ws" / user, checkout=world.context.checkout, owner=owner)
        assert sha == git(tmp_path / "calc-repo", "rev-parse", "HEAD").strip()
        assert set(world.server.offered) == {_basic("x-access-token", TOKEN)}


def test_a_mirror_filled_with_a_github_token_is_not_another_user_s(world: World, tmp_path: Path) -> None:
    """A GitHub task's installation token fetched the private repository; a user's task naming the same
    address gets its own, anonymous mirror, and the server's refusal."""
    from worker.repo import clone_repository

    url = f"{world.base}/other/private.git"
    _, github_mirror = clone_repository(url, None, tmp_path / "ws" / "gh", checkout=world.context.checkout,
                                        credentials={f"127.0.0.1:{world.base.rsplit(':', 1)[1]}": TOKEN})  # fmt: skip
    assert world.mirrors_with_objects() == [github_mirror]
    world.server.offered.clear()
    task = world.run(world.task(url, "bob"))
    assert task.state == "failed" and task.failure_reason.startswith("clone failed:"), task.failure_reason
    assert set(world.server.offered) == {None}
    assert world.mirrors_with_objects() == [github_mirror]


def test_a_local_path_swapped_for_the_server_s_own_folder_is_refused_at_clone_time(
    world: World, buggy_repo: Path, tmp_path: Path
) -> None:
    """The API checked the path when the task was filed; the worker resolves it again when it clones."""
    (tmp_path / "workspaces" / "other-task").mkdir(parents=True)
    git(tmp_path, "clone", "-q", str(buggy_repo), str(tmp_path / "workspaces" / "other-task" / "repo"))
    named = tmp_path / "projects" / "mine"
    named.parent.mkdir()
    named.symlink_to(tmp_path / "workspaces" / "other-task" / "repo")
    task = world.run(world.task(str(named), "root", admin=True))
    assert task.state == "failed"
    assert task.failure_reason == (
        f"repository refused: {named} is (or uses) {tmp_path.resolve() / 'workspaces'}, a folder of the server's own"
    )
    assert world.mirrors_with_objects() == []


def test_ssh_without_the_worker_s_identity_offers_no_key_agent_or_ticket(world: World) -> None:
    env = git_env(allow_local=False, url="git@git.example.com:acme/private.git")
    assert "SSH_AUTH_SOCK" not in env and env["GIT_SSH_COMMAND"] == ANONYMOUS_SSH
    shown = subprocess.run([*ANONYMOUS_SSH.split(), "-G", "git.example.com"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr  # ssh takes every option
    effective = set(shown.stdout.splitlines())
    assert {"identityagent none", "gssapiauthentication no", "identitiesonly yes", "batchmode yes"} <= effective
    assert effective & {"pubkeyauthentication no", "pubkeyauthentication false"}  # (OpenSSH 9.2 says false)
    assert not [line for line in effective if line.startswith("controlpath ")]  # none: no shared connection
    assert [line for line in effective if line.startswith("identityfile")] == ["identityfile /dev/null"]
    mapped = git_env(allow_local=False, url="git@git.example.com:acme/private.git", worker_identity=True)
    assert mapped["SSH_AUTH_SOCK"] == str(world.tmp / "agent.sock")
