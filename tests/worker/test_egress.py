"""A task's agent network policy through run_task, on both backends: with an allowlist, the agent's commands reach
the allowed host through the egress proxy and nothing else, and every refusal becomes a ``network_blocked`` event
with the step of the command that made it; with none (the default) the proxy is never started and the agent's
sandbox has neither a network nor a proxy to point at.

The web servers are the tests' own, on loopback addresses (``tests/egress_web.py``); nothing leaves this machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import store.environments
import store.tasks
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from overnight.environments import pattern_key
from sandbox.base import SandboxBackend
from sandbox.proxy import EgressProxy
from store.engine import make_sessionmaker
from tests.conftest import SANDBOX_IMAGE
from tests.egress_web import PUBLIC, Web, egress_web
from tests.worker.conftest import make_context, outcome
from worker.egress import MAX_BLOCKED_EVENTS
from worker.environment import SetupPolicy
from worker.pipeline import run_task


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with egress_web() as servers:
        yield servers


def _environment(engine: Engine, repo: Path, **fields: Any) -> None:
    with make_sessionmaker(engine).begin() as session:
        environment = store.environments.create_environment(session, pattern_key(str(repo)))
        store.environments.update_environment(environment, fields)


def _bash(command: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command})])


def _finish() -> list[ScriptedTurn]:
    edit = {"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
    finish = {"summary": "fixed", "pr_title": "Fix add", "pr_body": "Fixed add."}
    return [ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments=edit)]),
            ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments=finish)])]  # fmt: skip


def _run(engine: Engine, repo: Path, backend: SandboxBackend, model: ScriptedModelServer, tmp_path: Path,
         egress: EgressProxy | None) -> tuple[Any, list[tuple[str, Any]]]:  # fmt: skip
    context = make_context(engine, backend, model.base_url, tmp_path, egress=egress)
    with make_sessionmaker(engine).begin() as session:
        task_id = store.tasks.create_task(session, repo=str(repo), ref=None, instruction="fix the test").id
    run_task(task_id, context)
    task, _, events = outcome(engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    return task, events


def test_an_allowlist_lets_the_agent_reach_its_hosts_and_reports_the_rest_with_their_step(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, web: Web,
) -> None:  # fmt: skip
    _environment(sqlite_engine, buggy_repo, agent_network={"mode": "allowlist", "domains": ["allowed.test"]})
    curl = "curl -sS --max-time 10 -w ' %{http_code}\\n'"
    scripted_model.state.extend([
        _bash(f"{curl} http://allowed.test:{web.port}/pkg"),
        _bash(f"{curl} -o /dev/null http://elsewhere.test:{web.port}/a; {curl} -o /dev/null "
              f"http://elsewhere.test:{web.port}/b; {curl} https://elsewhere.test:{web.port}/; "
              f"{curl} --noproxy '*' http://{PUBLIC}:{web.port}/direct"),
        *_finish(),
    ])  # fmt: skip
    _, events = _run(sqlite_engine, buggy_repo, backend, scripted_model, tmp_path, web.proxy)
    outputs = [data["output"] for kind, data in events if kind == "tool_result"]
    assert f"{PUBLIC} GET /pkg\n 200" in outputs[0]
    assert "stdout:\n 403\n 403\n 000\n 000\n" in outputs[1], outputs[1]
    assert "CONNECT tunnel failed, response 403" in outputs[1] and "Couldn't connect to server" in outputs[1]
    blocked = [data for kind, data in events if kind == "network_blocked"]
    assert sorted((b["host"], b["port"], b["method"], b["step"], b["count"], b["phase"]) for b in blocked) == [
        ("elsewhere.test", web.port, "CONNECT", 2, 1, "agent"),
        ("elsewhere.test", web.port, "GET", 2, 2, "agent"),  # two alike requests of one command: one event
    ]
    assert {b["reason"] for b in blocked} == {"not in the allowlist"} and all(b["at"] for b in blocked)
    kinds = [kind for kind, _ in events]
    assert kinds.index("network_blocked") > kinds.index("tool_result"), "told after its command's result"
    first = str(scripted_model.state.requests[0]["messages"])
    assert "commands reach only these hosts" in first and "allowed.test" in first, "the model is told its network"


def test_no_policy_starts_no_proxy_and_gives_the_agent_no_network(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, web: Web,
) -> None:  # fmt: skip
    fresh = EgressProxy(web.proxy.config)
    scripted_model.state.extend([
        _bash("env | grep -ci proxy; tail -n +3 /proc/net/dev | cut -d: -f1; ls /overnight"),
        *_finish(),
    ])  # fmt: skip
    try:
        _, events = _run(sqlite_engine, buggy_repo, backend, scripted_model, tmp_path, fresh)
        assert fresh._process is None, "a task without a network policy started the proxy"
    finally:
        fresh.close()
    output = next(data["output"] for kind, data in events if kind == "tool_result")
    assert output.split()[3:5] == ["0", "lo"] and "exec.sock" in output and "egress" not in output, output
    assert not [kind for kind, _ in events if kind == "network_blocked"]


def test_a_policy_that_needs_the_proxy_fails_the_task_on_a_worker_without_one(
    sqlite_engine: Engine, docker_backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    _environment(sqlite_engine, buggy_repo, agent_network={"mode": "full"})
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    with make_sessionmaker(sqlite_engine).begin() as session:
        task_id = store.tasks.create_task(session, repo=str(buggy_repo), ref=None, instruction="fix the test").id
    run_task(task_id, context)
    task, _, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed"
    assert task.failure_reason == "the agent network policy 'full' needs the egress proxy, which this worker lacks"


SETUP = """curl -sS --max-time 10 http://allowed.test:{port}/setup
curl -sS --max-time 10 -o /dev/null -w 'refused %{{http_code}}\\n' -X POST http://elsewhere.test:{port}/upload
curl -sS --max-time 5 --noproxy '*' http://{public}:{port}/direct || echo 'direct: nothing'
"""


@pytest.mark.parametrize("how", ["environment allowlist", "operator registries"])
def test_a_set_up_goes_through_the_proxy_to_its_allowlist(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, web: Web, how: str,
) -> None:  # fmt: skip
    """An environment's allowlist set-up policy, or a full one when the operator sends set-ups to the registries
    (OVERNIGHT_SANDBOX_SETUP_EGRESS=registries), reaches its hosts through the proxy and nothing else; what was
    refused is a network_blocked event of the set-up phase."""
    script = SETUP.format(port=web.port, public=PUBLIC)
    if how == "environment allowlist":
        _environment(sqlite_engine, buggy_repo, setup_script=script,
                     setup_network={"mode": "allowlist", "domains": ["allowed.test"]})  # fmt: skip
        setup = SetupPolicy(image=SANDBOX_IMAGE, network=True, timeout=120, lifetime=900)
    else:
        _environment(sqlite_engine, buggy_repo, setup_script=script)
        setup = SetupPolicy(image=SANDBOX_IMAGE, network=True, timeout=120, lifetime=900, egress="registries",
                            registries=("allowed.test", "*.pkg.test"))  # fmt: skip
    scripted_model.state.extend(_finish())
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path, egress=web.proxy, setup=setup)
    with make_sessionmaker(sqlite_engine).begin() as session:
        task_id = store.tasks.create_task(session, repo=str(buggy_repo), ref=None, instruction="fix the test").id
    run_task(task_id, context)
    task, _, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    [log] = [data["log"] for kind, data in events if kind == "setup"]
    assert f"{PUBLIC} GET /setup" in log and "refused 403" in log and "direct: nothing" in log, log
    [blocked] = [data for kind, data in events if kind == "network_blocked"]
    assert (blocked["host"], blocked["method"], blocked["phase"], blocked["step"]) == ("elsewhere.test", "POST",
                                                                                      "setup", None)  # fmt: skip


def test_a_command_that_makes_many_refusals_costs_at_most_the_cap_of_events(
    sqlite_engine: Engine, bwrap_backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, web: Web,
) -> None:  # fmt: skip
    _environment(sqlite_engine, buggy_repo, agent_network={"mode": "allowlist", "domains": ["allowed.test"]})
    many = MAX_BLOCKED_EVENTS + 30
    scripted_model.state.extend([
        _bash(f"for i in $(seq {many}); do curl -s -o /dev/null http://h$i.test/; done; "
              f"for i in 1 2 3; do curl -s -o /dev/null http://h1.test/; done"),
        *_finish(),
    ])  # fmt: skip
    _, events = _run(sqlite_engine, buggy_repo, bwrap_backend, scripted_model, tmp_path, web.proxy)
    blocked = [data for kind, data in events if kind == "network_blocked"]
    assert len(blocked) == MAX_BLOCKED_EVENTS  # distinct hosts past the cap are counted in the log, not stored
    assert next(b["count"] for b in blocked if b["host"] == "h1.test") == 4  # alike ones: one event
