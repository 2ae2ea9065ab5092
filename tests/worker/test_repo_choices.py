"""What a repository may choose for its own set-up, through run_task on Docker: an image only from the operator's
list, and requirement files by any name, quoted."""

from __future__ import annotations

from pathlib import Path

import docker
from sqlalchemy import Engine

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.docker import DockerBackend
from tests.conftest import SANDBOX_IMAGE, git
from tests.worker.conftest import make_context, outcome, submit
from worker.pipeline import run_task

FINISH = ScriptedTurn(
    tool_calls=[ScriptedCall(name="finish", arguments={"summary": "done", "pr_title": "Done", "pr_body": "Done."})]
)


def _commit(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "files")


def test_a_repository_may_pick_only_an_image_the_operator_listed(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    """An image on the worker (another project's, a snapshot, anything) is not the repository's to choose."""
    docker_client.images.get(SANDBOX_IMAGE).tag("overnight-test/not-listed", "1")
    try:
        _commit(buggy_repo, {".overnight/image": "overnight-test/not-listed:1\n"})
        context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
        assert context.setup.repo_images == ()  # the default: none
        task_id = submit(sqlite_engine, str(buggy_repo))
        run_task(task_id, context)
        task, _, _ = outcome(sqlite_engine, task_id)
        assert task.state == "failed"
        assert task.failure_reason == (
            ".overnight/image names image overnight-test/not-listed:1, which is not in OVERNIGHT_SANDBOX_REPO_IMAGES "
            "(the images this server lets a repository choose)"
        )
        assert scripted_model.state.requests == []
        _commit(buggy_repo, {".overnight/image": f"{SANDBOX_IMAGE}\n"})  # naming the base image is always fine
        scripted_model.state.extend([FINISH])
        task_id = submit(sqlite_engine, str(buggy_repo))
        run_task(task_id, context)
        assert outcome(sqlite_engine, task_id)[0].state == "succeeded"
    finally:
        docker_client.images.remove("overnight-test/not-listed:1")


def test_a_requirements_file_with_a_space_in_its_name_is_installed_and_odd_names_run_nothing(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    _commit(buggy_repo, {"requirements dev.txt": "pytest\n", "requirements$(touch PWNED).txt": "# nothing\n",
                         "requirements;touch PWNED2.txt": "# nothing\n"})  # fmt: skip
    check = "ls; /opt/overnight/venv/bin/python -c 'import pytest; print(\"pytest in venv\")'"
    scripted_model.state.extend([ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": check})]),
                                 FINISH])  # fmt: skip
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    task_id = submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, context)
    task, _, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    setup = next(data for kind, data in events if kind == "setup")
    assert setup["auto"] is True and setup["exit_code"] == 0, setup.get("log")
    assert "pip install --progress-bar off -r 'requirements dev.txt'" in setup["commands"]
    assert "Requirement already satisfied: pytest" in setup["log"]
    listing = next(data["output"] for kind, data in events if kind == "tool_result")
    assert "pytest in venv" in listing and "requirements dev.txt" in listing
    assert "PWNED\n" not in listing and "PWNED2\n" not in listing  # the names were words, not commands
