"""Patches hold only the intended change: caches and build output stay out (and are reported), binary files
the agent made on purpose go in as git binary patches, and a patch that does not apply is never stored."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine

import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from api.app import create_app
from overnight.queue import TaskQueue
from overnight.settings import Settings
from sandbox.base import SandboxBackend
from store.engine import make_sessionmaker
from tests.conftest import git
from tests.worker.conftest import make_context, outcome, submit
from worker.pipeline import run_task

JUNK = (
    "mkdir -p build node_modules/left-pad pkg.egg-info .pytest_cache __pycache__ htmlcov"
    " && touch build/out.o node_modules/left-pad/index.js pkg.egg-info/PKG-INFO .pytest_cache/v __pycache__/m.pyc"
    " .coverage htmlcov/index.html"
    " && mkdir -p target/debug && touch target/debug/app ext.so Main.class util.o"
    " && python3 -m unittest -q test_calc 2>&1 | tail -1"
)
LOGO = "printf '\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR' > logo.png"


def bash(command: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command})])


FINISH = ScriptedTurn(
    tool_calls=[ScriptedCall(name="finish", arguments={"summary": "s", "pr_title": "Fix add", "pr_body": "b"})]
)
EDIT = ScriptedTurn(
    tool_calls=[
        ScriptedCall(name="edit", arguments={"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})
    ]
)


def test_only_the_intended_change_is_in_the_patch(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
) -> None:
    scripted_model.state.extend([EDIT, bash(JUNK), bash(LOGO), FINISH])
    task_id = submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path))
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    changed = [line.split(" b/")[-1] for line in patch.diff.splitlines() if line.startswith("diff --git ")]
    assert changed == ["calc.py", "logo.png"]
    assert "GIT binary patch" in patch.diff
    assert sorted(patch.excluded) == sorted([
        ".coverage", ".pytest_cache/", "__pycache__/", "build/", "htmlcov/", "node_modules/", "pkg.egg-info/",
        "target/", "ext.so", "Main.class", "util.o",
    ])  # fmt: skip

    clone = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(clone))
    (tmp_path / "task.diff").write_text(patch.diff)
    git(clone, "apply", str(tmp_path / "task.diff"))
    assert (clone / "logo.png").read_bytes() == b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"

    settings = Settings(data_dir=tmp_path, database_url=str(sqlite_engine.url))
    with make_sessionmaker(sqlite_engine).begin() as session:
        token = store.users.create_token(session, "root", admin=True)
    with TestClient(create_app(settings, queue=TaskQueue("memory://", queue="unused"))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        response = client.get(f"/v1/tasks/{task_id}/patch", params={"format": "json"})
        assert response.status_code == 200, response.text
        body = response.json()
    assert body["diff"] == patch.diff and body["files_changed"] == 2 and body["complete"] is True
    assert "node_modules/" in body["excluded"] and body["title"] == "Fix add"
    assert json.dumps(body)  # the JSON form is plain JSON


def test_a_patch_that_does_not_apply_to_the_base_fails_the_task(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
) -> None:
    """The agent rewrites what the base commit means in its own repository (git replace): the diff looks fine
    there, but it is checked against the worker's pristine copy and refused."""
    forge = (
        "old=$(git rev-parse HEAD:calc.py) && new=$(printf 'def add(a, b):\\n    return a * b\\n' | git hash-object"
        " -w --stdin) && git replace $old $new"
    )
    scripted_model.state.extend([EDIT, bash(forge), FINISH])
    task_id = submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path))
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed" and patch is None
    assert task.failure_reason == "the patch does not apply to the base commit: error: calc.py: patch does not apply"


def test_a_failed_automatic_setup_is_reported_and_the_task_goes_on(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
) -> None:
    (buggy_repo / "requirements.txt").write_text("surely-not-a-real-package-overnight==1.0\n")
    git(buggy_repo, "add", ".")
    git(buggy_repo, "commit", "-q", "-m", "requirements")
    scripted_model.state.extend([EDIT, FINISH])
    task_id = submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path))
    task, patch, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded" and patch.files_changed == 1
    setup = next(data for kind, data in events if kind == "setup")
    assert setup["auto"] is True and setup["exit_code"] != 0 and "pip install" in setup["commands"]
    first_message = scripted_model.state.requests[0]["messages"][1]["content"]
    assert "<environment>\nThe set-up failed (automatic set-up exited" in first_message
