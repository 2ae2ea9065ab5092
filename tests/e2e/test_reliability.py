"""Reliability with real worker processes, a real Redis server of the test's own (so it can be restarted),
the scripted model, and each database (a SQLite file; a PostgreSQL database of the test's own): a worker
killed with -9 mid-task (its container and workspace reaped), Redis restarted empty with tasks queued, a
cancel during a long command, the per-user concurrency limit (claims serialised on the user's row), a
cancel while the worker is dead (never run again), a paused worker whose task was given to another (the old
attempt stops itself), a mirror pruned under a running task, and — on a PostgreSQL server of the test's own
— the database stopped for 90 s in the middle of a run."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest

import store.patches
import store.tasks
from agent.scripted import ScriptedModelServer
from tests.e2e.cluster import EDIT, FINISH, Cluster, bash, database, own_postgres, run_cluster


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, scripted_model: ScriptedModelServer,
    docker_client: docker.DockerClient,
) -> Iterator[Cluster]:  # fmt: skip
    with database(request.param, tmp_path) as url:
        yield from run_cluster(url, tmp_path, scripted_model)


def sleeping_task(cluster: Cluster, scripted_model: ScriptedModelServer, repo: Path) -> tuple[Any, str]:
    """A new worker, and a task of it whose first command (``sleep 600``) is running in its sandbox."""
    scripted_model.state.extend([bash("sleep 600"), EDIT, FINISH])
    worker = cluster.start_worker()
    task_id = cluster.submit(repo)
    cluster.wait_state(task_id, "running")
    while len(scripted_model.state.requests) < 1:
        time.sleep(0.1)
    time.sleep(1)  # the sleep 600 is running
    return worker, task_id


def test_a_worker_killed_mid_task_does_not_lose_the_task(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path, docker_client: docker.DockerClient
) -> None:
    first, task_id = sleeping_task(cluster, scripted_model, buggy_repo)
    cluster.kill_worker(first)
    cluster.start_worker()
    task = cluster.wait_final(task_id)
    assert task.state == "succeeded" and task.attempt == 2, cluster.logs()
    reasons = [data.get("reason", "") for kind, data, _ in cluster.events(task_id) if kind == "state"]
    assert any("stopped beating" in reason for reason in reasons)
    deadline = time.monotonic() + 15
    label = f"dev.overnight.task={task_id}"
    while docker_client.containers.list(all=True, filters={"label": label}) and time.monotonic() < deadline:
        time.sleep(0.5)  # the reaper of the live worker removes the dead worker's container
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    deadline = time.monotonic() + 15
    while cluster.folder("workspaces") and time.monotonic() < deadline:
        time.sleep(0.5)  # the dead worker's workspace (attempt 1) and its owner sidecar go the same way
    assert cluster.folder("workspaces") == []


def test_redis_restarted_empty_with_tasks_queued_loses_none(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    tasks = [cluster.submit(buggy_repo, user=f"user{n}") for n in range(3)]
    assert cluster.queue.depth() == 3
    cluster.stop_redis()
    cluster.start_redis()
    assert cluster.queue.depth() == 0  # the messages are gone
    scripted_model.state.extend([FINISH] * 3)
    cluster.start_worker()
    for task_id in tasks:
        assert cluster.wait_final(task_id).state == "succeeded", cluster.logs()


def test_cancel_during_a_long_command_ends_the_task_in_seconds_and_keeps_the_partial_diff(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path, docker_client: docker.DockerClient
) -> None:
    scripted_model.state.extend([EDIT, bash("sleep 600")])
    cluster.start_worker()
    task_id = cluster.submit(buggy_repo)
    while len(scripted_model.state.requests) < 2:
        time.sleep(0.1)
    time.sleep(1)
    with cluster.sessions().begin() as session:
        store.tasks.request_cancel(session, task_id)
    started = time.monotonic()
    task = cluster.wait_final(task_id, timeout=30)
    assert task.state == "cancelled" and time.monotonic() - started < 10
    with cluster.sessions()() as session:
        patch = store.patches.get_patch(session, task_id)
    assert patch is not None and not patch.complete and "+    return a + b" in patch.diff
    assert docker_client.containers.list(all=True, filters={"label": f"dev.overnight.task={task_id}"}) == []


def test_a_user_at_the_concurrency_limit_waits_queued(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    scripted_model.state.extend([bash("sleep 2"), FINISH, bash("sleep 2"), FINISH])
    cluster.start_worker()
    cluster.start_worker()
    first = cluster.submit(buggy_repo, user="carol")
    second = cluster.submit(buggy_repo, user="carol")
    assert cluster.wait_final(first).state == "succeeded" and cluster.wait_final(second).state == "succeeded"

    def window(task_id: str) -> tuple[Any, Any]:
        times = {data["state"]: at for kind, data, at in cluster.events(task_id) if kind == "state"}
        return times["preparing"], times["succeeded"]

    (_a_start, a_end), (b_start, _b_end) = sorted([window(first), window(second)])
    assert b_start >= a_end, "the second task of the same user started while the first still ran"


def test_a_task_cancelled_while_its_worker_is_dead_never_runs_again(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path
) -> None:
    first, task_id = sleeping_task(cluster, scripted_model, buggy_repo)
    cluster.kill_worker(first)
    with cluster.sessions().begin() as session:
        store.tasks.request_cancel(session, task_id)  # nobody is left to see the flag
    cluster.start_worker()  # its reconciler finds the task's heartbeat stale
    task = cluster.wait_final(task_id)
    assert task.state == "cancelled" and task.failure_reason == "cancelled by user", cluster.logs()
    assert task.attempt == 1 and len(scripted_model.state.requests) == 1  # no second attempt ran


def test_a_paused_worker_whose_task_went_to_another_stops_its_attempt_and_writes_nothing(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path, docker_client: docker.DockerClient
) -> None:
    first, task_id = sleeping_task(cluster, scripted_model, buggy_repo)
    cluster.pause_worker(first, task_id)
    cluster.start_worker()  # its reconciler sees attempt 1's heartbeat go stale and hands the task on
    task = cluster.wait_final(task_id)
    assert task.state == "succeeded" and task.attempt == 2, cluster.logs()
    events = cluster.events(task_id)
    cluster.resume_worker(first)  # attempt 1 wakes up mid-command, believing it still owns the task
    label = {"label": f"dev.overnight.task={task_id}"}
    deadline = time.monotonic() + 60
    while "writes nothing more" not in cluster.logs() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "attempt 1 was superseded" in cluster.logs()
    assert docker_client.containers.list(all=True, filters=label) == []  # it removed its own sandbox
    assert cluster.events(task_id) == events and cluster.task(task_id).state == "succeeded"
    assert len(scripted_model.state.requests) == 3 and first.poll() is None  # no model call; the worker lives on


def test_a_mirror_pruned_under_a_running_task_stays_until_the_task_is_done(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path, tmp_path: Path
) -> None:
    cluster.env["OVERNIGHT_MIRROR_MAX_BYTES"] = "1"  # every clone prunes every other mirror it can
    other_repo = tmp_path / "other-repo"
    shutil.copytree(buggy_repo, other_repo)
    waits = bash("while [ ! -e go ]; do sleep 0.2; done; rm go")
    scripted_model.state.extend([EDIT, waits, FINISH, FINISH])
    cluster.start_worker()
    cluster.start_worker()
    first = cluster.submit(buggy_repo, user="dora")
    while len(scripted_model.state.requests) < 2:
        time.sleep(0.1)
    second = cluster.submit(other_repo, user="erin")  # its clone prunes while the first task runs
    assert cluster.wait_final(second).state == "succeeded", cluster.logs()
    mirrors = [path for path in cluster.folder("mirrors") if path.suffix == ".git"]
    assert len(mirrors) == 2  # the second task's prune left the first task's mirror: it was in use
    (cluster.tmp / "data" / "workspaces" / f"{first}.1" / "go").touch()
    task = cluster.wait_final(first)
    assert task.state == "succeeded", f"{task.failure_reason}\n{cluster.logs()}"
    with cluster.sessions()() as session:
        patch = store.patches.get_patch(session, first)
    assert patch is not None and "+    return a + b" in patch.diff and "Subject: [PATCH] Fix add" in patch.mbox


def test_the_database_stopped_for_90_s_mid_run_loses_nothing(
    tmp_path: Path, scripted_model: ScriptedModelServer, buggy_repo: Path, docker_client: docker.DockerClient
) -> None:
    """On a PostgreSQL server of the test's own: the workers' writes wait for it (OVERNIGHT_DATABASE_RETRY_SECONDS),
    and the reconciler does not mistake the heartbeats nobody could write for dead workers."""
    scripted_model.state.extend([EDIT, bash("sleep 5"), FINISH])
    with own_postgres() as server, contextmanager(run_cluster)(server.url, tmp_path, scripted_model) as cluster:
        cluster.start_worker()
        task_id = cluster.submit(buggy_repo)
        while len(scripted_model.state.requests) < 2:
            time.sleep(0.1)
        server.stop()  # while the sleep runs: its result, the model's usage, the patch and the end must wait
        stopped = datetime.now(UTC)
        time.sleep(90)
        server.start()
        task = cluster.wait_final(task_id, timeout=300)
        assert task.state == "succeeded" and task.attempt == 1, f"{task.failure_reason}\n{cluster.logs()}"
        events = cluster.events(task_id)
        results = [at for kind, data, at in events if kind == "tool_result" and data["step"] == 2]
        assert len(results) == 1 and results[0] >= stopped + timedelta(seconds=90)  # written once it was back
        assert [data["state"] for kind, data, _ in events if kind == "state"][-1] == "succeeded"
        assert "retrying for up to 300 s" in (tmp_path / "worker-0.log").read_text()  # the task's writes waited
        with cluster.sessions()() as session:
            patch = store.patches.get_patch(session, task_id)
        assert patch is not None and "+    return a + b" in patch.diff
