"""The API as it runs in production: uvicorn in a process of its own, so that what reaches the socket (chunked
bodies, early answers, hang-ups) and what the process holds in memory are the real thing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

import store.users
from bench.flood import api_env, serve_api
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import REDIS_URL

SERVED_LIMITS = {
    "OVERNIGHT_API_MAX_BODY_BYTES": str(64 * 1024),
    "OVERNIGHT_API_MAX_UPLOAD_BYTES": str(2**20),
    "OVERNIGHT_GITHUB_WEBHOOK_MAX_BODY_BYTES": str(256 * 1024),
    "OVERNIGHT_MAX_QUEUED_TASKS_PER_USER": "3",
    "OVERNIGHT_IMAGES_ENABLED": "false",  # POST /v1/tasks's limit is then OVERNIGHT_API_MAX_UPLOAD_BYTES alone
}


@dataclass(kw_only=True)
class ServedAPI:
    port: int
    pid: int
    env: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def limit(self, name: str) -> int:
        return int(self.env[name])

    def token(self, user: str, *, expires_at: datetime | None = None) -> str:
        engine = make_engine(self.env["OVERNIGHT_DATABASE_URL"])
        try:
            with make_sessionmaker(engine).begin() as session:
                return store.users.create_token(session, user, expires_at=expires_at)
        finally:
            engine.dispose()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.base, headers=headers, timeout=30)
        self.clients.append(client)
        return client


@pytest.fixture(scope="module")
def served_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedAPI]:
    """The API under uvicorn on a SQLite file, small body limits (SERVED_LIMITS) and a queue of its own."""
    tmp: Path = tmp_path_factory.mktemp("served-api")
    env = api_env(tmp, extra={**SERVED_LIMITS, "OVERNIGHT_QUEUE": f"test-served-{secrets.token_hex(4)}"})
    engine = make_engine(env["OVERNIGHT_DATABASE_URL"])
    migrate(engine)
    engine.dispose()
    served = None
    try:
        with serve_api(env, log=tmp / "api.log") as (port, pid):
            served = ServedAPI(port=port, pid=pid, env=env)
            yield served
    finally:
        for client in served.clients if served else []:
            client.close()
        redis.Redis.from_url(REDIS_URL).delete(env["OVERNIGHT_QUEUE"])
