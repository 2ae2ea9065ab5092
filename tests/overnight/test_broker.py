"""Which broker `overnight up` and the workers use when none is configured."""

from __future__ import annotations

import socket
from pathlib import Path

from overnight.broker import redact, resolve_broker_url
from overnight.queue import TaskQueue
from overnight.settings import Settings
from tests.conftest import REDIS_URL


def test_local_redis_when_it_answers_else_the_sqlite_transport_which_really_queues(
    tmp_path: Path, redis_url: str
) -> None:
    settings = Settings(data_dir=tmp_path)
    assert resolve_broker_url(settings, local_redis=REDIS_URL) == (REDIS_URL, f"broker: Redis at {REDIS_URL}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        silent = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"  # nothing listens there
    url, said = resolve_broker_url(settings, local_redis=silent)
    assert url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert said.startswith(f"broker: no Redis answered at {silent}; using Celery's SQLAlchemy transport")
    queue = TaskQueue(url, queue="fallback")
    queue.enqueue("0123456789abcdef")
    assert queue.depth() == 1 and (tmp_path / "broker.sqlite").exists()


def test_a_configured_broker_wins_and_its_password_stays_out_of_the_log() -> None:
    url, said = resolve_broker_url(Settings(broker_url="redis://:hunter2@redis.internal:6379/1"))
    assert url == "redis://:hunter2@redis.internal:6379/1"
    assert "hunter2" not in said and said == "broker: redis://:***@redis.internal:6379/1 (OVERNIGHT_BROKER_URL)"
    assert redact("sqla+sqlite:////tmp/b.sqlite") == "sqla+sqlite:////tmp/b.sqlite"
