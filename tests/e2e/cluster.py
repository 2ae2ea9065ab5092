"""Real worker processes for the reliability suites: a Redis server of the test's own (so it can be
restarted), the scripted model, and a database of the test's own — a SQLite file, a PostgreSQL database, or
a whole PostgreSQL server (``own_postgres``: so that it can be stopped without disturbing anyone else's)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

import store.attempts
import store.events
import store.tasks
import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from overnight.queue import TaskQueue
from sandbox.reaper import reap_folders
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState
from tests.conftest import POSTGRES_URL, SANDBOX_IMAGE
from tests.e2e.conftest import free_port

ROOT = Path(__file__).parents[2]


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

    def pause_worker(self, worker: subprocess.Popen[bytes], task_id: str) -> None:
        """SIGSTOP the worker's processes (a long pause, as a swapping or suspended machine makes) at a moment
        they hold no lock on the task's row: one stopped inside a transaction would block every other writer
        of the row, which is not what fencing is about."""
        for _ in range(50):
            os.killpg(worker.pid, signal.SIGSTOP)
            if self._row_free(task_id):
                return
            os.killpg(worker.pid, signal.SIGCONT)
            time.sleep(0.1)
        raise AssertionError("the worker always held a lock on the task's row")

    def resume_worker(self, worker: subprocess.Popen[bytes]) -> None:
        os.killpg(worker.pid, signal.SIGCONT)

    def _row_free(self, task_id: str) -> bool:
        url = self.env["OVERNIGHT_DATABASE_URL"]
        wait = {"timeout": 1} if url.startswith("sqlite") else {"options": "-c lock_timeout=1000"}
        engine = create_engine(url, connect_args=wait)
        try:
            with engine.connect() as connection, connection.begin() as transaction:
                connection.execute(text("UPDATE tasks SET updated_at = updated_at WHERE id = :id"), {"id": task_id})
                transaction.rollback()
            return True
        except OperationalError:
            return False
        finally:
            engine.dispose()

    def folder(self, name: str) -> list[Path]:
        """What the workers keep under the data folder's ``name`` (workspaces, mirrors)."""
        return sorted((self.tmp / "data" / name).glob("*"))

    def sessions(self) -> Any:
        return make_sessionmaker(make_engine(self.env["OVERNIGHT_DATABASE_URL"]))

    def submit(self, repo: Path, user: str = "alice") -> str:
        with self.sessions().begin() as session:
            token = store.users.create_token(session, user)
            user_id = store.users.user_for_token(session, token).id  # type: ignore[union-attr]
            task_id = store.tasks.create_task(session, repo=str(repo), ref=None, instruction="fix", user_id=user_id).id
        self.queue.enqueue(task_id)
        with self.sessions().begin() as session:
            store.attempts.mark_enqueued(session, task_id)
        return task_id

    def task(self, task_id: str) -> Any:
        with self.sessions()() as session:
            return store.tasks.get_task(session, task_id)

    def events(self, task_id: str) -> list[tuple[str, dict[str, Any], Any]]:
        with self.sessions()() as session:
            return [(e.type, e.data, e.created_at) for e in store.events.list_events(session, task_id)]

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
def database(kind: str, tmp_path: Path) -> Iterator[str]:
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


def run_cluster(database: str, tmp_path: Path, scripted_model: ScriptedModelServer) -> Iterator[Cluster]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
        "OVERNIGHT_DATA_DIR": str(tmp_path / "data"),
        "OVERNIGHT_DATABASE_URL": database,
        "OVERNIGHT_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "OVERNIGHT_QUEUE": "reliability",
        "OVERNIGHT_ALLOW_LOCAL_REPOS": "true",
        "OVERNIGHT_LOCAL_REPO_ROOTS": f'["{tmp_path}"]',  # where the tests' repositories are
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
        # No live worker is left to reap what the killed ones held (workspace disks stay mounted otherwise).
        data = tmp_path / "data"
        reap_folders([data / "workspaces", data / "control", data / "environments", *(data / "environments").glob("*")])


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
"""initdb and pg_ctl of the newest PostgreSQL installed (Debian's layout)."""


@dataclass(kw_only=True)
class PostgresServer:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres("pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"),
                     "-w", "start")  # fmt: skip

    def stop(self) -> None:
        _as_postgres("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


def _as_postgres(program: str, *args: str) -> None:
    assert PG_BIN is not None
    runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # PostgreSQL refuses to run as root
    subprocess.run([*runuser, str(PG_BIN / program), *args], check=True, capture_output=True, timeout=120)


@contextmanager
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, in a temporary folder on a free port, migrated: a test may stop
    it without touching the machine's shared server (other tests use that one at the same time)."""
    if PG_BIN is None:
        raise RuntimeError("PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin)")
    folder = Path(tempfile.mkdtemp(prefix="overnight-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    server = PostgresServer(folder=folder, port=free_port())
    try:
        _as_postgres("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        server.start()
        engine = make_engine(server.url)
        migrate(engine)
        engine.dispose()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            _as_postgres("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
