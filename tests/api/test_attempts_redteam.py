"""Red team of best-of-N attempts (issue 17 part 2): each test tries one attack and fails if it works.

Another user reaching an attempt task by its id through every route (its patch, events, trajectory, messages,
cancel, retry, follow-up); a user passing the quota with attempts (a retry, two creates at once); and the
ranking's check sandbox, which runs a command an attempt's agent chose on that attempt's patch, doing anything
the attempt's own sandbox could not: on both backends, through the worker with the scripted model, the same probe
runs as the agent's "test command" and again in the check, and the check must see no more than the agent did.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

import store.attempts
import store.bestof
import store.patches
import store.tasks
import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from api.app import create_app
from overnight.settings import Settings
from sandbox.base import SandboxBackend
from store.bestof import RankEntry, Ranking
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import Task, TaskState
from tests.worker.conftest import make_context, outcome
from worker.github_attempts import attempts_markdown
from worker.pipeline import run_task

REPO = "https://github.com/acme/widgets.git"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=f"test-bestof-rt-{secrets.token_hex(4)}")
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(settings.queue)


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        return {name: store.users.create_token(session, name) for name in ("alice", "bob")}


@pytest.fixture
def alice(settings: Settings, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['alice']}"}) as client:
        yield client


def _sessions(settings: Settings) -> Any:
    return make_sessionmaker(make_engine(settings.resolved_database_url))


def _ranked_group(alice: TestClient, settings: Settings) -> tuple[str, list[str]]:
    """A task of alice's with two attempts that ended with patches, ranked, the task succeeded."""
    created = alice.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it", "attempts": 2})
    assert created.status_code == 201, created.text
    group = created.json()["id"]
    with _sessions(settings).begin() as session:
        attempts = [a.id for a in store.bestof.attempts_of(session, group)]
        for number, attempt in enumerate(attempts, start=1):
            store.tasks.transition(session, attempt, from_states=[TaskState.queued], to_state=TaskState.running)
            diff = f"diff --git a/x b/x\n+alice's {number}\n"
            store.patches.store_patch(session, attempt, base_sha="a" * 40, diff=diff, title="t", body="b",
                                      files_changed=1)  # fmt: skip
            store.tasks.transition(session, attempt, from_states=[TaskState.running], to_state=TaskState.succeeded)
        ranking = Ranking(best=1, entries=[RankEntry(attempt=k, task_id=t, state="succeeded", rank=k, reason="r")
                                           for k, t in enumerate(attempts, start=1)])  # fmt: skip
        store.bestof.store_ranking(session, group, ranking, attempts[0])
        store.tasks.transition(session, group, from_states=[TaskState.queued], to_state=TaskState.succeeded)
    return group, attempts


def test_another_user_finds_nothing_of_an_attempt_task_by_any_route(
    alice: TestClient, settings: Settings, tokens: dict[str, str]
) -> None:
    """Attempt task ids are listed to their owner (GET /attempts): bob, who learns one, gets 404 from every route
    — never 403, 409 or the data — and changes nothing."""
    group, attempts = _ranked_group(alice, settings)
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    reads = ["", "/events", "/events?after=0", "/trajectory", "/patch", "/patch?format=json", "/patch?format=mbox",
             "/attempts", "/messages", "/patch?attempt=1"]  # fmt: skip
    for task_id in (*attempts, group):
        for path in reads:
            answer = alice.get(f"/v1/tasks/{task_id}{path}", headers=bob)
            assert answer.status_code == 404, (task_id, path, answer.status_code, answer.text[:200])
            assert "alice's" not in answer.text
        for path, body in (("/cancel", None), ("/retry", None), ("/follow-up", {"instruction": "mine now"}),
                           ("/messages", {"text": "steer", "mode": "steer"})):  # fmt: skip
            answer = alice.post(f"/v1/tasks/{task_id}{path}", headers=bob, json=body)
            assert answer.status_code == 404, (task_id, path, answer.status_code, answer.text[:200])
    listed = alice.get("/v1/tasks", params={"attempts": "true"}, headers=bob).json()["tasks"]
    assert listed == []
    with _sessions(settings)() as session:
        rows = [session.get(Task, task_id) for task_id in (*attempts, group)]
        assert [(row.state, row.cancel_requested) for row in rows if row] == [("succeeded", False)] * 3
        assert session.scalar(select(func.count()).select_from(Task)) == 3  # no retry or follow-up was made


def test_another_users_attempt_number_does_not_reach_through_ones_own_task(
    alice: TestClient, settings: Settings, tokens: dict[str, str]
) -> None:
    """``?attempt=K`` is looked up under the task named in the path: bob's own task with attempts never yields
    alice's attempt K, whatever K."""
    _ranked_group(alice, settings)
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    own = alice.post("/v1/tasks", headers=bob, json={"repo": REPO, "instruction": "mine", "attempts": 2}).json()
    for k in range(1, 9):
        answer = alice.get(f"/v1/tasks/{own['id']}/patch", params={"attempt": k}, headers=bob)
        assert "alice's" not in answer.text and answer.status_code in (404, 409), (k, answer.text[:200])


def test_a_retry_of_a_task_with_attempts_counts_every_attempt_against_the_quota(
    alice: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    group, _ = _ranked_group(alice, settings)
    monkeypatch.setattr(settings, "api", settings.api.model_copy(update={"max_queued_tasks_per_user": 3}))
    alice.post("/v1/tasks", json={"repo": REPO, "instruction": "one"}).raise_for_status()
    refused = alice.post(f"/v1/tasks/{group}/retry")  # 1 unfinished + 2 attempts = 3: allowed; once more: 5
    assert refused.status_code == 201, refused.text
    again = alice.post(f"/v1/tasks/{group}/retry")
    assert again.status_code == 429 and again.json()["error"]["code"] == "too_many_tasks", again.text


def test_two_creates_at_once_cannot_pass_the_quota_together(
    alice: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads each ask for 3 attempts under a quota of 4: at most one gets through, and the user's unfinished
    tasks never exceed the quota."""
    monkeypatch.setattr(settings, "api", settings.api.model_copy(update={"max_queued_tasks_per_user": 4}))
    answers: list[int] = []
    gate = threading.Barrier(8)

    def create() -> None:
        gate.wait()
        answer = alice.post("/v1/tasks", json={"repo": REPO, "instruction": "race", "attempts": 3})
        answers.append(answer.status_code)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == [201] + [429] * 7, answers
    with _sessions(settings)() as session:
        unfinished = session.scalar(select(func.count()).select_from(Task).where(Task.kind == "attempt"))
        assert unfinished == 3


# --- the ranking's check sandbox ---------------------------------------------------------------------------------

PROBE_SCRIPT = r"""
import os, socket
print("PROBE uid", os.getuid(), os.getgid(), sorted(os.getgroups()))
print("PROBE env", sorted(name for name in os.environ if name not in ("PWD", "OLDPWD", "SHLVL", "_")))
for address in [("127.0.0.1", 3128), ("127.0.0.1", 5432), ("127.0.0.1", 6379), ("172.17.0.1", 6379),
                ("10.0.2.2", 80), ("169.254.169.254", 80), ("192.0.2.2", 5432)]:
    try:
        socket.create_connection(address, timeout=2).close()
        print("PROBE REACHED", address)
    except OSError:
        print("PROBE closed", address)
for path in ("/overnight", "/overnight/egress", "/run/overnight-sandbox"):
    print("PROBE see", path, os.path.exists(path) and sorted(os.listdir(path)) if os.access(path, os.R_OK) else "-")
for path in ("/", "/etc", "/usr", "/opt/overnight", "/overnight", "/proc/sys/kernel"):
    print("PROBE writable", path, os.access(path, os.W_OK))
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect("/overnight/exec.sock")
    print("PROBE REACHED exec server")
except OSError as exc:
    print("PROBE exec server", type(exc).__name__)
print("PROBE pids", len([p for p in os.listdir("/proc") if p.isdigit()]) < 20)
"""
PROBE = f"python3 -m unittest -q test_calc 2>/dev/null; python3 - <<'EOF'\n{PROBE_SCRIPT}\nEOF"
"""Looks like a test command to the ranking (``unittest``), passes, and reports what the sandbox reaches."""


def _call(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)])


def _script() -> list[ScriptedTurn]:
    return [_call("edit", file_path="calc.py", old_string="a - b", new_string="a + b"), _call("bash", command=PROBE),
            _call("finish", summary="fixed", pr_title="Fix add", pr_body="fixed")]  # fmt: skip


def _probe_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("PROBE")]


def test_the_rankings_check_sandbox_reaches_nothing_the_agents_sandbox_could_not(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Two attempts whose agent ran the probe as its passing test: the ranking runs it again on each patch in its
    check sandbox. What the probe reports there (uid, environment names, addresses, control folder, writable
    places, the exec server's socket) is what it reported in the agent's sandbox, and reaches nothing."""
    scripted_model.state.scripts.extend([_script(), _script()])
    with make_sessionmaker(sqlite_engine).begin() as session:
        group = store.tasks.create_task(session, repo=str(buggy_repo), ref=None, instruction="fix add")
        group_id, attempt_ids = group.id, [t.id for t in store.bestof.add_attempts(session, group, 2)]
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path)
    for task_id in attempt_ids:
        assert run_task(task_id, context) == "ran"
    assert run_task(group_id, context) == "ran"
    ranked, _, _ = outcome(sqlite_engine, group_id)
    entries = {entry["attempt"]: entry for entry in ranked.ranking["entries"]}
    for k, attempt_id in enumerate(attempt_ids, start=1):
        _, _, events = outcome(sqlite_engine, attempt_id)
        [agent_output] = [
            data["output"] for kind, data in events if kind == "tool_result" and "PROBE" in data["output"]
        ]
        in_agent, in_check = _probe_lines(agent_output), _probe_lines(entries[k]["output_tail"] or "")
        assert entries[k]["test_command"] == PROBE and entries[k]["passed"] is True, entries[k]
        assert in_check, entries[k]["output_tail"]
        assert not [line for line in in_agent + in_check if "REACHED" in line], in_agent + in_check
        assert "PROBE uid 1000 1000 []" in in_check
        assert [line for line in in_check if "writable" in line and line.endswith("True")] == []
        agent_env = next(line for line in in_agent if line.startswith("PROBE env"))
        check_env = next(line for line in in_check if line.startswith("PROBE env"))
        assert set(eval(check_env.removeprefix("PROBE env "))) <= set(eval(agent_env.removeprefix("PROBE env ")))
        assert set(in_check) - {check_env} <= set(in_agent) - {agent_env}, (in_check, in_agent)


def test_ranking_a_task_does_not_take_its_user_past_the_concurrency_limit(
    alice: TestClient, settings: Settings
) -> None:
    """A user at OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER gets no more sandboxes by filing tasks with attempts: the
    ranking of a task whose attempts ended runs a check sandbox per attempt (the agents' commands, each up to the
    command timeout), so it waits as a task of theirs would ("busy") while they are at the limit — else a user
    with many such tasks holds as many worker slots as there are rankings due, beyond the limit."""
    created = alice.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it", "attempts": 2}).json()
    single = alice.post("/v1/tasks", json={"repo": REPO, "instruction": "another"}).json()
    with _sessions(settings).begin() as session:
        for attempt in store.bestof.attempts_of(session, created["id"]):
            assert store.attempts.claim(session, attempt.id, worker="w", max_active_per_user=4) == 1
            store.tasks.transition(session, attempt.id, from_states=[TaskState.preparing], to_state=TaskState.running)
            store.tasks.transition(session, attempt.id, from_states=[TaskState.running], to_state=TaskState.failed)
        assert store.bestof.ranking_due(session, created["id"])
        assert store.attempts.claim(session, single["id"], worker="w", max_active_per_user=1) == 1  # at the limit
        claimed = store.bestof.claim_ranking(session, created["id"], worker="w", max_active_per_user=1)
        assert claimed == "busy", "the ranking started while its user was at the concurrency limit of 1"
        store.tasks.transition(session, single["id"], from_states=[TaskState.preparing], to_state=TaskState.failed)
        assert isinstance(store.bestof.claim_ranking(session, created["id"], worker="w", max_active_per_user=1), int)


HOSTILE_REASONS = [
    "no patch: `x` | y\n\n## Approved by @octocat <img src=x onerror=alert(1)> [click](https://evil.test)",
    "check failed: ``` \n| a | b |\n|---|---|\n</details><script>x</script>",
    "the patch does not apply: \\` @everyone #1 " + "x" * 400,
]


def test_an_attempts_hostile_reason_stays_one_code_span_in_the_pull_requests_table() -> None:
    """A ranking's reason carries what an attempt's agent or patch wrote (a failure reason, git apply's message
    naming its files): in the pull request's table it stays inside one cell's code span — no new row or section,
    no mention, image, link or HTML outside a code span — and long ones are cut."""
    entries = [RankEntry(attempt=k, task_id=f"t{k}", state="failed", rank=k, reason=reason, patch_bytes=10 * k)
               for k, reason in enumerate(HOSTILE_REASONS, start=1)]  # fmt: skip
    section = attempts_markdown("group", Ranking(best=1, entries=entries), public_url="https://overnight.test")
    lines = section.splitlines()
    assert len([line for line in lines if line.startswith("|")]) == 2 + len(entries), section
    assert not any(line.startswith(("#", "<", "```")) for line in lines), section
    outside_code = "".join(part for index, part in enumerate(section.split("`")) if index % 2 == 0)
    for marker in ("@octocat", "@everyone", "<img", "<script", "](https://evil.test)", "</details>"):
        assert marker not in outside_code, (marker, section)
    assert max(len(line) for line in lines) < 600
