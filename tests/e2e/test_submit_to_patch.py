"""The whole path: `overnight up` (API + Celery worker processes), a real broker, real Docker, the scripted
model; `overnight submit --wait` comes back with a diff that applies and makes the repository's test pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.conftest import SANDBOX_IMAGE, git
from tests.e2e.conftest import cli as _cli
from tests.e2e.conftest import overnight_up
from tests.mistral_validation import assert_valid_mistral_request

FIX_SCRIPT = [
    ScriptedTurn(
        reasoning="The test says add(2, 3) should be 5. Let me read calc.py.",
        tool_calls=[ScriptedCall(name="read_file", arguments={"file_path": "calc.py"})],
    ),
    ScriptedTurn(
        reasoning="add subtracts; fix the operator.",
        tool_calls=[
            ScriptedCall(
                name="edit",
                arguments={"file_path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"},
            )
        ],
    ),
    ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "python3 -m unittest -v test_calc"})]),
    ScriptedTurn(
        content="The test passes now.",
        tool_calls=[
            ScriptedCall(
                name="finish",
                arguments={
                    "summary": "add() subtracted its arguments; it adds them now. python3 -m unittest passes.",
                    "pr_title": "Fix add() to add instead of subtract",
                    "pr_body": "`calc.add` returned `a - b`. It now returns `a + b`; `test_calc` passes.",
                },
            )
        ],
    ),
]


@pytest.fixture(params=["redis", "sql-transport"])
def server(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    redis_url: str,
    docker_client: docker.DockerClient,
) -> Iterator[dict[str, str]]:
    """`overnight up` in a subprocess: Redis found by default, or the SQLite-backed kombu transport."""
    broker = f"sqla+sqlite:///{tmp_path / 'data' / 'broker.sqlite'}" if request.param == "sql-transport" else None
    with overnight_up(tmp_path, scripted_model, broker=broker) as env:
        yield env


def test_submit_wait_returns_a_patch_that_fixes_the_failing_test(
    server: dict[str, str],
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    scripted_model.state.extend(FIX_SCRIPT)
    result = _cli(server, "submit", "--repo", str(buggy_repo), "--wait", "Fix the failing test in test_calc.py")
    assert result.returncode == 0, result.stderr + Path(server["log"]).read_text()[-3000:]
    task_id = result.stderr.split("task ", 1)[1].split()[0]
    diff = result.stdout
    assert "-    return a - b" in diff and "+    return a + b" in diff

    # The agent ran the test in the sandbox and saw it pass; every request was a valid Mistral request.
    requests = scripted_model.state.requests
    assert len(requests) == 4
    for body in requests:
        assert_valid_mistral_request(body)
    bash_result = requests[3]["messages"][-1]
    assert bash_result["role"] == "tool" and bash_result["name"] == "bash"
    assert "returncode: 0" in bash_result["content"] and "OK" in bash_result["content"]

    # `overnight diff` and GET /patch serve the same stored patch, as text/x-diff.
    assert _cli(server, "diff", task_id).stdout == diff
    auth = {"Authorization": f"Bearer {server['token']}"}
    response = httpx.get(f"{server['OVERNIGHT_SERVER']}/v1/tasks/{task_id}/patch", headers=auth)
    assert response.headers["content-type"].startswith("text/x-diff") and response.text == diff
    task = json.loads(_cli(server, "show", task_id, "--json").stdout)
    assert task["state"] == "succeeded" and task["patch"]["title"] == "Fix add() to add instead of subtract"
    assert task["started_at"] and task["finished_at"] and task["steps"] == 4

    # The full trajectory is downloadable: the messages the model saw, with the tools and per-step usage.
    trajectory = httpx.get(f"{server['OVERNIGHT_SERVER']}/v1/tasks/{task_id}/trajectory", headers=auth).json()
    assert [m["role"] for m in trajectory["messages"]][:3] == ["system", "user", "assistant"]
    assert trajectory["messages"][:-1] == requests[3]["messages"] and len(trajectory["steps"]) == 4
    assert [t["function"]["name"] for t in trajectory["tools"]][-1] == "finish"

    # The patch applies to a fresh clone of the base ref, and the test then passes in a fresh container.
    clone = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(clone))
    (tmp_path / "task.diff").write_text(diff)
    git(clone, "apply", "--index", str(tmp_path / "task.diff"))
    output = docker_client.containers.run(
        SANDBOX_IMAGE,
        ["python3", "-m", "unittest", "-v", "test_calc"],
        working_dir="/workspace",
        volumes={str(clone): {"bind": "/workspace", "mode": "ro"}},
        network_mode="none",
        remove=True,
        stderr=True,
        environment={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert b"OK" in output

    # The sandbox container is gone.
    assert docker_client.containers.list(all=True, filters={"label": f"dev.overnight.task={task_id}"}) == []


def test_unknown_ref_fails_with_a_readable_reason(server: dict[str, str], buggy_repo: Path) -> None:
    result = _cli(server, "submit", "--repo", str(buggy_repo), "--ref", "no-such-branch", "--wait", "anything")
    assert result.returncode == 1
    task_id = result.stderr.split("task ", 1)[1].split()[0]
    task = json.loads(_cli(server, "show", task_id, "--json").stdout)
    assert task["state"] == "failed"
    assert task["failure_reason"] == "ref not found: 'no-such-branch' is not a branch, tag or commit of the repository"
