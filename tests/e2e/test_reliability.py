"""Reliability with real worker processes, a real Redis server of the test's own (so it can be restarted),
the scripted model, and each database (a SQLite file; a PostgreSQL database of the test's own): a worker
killed with -9 mid-task, Redis restarted empty with tasks queued, a cancel during a long command, and the
per-user concurrency limit (claims serialised on the user's row)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy import create_engine, text

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from migrations import store
from migrations.models import TaskState
from migrations.store import make_engine, make_sessionmaker, migrate
from tests.conftest import POSTGRES_URL, SANDBOX_IMAGE
from worker.celery_app import TaskQueue

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bash(command: str, timeout: int = 300) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command, "timeout": timeout})])


EDIT = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
FINISH = ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments={
    "summary": "fixed", "pr_title": "Fix add", "pr_body": "Fixed."})])  # fmt: skip


@dataclass(kw_only=True)
class Cluster:
    tmp: Path
    env: dict[str, str]
    redis_port: int
    queue: TaskQueue
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.redis_port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait()

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        worker = subprocess.Popen([sys.executable, "-m", "worker", "1"], env=self.env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def sessions(self) -> Any:
        return make_sessionmaker(make_engine(self.env["OVERNIGHT_DATABASE_URL"]))

    def submit(self, repo: Path, user: str = "alice") -> str:
        with self.sessions().begin() as session:
            token = store.create_token(session, user)
            user_id = store.user_for_token(session, token).id  # type: ignore[union-attr]
            task_id = store.create_task(session, repo=str(repo), ref=None, instruction="fix", user_id=user_id).id
        self.queue.enqueue(task_id)
        with self.sessions().begin() as session:
            store.mark_enqueued(session, task_id)
        return task_id

    def task(self, task_id: str) -> Any:
        with self.sessions()() as session:
            return store.get_task(session, task_id)

    def events(self, task_id: str) -> list[tuple[str, dict[str, Any], Any]]:
        with self.sessions()() as session:
            return [(e.type, e.data, e.created_at) for e in store.list_events(session, task_id)]

    def wait_final(self, task_id: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if TaskState(task.state).is_final:
                return task
            time.sleep(0.3)
        raise AssertionError(f"task {task_id} still {self.task(task_id).state}; logs: {self.logs()}")

    def wait_state(self, task_id: str, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.task(task_id).state != state:
            assert time.monotonic() < deadline, f"task never reached {state}"
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.tmp.glob("worker-*.log")))


@contextmanager
def _database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database of the test's own: a SQLite file, or a fresh PostgreSQL database."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'overnight.db'}"
        migrate(make_engine(url))
        yield url
        return
    name = f"reliability_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    try:
        migrate(engine)
        yield url
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, scripted_model: ScriptedModelServer,
    docker_client: docker.DockerClient,
) -> Iterator[Cluster]:  # fmt: skip
    with _database(request.param, tmp_path) as database:
        yield from _cluster(database, tmp_path, scripted_model)


def _cluster(database: str, tmp_path: Path, scripted_model: ScriptedModelServer) -> Iterator[Cluster]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
        "OVERNIGHT_DATA_DIR": str(tmp_path / "data"),
        "OVERNIGHT_DATABASE_URL": database,
        "OVERNIGHT_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "OVERNIGHT_QUEUE": "reliability",
        "OVERNIGHT_ALLOW_LOCAL_REPOS": "true",
        "OVERNIGHT_LLM_BASE_URL": scripted_model.base_url,
        "OVERNIGHT_LLM_RETRIES": "0",
        "OVERNIGHT_SANDBOX_IMAGE": SANDBOX_IMAGE,
        "OVERNIGHT_SANDBOX_BACKEND": "docker",
        "OVERNIGHT_WORKER_HEARTBEAT_SECONDS": "0.5",
        "OVERNIGHT_WORKER_STALE_SECONDS": "3",
        "OVERNIGHT_RECONCILE_SECONDS": "1",
        "OVERNIGHT_REAP_SECONDS": "1",
        "OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER": "1",
    }
    cluster = Cluster(
        tmp=tmp_path, env=env, redis_port=port, queue=TaskQueue(env["OVERNIGHT_BROKER_URL"], queue="reliability")
    )
    cluster.start_redis()
    try:
        yield cluster
    finally:
        for worker in cluster.workers:
            if worker.poll() is None:
                cluster.kill_worker(worker)
        if cluster.redis is not None and cluster.redis.poll() is None:
            cluster.stop_redis()


def test_a_worker_killed_mid_task_does_not_lose_the_task(
    cluster: Cluster, scripted_model: ScriptedModelServer, buggy_repo: Path, docker_client: docker.DockerClient
) -> None:
    scripted_model.state.extend([bash("sleep 600"), EDIT, FINISH])
    first = cluster.start_worker()
    task_id = cluster.submit(buggy_repo)
    cluster.wait_state(task_id, "running")
    while len(scripted_model.state.requests) < 1:
        time.sleep(0.1)
    time.sleep(1)  # the sleep 600 is running in the sandbox
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
        store.request_cancel(session, task_id)
    started = time.monotonic()
    task = cluster.wait_final(task_id, timeout=30)
    assert task.state == "cancelled" and time.monotonic() - started < 10
    with cluster.sessions()() as session:
        patch = store.get_patch(session, task_id)
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
