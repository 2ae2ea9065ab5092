"""The requests a task's proxy refused, in its result: ``GET /v1/tasks/ID`` sums its network_blocked events up
per host (written through the real store, read through the API under uvicorn), a task without any says null,
another user's task stays 404, and ``overnight show`` / ``overnight logs`` print the same."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

import store.events
import store.tasks
import store.users
from bench.flood import api_env, serve_api
from overnight.events import NetworkBlockedEvent
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import REDIS_URL

AT = datetime(2026, 12, 2, 4, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("blocked")
    env = api_env(tmp, extra={"OVERNIGHT_QUEUE": f"t-{secrets.token_hex(4)}"})
    engine = make_engine(env["OVERNIGHT_DATABASE_URL"])
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        env["alice"] = store.users.create_token(session, "alice")
        env["bob"] = store.users.create_token(session, "bob")
        alice = store.users.user_for_token(session, env["alice"])
        assert alice is not None
        blocked = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main",
                                          instruction="install", user_id=alice.id)  # fmt: skip
        quiet = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main",
                                        instruction="nothing", user_id=alice.id)  # fmt: skip
        for event in (
            NetworkBlockedEvent(host="registry.example.com", port=443, method="CONNECT", at=AT, phase="agent",
                                step=3, reason="not in the allowlist", count=2),
            NetworkBlockedEvent(host="registry.example.com", port=443, method="CONNECT", at=AT, phase="agent",
                                step=5, reason="not in the allowlist"),
            NetworkBlockedEvent(host="10.1.2.3", port=80, method="GET", at=AT, phase="setup",
                                reason="private address"),
        ):  # fmt: skip
            store.events.append_event(session, blocked.id, event)
        env["blocked"], env["quiet"] = blocked.id, quiet.id
    engine.dispose()
    try:
        with serve_api(env, log=tmp / "api.log") as (port, _pid):
            yield env | {"server": f"http://127.0.0.1:{port}", "tmp": str(tmp)}
    finally:
        redis.Redis.from_url(REDIS_URL).delete(env["OVERNIGHT_QUEUE"])


def _get(served: dict[str, str], user: str, path: str) -> httpx.Response:
    return httpx.get(served["server"] + path, headers={"Authorization": f"Bearer {served[user]}"}, timeout=30)


def _cli(served: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
    env |= {"OVERNIGHT_SERVER": served["server"], "OVERNIGHT_TOKEN": served["alice"],
            "OVERNIGHT_CONFIG_DIR": str(Path(served["tmp"]) / "client"), "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(["overnight", *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_task_result_sums_up_the_refused_requests_per_host(served: dict[str, str]) -> None:
    task = _get(served, "alice", f"/v1/tasks/{served['blocked']}").json()

    assert task["network_blocked"] == {
        "requests": 4,
        "more_hosts": 0,
        "hosts": [
            {"host": "registry.example.com", "requests": 3, "ports": [443], "methods": ["CONNECT"],
             "phases": ["agent"], "reasons": ["not in the allowlist"], "first_at": "2026-12-02T04:30:00Z"},
            {"host": "10.1.2.3", "requests": 1, "ports": [80], "methods": ["GET"], "phases": ["setup"],
             "reasons": ["private address"], "first_at": "2026-12-02T04:30:00Z"},
        ],
    }  # fmt: skip
    assert _get(served, "alice", f"/v1/tasks/{served['quiet']}").json()["network_blocked"] is None
    assert _get(served, "bob", f"/v1/tasks/{served['blocked']}").status_code == 404


def test_the_list_leaves_the_summary_out(served: dict[str, str]) -> None:
    tasks = _get(served, "alice", "/v1/tasks").json()["tasks"]
    assert {task["id"] for task in tasks} == {served["blocked"], served["quiet"]}
    assert all(task["network_blocked"] is None for task in tasks)


def test_overnight_show_and_logs_print_the_blocked_hosts(served: dict[str, str]) -> None:
    shown = _cli(served, "show", served["blocked"])
    assert shown.returncode == 0, shown.stderr
    assert "blocked: registry.example.com \N{MULTIPLICATION SIGN}3, 10.1.2.3 \N{MULTIPLICATION SIGN}1" in shown.stdout
    assert "blocked" not in _cli(served, "show", served["quiet"]).stdout
    as_json = json.loads(_cli(served, "show", served["blocked"], "--json").stdout)
    assert as_json["network_blocked"]["requests"] == 4
    logs = _cli(served, "logs", served["blocked"])
    assert logs.returncode == 0, logs.stderr
    assert "blocked CONNECT registry.example.com:443 \N{MULTIPLICATION SIGN}2 (step 3): not in the allowlist" in (
        logs.stdout
    )
    assert "blocked GET 10.1.2.3:80 (setup): private address" in logs.stdout
