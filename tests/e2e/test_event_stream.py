"""`overnight logs -f`'s client against a real API that restarts mid-stream: it reconnects with
Last-Event-ID and ends with every event once, in order — and only when the task has really ended."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr

import store.events
import store.tasks
import store.users
from api.app import create_app
from overnight.cli.client import APIClient
from overnight.cli.settings import ClientSettings
from overnight.settings import APISettings, Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskEvent as TaskEventRow
from store.models import TaskState
from tests.conftest import REDIS_URL


class _API:
    def __init__(self, settings: Settings, port: int) -> None:
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=1)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _API:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def test_following_events_survives_an_api_restart_and_ends_only_with_the_task(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=REDIS_URL, queue="test-sse-restart")
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        token = store.users.create_token(session, "alice")
        user = store.users.user_for_token(session, token)
        task = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="x",
                                 user_id=user.id if user else None)  # fmt: skip
        task_id = task.id
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = APIClient(ClientSettings(server=f"http://127.0.0.1:{port}", token=SecretStr(token)))
    seen: list[dict] = []
    follower = threading.Thread(target=lambda: seen.extend(client.follow_events(task_id)), daemon=True)

    def append(kind: str, n: int) -> None:
        # A type no version writes, stored as a row: it reaches the follower as stored.
        with sessions.begin() as session:
            seq = len(store.events.list_events(session, task_id)) + 1
            session.add(TaskEventRow(task_id=task_id, seq=seq, type=kind, data={"n": n}))

    with _API(settings, port):
        follower.start()
        for n in range(3):
            append("note", n)
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:  # the queued state event and three notes
            time.sleep(0.05)
    # The API is gone; events keep being written; a new API process comes up on the same address.
    for n in range(3, 6):
        append("note", n)
    time.sleep(1)
    assert follower.is_alive()  # still following: the task has not ended
    with _API(settings, port):
        with sessions.begin() as session:
            store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.cancelled,
                             reason="cancelled by user")  # fmt: skip
        follower.join(timeout=30)
    assert not follower.is_alive()
    assert [e["seq"] for e in seen] == list(range(1, 9))  # queued, six notes, cancelled: each once, in order
    assert [e["data"].get("n") for e in seen if e["type"] == "note"] == list(range(6))
    assert seen[-1]["data"]["state"] == "cancelled"


def test_a_quiet_task_gets_keepalives_at_the_set_interval_and_the_follower_skips_them(tmp_path: Path) -> None:
    api = APISettings(sse_ping_seconds=0.2)
    settings = Settings(data_dir=tmp_path, broker_url=REDIS_URL, queue="test-sse-ping", api=api)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        token = store.users.create_token(session, "alice")
        user = store.users.user_for_token(session, token)
        task_id = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="x",
                                    user_id=user.id if user else None).id  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = APIClient(ClientSettings(server=f"http://127.0.0.1:{port}", token=SecretStr(token)))
    seen: list[dict] = []
    follower = threading.Thread(target=lambda: seen.extend(client.follow_events(task_id)), daemon=True)
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}
    with _API(settings, port):
        follower.start()
        keepalives = 0
        url = f"http://127.0.0.1:{port}/v1/tasks/{task_id}/events"
        with httpx.stream("GET", url, headers=headers, timeout=30) as raw:  # the task stays queued: silent
            for line in raw.iter_lines():
                keepalives += line.startswith(": ping")
                if keepalives == 5:
                    break
        assert follower.is_alive()  # the follower has had the same keep-alives and is still following
        with sessions.begin() as session:
            store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.cancelled,
                             reason="cancelled by user")  # fmt: skip
        follower.join(timeout=30)
    assert not follower.is_alive()
    assert [(e["seq"], e["data"]["state"]) for e in seen] == [(1, "queued"), (2, "cancelled")]
