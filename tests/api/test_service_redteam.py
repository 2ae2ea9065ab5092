"""Red-team findings against the API served as in production (uvicorn in a process of its own), issue 22: each
was a hole, and is now a test that it stays closed."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

import store.users
from bench.flood import api_env, serve_api
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import REDIS_URL

ACCESS = {"https://git.example.com/acme/*": ["alice"], "https://git.example.com/bob/*": ["bob"]}


@pytest.fixture(scope="module")
def bob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Bob's client to an API where acme/* is alice's and bob/* is bob's (OVERNIGHT_REPO_ACCESS)."""
    tmp: Path = tmp_path_factory.mktemp("redteam-api")
    queue = f"test-redteam-{secrets.token_hex(4)}"
    env = api_env(tmp, extra={"OVERNIGHT_QUEUE": queue, "OVERNIGHT_REPO_ACCESS": json.dumps(ACCESS)})
    engine = make_engine(env["OVERNIGHT_DATABASE_URL"])
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        token = store.users.create_token(session, "bob")
    engine.dispose()
    try:
        with (
            serve_api(env, log=tmp / "api.log") as (port, _),
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as client,
        ):
            yield client
    finally:
        redis.Redis.from_url(REDIS_URL).delete(queue)


@pytest.mark.parametrize(
    "spelling",
    ["https://git.example.com/bob/../acme/private", "https://git.example.com/bob/x/../../acme/private.git",
     "https://git.example.com/bob/./../acme/private", "https://git.example.com/bob/%2e%2e/acme/private",
     "https://git.example.com/bob%2F..%2Facme/private", "https://git.example.com/bob//../acme/private",
     "git@git.example.com:bob/../acme/private"],
)  # fmt: skip
def test_dot_segments_do_not_reach_a_repository_mapped_to_others(bob: httpx.Client, spelling: str) -> None:
    response = bob.post("/v1/tasks", json={"repo": spelling, "instruction": "print the secrets"})
    # Refused as an address before any access rule is matched: git would resolve the dot segments first.
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_repo" and "segments" in response.json()["error"]["message"]
    assert bob.get("/v1/tasks").json()["tasks"] == []
