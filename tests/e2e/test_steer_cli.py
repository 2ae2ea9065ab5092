"""`overnight say` against `overnight up` (API, worker, Docker sandbox, the scripted model): a steer sent
while a command runs reaches the model in its next request, a queued one turns the model's finish into more
work in the same patch, `logs` says when each was delivered, and a message to an ended task is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.e2e.conftest import cli, overnight_up

SLOW = ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "sleep 5; echo looked"})])
EDIT = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
NOTES = ScriptedTurn(tool_calls=[ScriptedCall(name="write_file", arguments={
    "file_path": "NOTES.md", "content": "add() adds.\n"})])  # fmt: skip
FINISH = ScriptedTurn(content="Done.", tool_calls=[ScriptedCall(name="finish", arguments={
    "summary": "fixed add", "pr_title": "Fix add", "pr_body": "Fixed."})])  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str,
           docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:  # fmt: skip
    with overnight_up(tmp_path, scripted_model) as env:
        yield env


def _submit_and_wait_for_the_first_request(server: dict[str, str], model: ScriptedModelServer, repo: Path) -> str:
    task = json.loads(cli(server, "submit", "Fix the failing test", "--repo", str(repo), "--json").stdout)
    deadline = time.monotonic() + 120
    while not model.state.requests:  # the model answers at once; its `sleep 5` then runs
        assert time.monotonic() < deadline, "the task never asked the model"
        time.sleep(0.1)
    return str(task["id"])


def test_say_steers_a_running_task_and_queues_more_work_then_is_refused_once_it_ended(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    scripted_model.state.extend([SLOW, EDIT, FINISH, NOTES, FINISH])
    task_id = _submit_and_wait_for_the_first_request(server, scripted_model, buggy_repo)
    steered = cli(server, "say", task_id, "Keep test_calc.py as it is")  # while `sleep 5` runs
    queued = cli(server, "say", task_id, "Then write NOTES.md", "--queue", "--json")
    assert steered.returncode == queued.returncode == 0, steered.stderr + queued.stderr
    message = json.loads(queued.stdout)
    assert (message["mode"], message["state"]) == ("queue", "pending")
    assert steered.stdout.strip() == f"message {message['id'] - 1} to {task_id}: pending (steer)"
    followed = cli(server, "logs", task_id, "-f", timeout=120)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    shown = followed.stdout + followed.stderr  # the live view goes to stderr when piped
    assert "steer from" in shown and "delivered at step 2" in shown and "queued message from" in shown
    second = scripted_model.state.requests[1]["messages"]
    assert [m["role"] for m in second[-2:]] == ["tool", "user"] and "Keep test_calc.py as it is" in second[-1][
        "content"
    ]
    diff = cli(server, "diff", task_id).stdout
    assert "+    return a + b" in diff and "+add() adds." in diff  # the steered and the queued work, one patch

    refused = cli(server, "say", task_id, "one more thing")
    assert refused.returncode == 2
    assert f"task {task_id} has ended (succeeded)" in refused.stderr and "(task_ended, HTTP 409)" in refused.stderr
    listed = json.loads(cli(server, "logs", task_id, "--json").stdout)
    delivered = [(e["data"]["mode"], e["data"]["step"]) for e in listed if e["type"] == "message_delivered"]
    assert delivered == [("steer", 2), ("queue", 4)]
