"""Best-of-N through the CLI against `overnight up` (API, a Celery worker, Docker sandboxes, the scripted model with a
script per attempt): `submit --attempts 3 --wait` prints the best attempt's patch — the one whose tests pass, though
bigger — `show` lists every attempt with its rank and why, `diff`/`apply --attempt K` give attempt K's patch, and a
cancel of the task cancels every attempt and ends it cancelled."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.conftest import git
from tests.e2e.conftest import cli, overnight_up

TEST = "python3 -m unittest -q test_calc"


def _call(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)])


def _finish(title: str) -> ScriptedTurn:
    return _call("finish", summary=title, pr_title=title, pr_body=title)


def _edit(new: str) -> ScriptedTurn:
    return _call("edit", file_path="calc.py", old_string="a - b", new_string=new)


PASSING_BIG = [_edit("a + b"), _call("write_file", file_path="NOTES.md", content="add() adds.\n" * 30),
               _call("bash", command=TEST), _finish("Fix add, with notes")]  # fmt: skip
FAILING_SMALL = [_edit("a * b"), _call("bash", command=TEST), _finish("Multiply")]
BROKEN = [ScriptedTurn(status=400)]


@pytest.fixture
def server(tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str,
           docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:  # fmt: skip
    with overnight_up(tmp_path, scripted_model) as env:
        yield env


def _json(server: dict[str, str], *args: str) -> Any:
    result = cli(server, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_submit_with_attempts_gives_the_best_patch_and_each_attempt_is_shown_and_applied(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path, tmp_path: Path
) -> None:
    scripted_model.state.scripts.extend([FAILING_SMALL, PASSING_BIG, BROKEN])
    submitted = cli(server, "submit", "Fix add", "--repo", str(buggy_repo), "--attempts", "3", "--wait", timeout=300)
    assert submitted.returncode == 0, submitted.stderr + (Path(server["log"]).read_text()[-3000:])
    assert "+    return a + b" in submitted.stdout and "+add() adds." in submitted.stdout
    task_id = _json(server, "list")[0]["id"]
    shown = _json(server, "show", task_id)
    assert shown["attempts"] == 3 and shown["state"] == "succeeded"
    attempts = {a["attempt"]: a for a in shown["attempts_detail"]}
    best = next(a for a in attempts.values() if a["best"])
    assert best["rank"] == 1 and best["passed"] is True and best["test_command"] == TEST
    failing = next(a for a in attempts.values() if a["passed"] is False)
    assert failing["rank"] == 2 and failing["patch_bytes"] < best["patch_bytes"]
    broken = next(a for a in attempts.values() if a["patch_bytes"] is None)
    assert broken["rank"] == 3 and broken["state"] == "failed" and broken["reason"].startswith("no patch: ")
    table = cli(server, "show", task_id).stdout
    assert "attempts: 3, ranked" in table and "1 (best)" in table and "tests pass;" in table
    assert "+    return a * b" in cli(server, "diff", task_id, "--attempt", str(failing["attempt"])).stdout
    assert cli(server, "diff", task_id, "--attempt", "4").returncode == 2

    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(checkout))
    applied = cli(server, "apply", task_id, "--attempt", str(failing["attempt"]), cwd=checkout)
    assert applied.returncode == 0, applied.stderr
    assert git(checkout, "branch", "--show-current").strip() == f"overnight/{task_id}-{failing['attempt']}"
    assert "a * b" in (checkout / "calc.py").read_text()


def test_cancelling_a_task_with_attempts_cancels_every_attempt_and_ends_it_cancelled(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    slow = [_call("bash", command="sleep 120"), _finish("Slept")]
    scripted_model.state.scripts.extend([slow, list(slow)])
    task_id = _json(server, "submit", "Fix add", "--repo", str(buggy_repo), "--attempts", "2")["id"]
    deadline = time.monotonic() + 120
    while not scripted_model.state.requests:
        assert time.monotonic() < deadline, "no attempt asked the model"
        time.sleep(0.2)
    time.sleep(1)  # its `sleep 120` runs
    started = time.monotonic()
    assert cli(server, "cancel", task_id).returncode == 0
    while (task := _json(server, "show", task_id))["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - started < 90, task
        time.sleep(0.5)
    assert task["state"] == "cancelled" and task["failure_reason"] == "cancelled by user"
    assert {a["state"] for a in task["attempts_detail"]} == {"cancelled"}
    events = [e["type"] for e in _json(server, "logs", task_id)]
    assert events.count("attempt_ended") == 2 and "attempts_ranked" in events
