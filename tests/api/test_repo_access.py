"""Who may name which repository, where a task is filed: local paths for admins only, under the configured
roots, never the server's own folders however the path gets there; repositories an operator mapped to users
for those users only. A refusal is a 403 before any task exists, so nothing is queued or cloned."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import store.patches
import store.tasks
import store.users
from api.app import create_app
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState
from tests.conftest import git

MAPPED = "https://git.example.com/acme/private.git"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    settings = Settings(
        data_dir=tmp_path / "data", config_dir=tmp_path / "config", broker_url=redis_url,
        queue=f"test-access-{secrets.token_hex(4)}", allow_local_repos=True, local_repo_roots=[tmp_path],
        repo_access={"https://git.example.com/acme/*": ["alice"]},
    )  # type: ignore[arg-type]  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(settings.queue)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        tokens = {
            name: store.users.create_token(session, name, admin=name == "root") for name in ("alice", "bob", "root")
        }
    with TestClient(create_app(settings)) as client:
        client.tokens = tokens  # type: ignore[attr-defined]
        yield client


def post(api: TestClient, user: str, repo: str, path: str = "/v1/tasks") -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {api.tokens[user]}"}  # type: ignore[attr-defined]
    body = {"repo": repo, "instruction": "read it"} if path == "/v1/tasks" else {"instruction": "more"}
    response = api.post(path, json=body, headers=headers)
    return response.status_code, response.json()


def nothing_filed(settings: Settings, redis_url: str) -> bool:
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        tasks, _ = store.tasks.list_tasks(session, limit=10)
    return tasks == [] and redis.Redis.from_url(redis_url).llen(settings.queue) == 0


@pytest.fixture
def planted(settings: Settings, tmp_path: Path, buggy_repo: Path) -> dict[str, Path]:
    """The server's own folders holding repositories (another user's workspace, a private mirror), and the
    ways a path under the roots may lead into them."""
    workspace = settings.workspaces_dir / "01OTHERUSERSTASK"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(workspace))
    mirror = settings.mirrors_dir / "0123456789abcdef.git"
    git(tmp_path, "clone", "-q", "--mirror", str(buggy_repo), str(mirror))
    git(mirror, "repack", "-q", "-a", "-d")
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "link").symlink_to(mirror)
    git(projects, "init", "-q", "borrowing")
    (projects / "borrowing" / ".git" / "objects" / "info" / "alternates").write_text(f"{mirror / 'objects'}\n")
    (projects / "pointing").mkdir()
    (projects / "pointing" / ".git").write_text(f"gitdir: {mirror}\n")
    git(projects, "init", "-q", "--bare", "packed.git")
    (projects / "packed.git" / "objects" / "pack" / "stolen.pack").symlink_to(
        next((mirror / "objects" / "pack").glob("*.pack"))
    )
    ways = {name: projects / name for name in ("link", "borrowing", "pointing", "packed.git")}
    return {"workspace": workspace, "mirror": mirror, "data": settings.data_dir, **ways}


@pytest.mark.parametrize("name", ["workspace", "mirror", "data", "link", "borrowing", "pointing", "packed.git"])
def test_not_even_an_admin_names_the_server_s_own_folders(
    api: TestClient, settings: Settings, planted: dict[str, Path], name: str, redis_url: str
) -> None:
    status, body = post(api, "root", str(planted[name]))
    assert status == 403, body
    error = body["error"]
    assert isinstance(error, dict) and error["code"] == "repository_forbidden"
    assert error["message"].endswith("a folder of the server's own"), error
    assert nothing_filed(settings, redis_url)


def test_local_paths_are_for_admins_and_only_under_the_roots(
    api: TestClient, settings: Settings, buggy_repo: Path, redis_url: str
) -> None:
    status, body = post(api, "bob", str(buggy_repo))
    assert (status, body["error"]["message"]) == (403, "local repository paths are for admins only")  # type: ignore[index]
    status, body = post(api, "root", "/etc")
    assert status == 403 and "is not under a folder of OVERNIGHT_LOCAL_REPO_ROOTS" in str(body)
    assert nothing_filed(settings, redis_url)
    status, body = post(api, "root", str(buggy_repo))
    assert status == 201, body


def test_a_mapped_repository_is_for_its_users_in_any_spelling(
    api: TestClient, settings: Settings, redis_url: str
) -> None:
    for spelling in (MAPPED, "https://GIT.example.com/ACME/private", "https://git.example.com/acme/private/"):
        status, body = post(api, "bob", spelling)
        assert status == 403, (spelling, body)
        assert "OVERNIGHT_REPO_ACCESS does not list them for it" in str(body)
    assert nothing_filed(settings, redis_url)
    assert post(api, "alice", MAPPED)[0] == 201
    assert post(api, "root", MAPPED)[0] == 201  # admins always
    assert post(api, "bob", "https://git.example.com/other/public.git")[0] == 201  # unmapped: anonymous


def test_retry_and_follow_up_check_again(api: TestClient, settings: Settings) -> None:
    """A task filed before the operator mapped its repository to someone else is not run again for bob."""
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        bob = store.users.user_for_token(session, api.tokens["bob"])  # type: ignore[attr-defined]
        task_id = store.tasks.create_task(session, repo=MAPPED, ref="main", instruction="x", user_id=bob.id).id  # type: ignore[union-attr]
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.preparing)
        store.tasks.get_task(session, task_id).base_sha = "a" * 40  # type: ignore[union-attr]
        store.patches.store_patch(session, task_id, base_sha="a" * 40, diff="", title="t", body="b", files_changed=0)
        store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.succeeded)
    for path in (f"/v1/tasks/{task_id}/retry", f"/v1/tasks/{task_id}/follow-up"):
        status, body = post(api, "bob", MAPPED, path)
        assert status == 403 and json.dumps(body).count("repository_forbidden") == 1, (path, body)
    with sessions() as session:
        assert len(store.tasks.list_tasks(session, limit=10)[0]) == 1
