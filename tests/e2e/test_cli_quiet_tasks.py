"""Following a task that stays quiet for longer than the server's keep-alive interval, with the real CLI against
`overnight up`: `submit --wait`, `submit --wait --json`, `logs -f` and `logs -f --json` each follow it to the end.
The keep-alive reaches the client as an event without data; it used to end every one of them in a traceback
(issue 14)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import docker
import httpx
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.e2e.conftest import cli, overnight_up

EDIT = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
FINISH = ScriptedTurn(content="Done.", tool_calls=[ScriptedCall(name="finish", arguments={
    "summary": "fixed add", "pr_title": "Fix add", "pr_body": "Fixed."})])  # fmt: skip


def quiet_task(seconds: int) -> list[ScriptedTurn]:
    """A task whose first command prints nothing for ``seconds``, then fixes calc.py."""
    return [ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": f"sleep {seconds}"})]),
            EDIT, FINISH]  # fmt: skip


def count_keepalives(server: dict[str, str], task_id: str, counted: list[int]) -> None:
    """Reads the task's raw event stream to its end and counts its comment lines: the keep-alives."""
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {server['token']}"}
    url = f"{server['OVERNIGHT_SERVER']}/v1/tasks/{task_id}/events"
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=None)) as response:
        counted.append(sum(1 for line in response.iter_lines() if line.startswith(":")))


def quiet_gap(events: list[dict]) -> float:
    """Seconds between the `sleep` tool call and the event after it."""
    at = next(i for i, e in enumerate(events) if e["type"] == "tool_call" and "sleep" in e["data"]["arguments"])
    moments = [datetime.fromisoformat(events[i]["created_at"]) for i in (at, at + 1)]
    return (moments[1] - moments[0]).total_seconds()


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture
def fast_pings(tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str,
               docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:  # fmt: skip
    with overnight_up(tmp_path, scripted_model, extra={"OVERNIGHT_SSE_PING_SECONDS": "1"}) as env:
        yield env


def test_all_four_ways_of_following_outlast_keepalives_of_a_quiet_task(
    fast_pings: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    server, repo = fast_pings, str(buggy_repo)
    scripted_model.state.extend(quiet_task(4) * 4)  # one worker: each task plays its three turns in a row
    filed = [cli(server, "submit", "fix", "--repo", repo, "--json") for _ in range(2)]
    assert all(result.returncode == 0 for result in filed), [result.stderr for result in filed]
    followed = [json.loads(result.stdout)["id"] for result in filed]
    keepalives: list[int] = []
    counter = threading.Thread(target=count_keepalives, args=(server, followed[0], keepalives))
    counter.start()
    modes = {
        "logs -f": ["logs", followed[0], "-f"],
        "logs -f --json": ["logs", followed[1], "-f", "--json"],
        "submit --wait": ["submit", "fix", "--repo", repo, "--wait"],
        "submit --wait --json": ["submit", "fix", "--repo", repo, "--wait", "--json"],
    }
    with ThreadPoolExecutor(len(modes)) as pool:  # the later tasks wait queued, just as quiet
        results = dict(zip(modes, pool.map(lambda args: cli(server, *args, timeout=400), modes.values()), strict=True))
    counter.join(timeout=60)
    assert keepalives and keepalives[0] >= 1  # the followers really had keep-alives to outlast

    for mode, result in results.items():
        assert result.returncode == 0, (mode, result.stderr)
        assert_no_traceback(result)
    plain = results["logs -f"].stdout + results["logs -f"].stderr
    assert "step 1 ▸ bash" in plain and "step 2 ▸ edit" in plain and "● succeeded" in plain
    events = [json.loads(line) for line in results["logs -f --json"].stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # each event once, in order
    assert events[-1]["type"] == "state" and events[-1]["data"]["state"] == "succeeded"
    assert quiet_gap(events) >= 1  # longer than the keep-alive interval, with no event in between
    assert "+    return a + b" in results["submit --wait"].stdout  # the diff, printed at the end
    assert "● succeeded" in results["submit --wait"].stderr
    task = json.loads(results["submit --wait --json"].stdout)
    assert task["state"] == "succeeded" and task["patch"]["files_changed"] == 1


@pytest.fixture
def server(tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str,
           docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:  # fmt: skip
    with overnight_up(tmp_path, scripted_model) as env:  # the real default keep-alive interval (15 s)
        yield env


def test_submit_wait_outlasts_a_task_quiet_for_longer_than_the_default_keepalive_interval(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    scripted_model.state.extend(quiet_task(20))
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(cli, server, "submit", "fix", "--repo", str(buggy_repo), "--wait", timeout=400)
        headers = {"Authorization": f"Bearer {server['token']}"}
        tasks: list[dict] = []
        deadline = time.monotonic() + 60
        while not tasks and time.monotonic() < deadline:  # the task submit --wait filed
            tasks = httpx.get(f"{server['OVERNIGHT_SERVER']}/v1/tasks", headers=headers).json()["tasks"]
            time.sleep(0.2)
        keepalives: list[int] = []
        pool.submit(count_keepalives, server, tasks[0]["id"], keepalives)
        result = waiting.result()
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert "+    return a + b" in result.stdout and "● succeeded" in result.stderr
    assert keepalives[0] >= 1  # the 20 s of silence had at least one keep-alive in it
    events = json.loads(cli(server, "logs", tasks[0]["id"], "--json").stdout)
    assert quiet_gap(events) >= 15
