"""Best-of-N on real worker processes (Redis of the test's own, each database, Docker sandboxes, the scripted model
with a script per attempt): the attempts of one task run on two workers under a per-user limit of two (the task
itself holds no slot), the last one to end has the task ranked, and a worker killed with -9 while it ranks (its
check's command running) costs a ranking attempt, not the task: another worker ranks it again.

Whether the attempts overlap in time is up to the host's load, so no assertion here says they do: that they run
side by side is what ``python -m bench.attempts`` measures (docs/attempts.md), and that a task's attempts are
claimed under the limit while the task itself is running is tests/store/test_bestof.py's."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

import store.attempts
import store.bestof
import store.tasks
import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.e2e.cluster import Cluster, database, run_cluster

SLOW_TEST = "sleep 8; python3 -m unittest -q test_calc"


def _call(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)])


def _script(new: str, *commands: str) -> list[ScriptedTurn]:
    edit = _call("edit", file_path="calc.py", old_string="a - b", new_string=new)
    return [edit, *(_call("bash", command=command) for command in commands),
            _call("finish", summary="fixed", pr_title=f"Fix add: {new}", pr_body="Fixed.")]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, scripted_model: ScriptedModelServer,
    docker_client: docker.DockerClient,
) -> Iterator[Cluster]:  # fmt: skip
    with database(request.param, tmp_path) as url:
        for each in run_cluster(url, tmp_path, scripted_model):
            each.env["OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER"] = "2"
            yield each


def _submit(cluster: Cluster, repo: Path, attempts: int) -> tuple[str, list[str]]:
    with cluster.sessions().begin() as session:
        token = store.users.create_token(session, "alice")
        user = store.users.user_for_token(session, token)
        assert user is not None
        group = store.tasks.create_task(session, repo=str(repo), ref=None, instruction="fix", user_id=user.id)
        group_id, attempt_ids = group.id, [t.id for t in store.bestof.add_attempts(session, group, attempts)]
    for task_id in attempt_ids:
        cluster.queue.enqueue(task_id)
        with cluster.sessions().begin() as session:
            store.attempts.mark_enqueued(session, task_id)
    return group_id, attempt_ids


def _ranker(cluster: Cluster, group_id: str, timeout: float = 120) -> Any:
    """The worker process whose pool holds the task's ranking, once its check's command runs."""
    deadline = time.monotonic() + timeout
    while (task := cluster.task(group_id)).worker is None or task.ranking is not None:
        assert time.monotonic() < deadline and task.ranking is None, cluster.logs()
        time.sleep(0.2)
    pid = int(task.worker.rsplit(":", 1)[1])
    time.sleep(4)  # clone, the set-up's snapshot, the sandbox: the check's `sleep 8` runs by now
    return next(worker for worker in cluster.workers if os.getpgid(pid) == worker.pid)


def test_attempts_run_on_two_workers_and_one_killed_while_ranking_costs_a_ranking_not_the_task(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    scripted_model.state.scripts.extend([_script("a + b", SLOW_TEST), _script("a + b  # the longer fix, no tests")])
    cluster.start_worker()
    cluster.start_worker()
    deadline = time.monotonic() + 60  # both consume before anything is sent: each attempt on a worker of its own
    while not all(" ready." in log.read_text() for log in cluster.tmp.glob("worker-*.log")):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    group_id, (first, second) = _submit(cluster, buggy_repo, 2)
    ranker = _ranker(cluster, group_id)
    ran = [cluster.task(task_id) for task_id in (first, second)]
    assert all(t.state == "succeeded" for t in ran), cluster.logs()
    cluster.kill_worker(ranker)
    cluster.start_worker()  # the other worker, or this one, ranks it again
    group = cluster.wait_final(group_id, timeout=180)
    # 2: the killed ranking, then the next; more when a loaded host missed beats for the stale limit of 3 s
    assert group.state == "succeeded" and group.attempt >= 2, cluster.logs()
    best, other = group.ranking["entries"]  # which attempt got which script is the order they asked the model in
    assert group.ranking["best"] == best["attempt"] and best["patch_bytes"] < other["patch_bytes"]
    assert best["passed"] is other["passed"] is True  # the one that ran no test checked by the other's command
    assert best["test_command"] == other["test_command"] == SLOW_TEST
    events = cluster.events(group_id)
    reasons = [data.get("reason", "") for kind, data, _ in events if kind == "state"]
    assert any("stopped beating" in reason for reason in reasons)
    assert [kind for kind, _, _ in events].count("attempts_ranked") == 1
    deadline = time.monotonic() + 30  # what the killed ranking held, reaped by a live worker
    while any(".check" in path.name for path in cluster.folder("workspaces")):
        assert time.monotonic() < deadline, cluster.folder("workspaces")
        time.sleep(0.5)
