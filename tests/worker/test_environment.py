"""The set-up phase through run_task: runs once, is snapshotted, and the next task starts from the cache —
on both backends; its files stay out of the patch; failures are readable."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.base import SandboxBackend
from tests.conftest import SANDBOX_IMAGE, git
from tests.worker.conftest import make_context, outcome, submit
from worker.pipeline import run_task

SETUP = """set -e
python3 -m venv /opt/overnight/venv
mkdir -p generated && echo built > generated/artifact.txt
echo "export SETUP_MARK=from-setup" >> ~/.profile
echo "set-up ran"
"""
CHECK = (
    "/opt/overnight/venv/bin/python -c 'print(\"venv ok\")' && cat generated/artifact.txt && grep SETUP_MARK ~/.profile"
)


def _script() -> list[ScriptedTurn]:
    return [
        ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": CHECK})]),
        ScriptedTurn(
            tool_calls=[
                ScriptedCall(
                    name="edit", arguments={"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
                )
            ]
        ),
        ScriptedTurn(
            tool_calls=[
                ScriptedCall(name="finish", arguments={"summary": "fixed", "pr_title": "Fix add", "pr_body": "Fixed."})
            ]
        ),
    ]


@pytest.fixture
def repo_with_setup(buggy_repo: Path) -> Path:
    (buggy_repo / ".overnight").mkdir()
    (buggy_repo / ".overnight" / "setup.sh").write_text(SETUP)
    (buggy_repo / "requirements.txt").write_text("# nothing yet\n")
    git(buggy_repo, "add", ".")
    git(buggy_repo, "commit", "-q", "-m", "set-up script")
    return buggy_repo


def test_setup_runs_once_and_the_next_task_starts_from_the_snapshot(
    sqlite_engine: Engine,
    backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    repo_with_setup: Path,
    tmp_path: Path,
) -> None:
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path)
    for attempt, cached in enumerate((False, True)):
        scripted_model.state.extend(_script())
        task_id = submit(sqlite_engine, str(repo_with_setup))
        run_task(task_id, context)
        task, patch, events = outcome(sqlite_engine, task_id)
        assert task.state == "succeeded", (attempt, task.failure_reason)
        setup = [data for kind, data in events if kind == "setup"]
        assert len(setup) == 1 and setup[0]["cached"] is cached
        if not cached:
            assert setup[0]["exit_code"] == 0 and "set-up ran" in setup[0]["log"]
        check = next(data for kind, data in events if kind == "tool_result")
        assert "venv ok" in check["output"] and "built" in check["output"] and "from-setup" in check["output"]
        assert patch.files_changed == 1 and "generated/" not in patch.diff and "calc.py" in patch.diff
    assert len(context.environments.entries()) == 1


def test_a_changed_lockfile_means_a_new_environment(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    repo_with_setup: Path,
    tmp_path: Path,
) -> None:
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    scripted_model.state.extend(_script())
    run_task(submit(sqlite_engine, str(repo_with_setup)), context)
    (repo_with_setup / "requirements.txt").write_text("attrs==25.1.0\n")
    git(repo_with_setup, "commit", "-q", "-am", "pin attrs")
    scripted_model.state.extend(_script())
    task_id = submit(sqlite_engine, str(repo_with_setup))
    run_task(task_id, context)
    _, _, events = outcome(sqlite_engine, task_id)
    assert [data["cached"] for kind, data in events if kind == "setup"] == [False]
    assert len(context.environments.entries()) == 2


@pytest.mark.parametrize(
    ("script", "setup", "reason"),
    [
        (
            "echo preparing; echo 'no such package' >&2; exit 3",
            None,
            "set-up failed (.overnight/setup.sh exited 3): no such package",
        ),
        ("sleep 60", None, "set-up timed out after 2 s (.overnight/setup.sh)"),
        (None, "scripts/missing.sh", "set-up script scripts/missing.sh not found in the repository"),
        ("link", None, "set-up: .overnight/setup.sh points outside the repository"),
    ],
)
def test_setup_failures_end_the_task_with_a_reason(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
    script: str | None,
    setup: str | None,
    reason: str,
) -> None:
    if script is not None:
        (buggy_repo / ".overnight").mkdir()
        target = buggy_repo / ".overnight" / "setup.sh"
        if script == "link":
            os.symlink("/etc/passwd", target)
        else:
            target.write_text(script)
        git(buggy_repo, "add", ".")
        git(buggy_repo, "commit", "-q", "-m", "set-up")
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    context.setup.timeout = 2
    task_id = submit(sqlite_engine, str(buggy_repo), setup=setup)
    run_task(task_id, context)
    task, _, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed" and task.failure_reason == reason
    assert scripted_model.state.requests == []


def test_a_repository_may_name_its_own_image(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    docker_client.images.get(SANDBOX_IMAGE).tag("overnight-test/custom", "1")
    try:
        (buggy_repo / ".overnight").mkdir()
        (buggy_repo / ".overnight" / "image").write_text("overnight-test/custom:1\n")
        git(buggy_repo, "add", ".")
        git(buggy_repo, "commit", "-q", "-m", "own image")
        scripted_model.state.extend(_script()[1:])
        context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
        context.setup.repo_images = ("overnight-test/custom:1", "overnight-test/absent:1")  # the operator's list
        task_id = submit(sqlite_engine, str(buggy_repo))
        run_task(task_id, context)
        task, _, events = outcome(sqlite_engine, task_id)
        assert task.state == "succeeded", task.failure_reason
        assert {"phase": "agent", "environment": "overnight-test/custom:1"} in [d for k, d in events if k == "phase"]

        (buggy_repo / ".overnight" / "image").write_text("overnight-test/absent:1\n")
        git(buggy_repo, "commit", "-q", "-am", "absent image")
        task_id = submit(sqlite_engine, str(buggy_repo))
        run_task(task_id, context)
        task, _, _ = outcome(sqlite_engine, task_id)
        assert task.failure_reason == (
            "sandbox: sandbox image 'overnight-test/absent:1' not found: it is not on this worker"
        )
        (buggy_repo / ".overnight" / "image").write_text("--privileged\n")
        git(buggy_repo, "commit", "-q", "-am", "bad image")
        task_id = submit(sqlite_engine, str(buggy_repo))
        run_task(task_id, context)
        task, _, _ = outcome(sqlite_engine, task_id)
        assert task.failure_reason == ".overnight/image: '--privileged' is not an image name"
    finally:
        docker_client.images.remove("overnight-test/custom:1")
