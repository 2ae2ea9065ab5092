"""Tokens expire and can be revoked (`overnight token list|revoke` on the server), their last use is recorded
cheaply, and one user's unfinished tasks are capped: against the API under uvicorn and the real CLI."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from store.engine import make_engine, make_sessionmaker
from store.models import Token
from store.users import hash_token
from tests.api.conftest import ServedAPI

REPO = "https://github.com/acme/widgets.git"


def server_cli(served_api: ServedAPI, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["overnight", *args], env=served_api.env, capture_output=True, text=True, timeout=120)


def listed(served_api: ServedAPI, user: str) -> list[dict[str, Any]]:
    result = server_cli(served_api, "token", "list", "--user", user, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def set_last_used(served_api: ServedAPI, token: str, moment: datetime) -> None:
    engine = make_engine(served_api.env["OVERNIGHT_DATABASE_URL"])
    with make_sessionmaker(engine).begin() as session:
        session.execute(update(Token).where(Token.token_hash == hash_token(token)).values(last_used_at=moment))
    engine.dispose()


def test_an_expired_token_is_401_and_says_so(served_api: ServedAPI) -> None:
    token = served_api.token("eve", expires_at=datetime.now(UTC) - timedelta(minutes=1))
    response = served_api.client(token).get("/v1/tasks")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert "expired on" in response.json()["error"]["message"]
    assert listed(served_api, "eve")[0]["state"] == "expired"


def test_a_revoked_token_is_refused_from_the_next_request_on(served_api: ServedAPI) -> None:
    created = server_cli(served_api, "token", "create", "--user", "rita", "--json")
    assert created.returncode == 0, created.stderr
    token, keep = json.loads(created.stdout)["token"], served_api.token("rita")
    client = served_api.client(token)
    assert client.get("/v1/tasks").status_code == 200
    [first, second] = listed(served_api, "rita")
    revoked = server_cli(served_api, "token", "revoke", str(first["id"]), "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout) == {"revoked": [first["id"]], "unknown": []}
    response = client.get("/v1/tasks")
    assert response.status_code == 401 and "was revoked on" in response.json()["error"]["message"]
    assert served_api.client(keep).get("/v1/tasks").status_code == 200, "only the named token goes"
    assert [row["state"] for row in listed(served_api, "rita")] == ["revoked", "active"]
    everything = server_cli(served_api, "token", "revoke", "--user", "rita", "--json")
    assert json.loads(everything.stdout)["revoked"] == [second["id"]]
    assert served_api.client(keep).get("/v1/tasks").status_code == 401
    unknown = server_cli(served_api, "token", "revoke", "999999")
    assert unknown.returncode == 2 and "no token with id 999999" in unknown.stderr


def test_token_create_expires_after_the_ttl_and_list_shows_the_last_use_to_the_minute(
    served_api: ServedAPI,
) -> None:
    default = json.loads(server_cli(served_api, "token", "create", "--user", "lou", "--json").stdout)
    ttl = datetime.fromisoformat(default["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89, hours=23) < ttl <= timedelta(days=90)  # OVERNIGHT_TOKEN_TTL_DAYS's default
    never = json.loads(server_cli(served_api, "token", "create", "--user", "lou", "--expires-in-days", "0",
                                  "--json").stdout)  # fmt: skip
    assert never["expires_at"] is None
    token = default["token"]
    assert [row["last_used_at"] for row in listed(served_api, "lou")] == [None, None]
    client = served_api.client(token)
    assert client.get("/v1/tasks").status_code == 200
    first_use = listed(served_api, "lou")[0]["last_used_at"]
    assert first_use is not None
    assert abs(datetime.fromisoformat(first_use) - datetime.now(UTC)) < timedelta(minutes=1)
    assert client.get("/v1/tasks").status_code == 200
    assert listed(served_api, "lou")[0]["last_used_at"] == first_use, "not written again within the minute"
    set_last_used(served_api, token, datetime.now(UTC) - timedelta(minutes=2))
    assert client.get("/v1/tasks").status_code == 200
    assert datetime.fromisoformat(listed(served_api, "lou")[0]["last_used_at"]) > datetime.fromisoformat(first_use)
    table = server_cli(served_api, "token", "list", "--user", "lou")
    assert table.returncode == 0 and "lou" in table.stdout and "never" in table.stdout


def test_a_user_at_the_cap_of_unfinished_tasks_gets_429_until_one_ends(served_api: ServedAPI) -> None:
    cap = served_api.limit("OVERNIGHT_MAX_QUEUED_TASKS_PER_USER")
    quinn = served_api.client(served_api.token("quinn"))
    ids = []
    for n in range(cap):
        response = quinn.post("/v1/tasks", json={"repo": REPO, "instruction": f"task {n}"},
                              headers={"Idempotency-Key": f"k{n}"})  # fmt: skip
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    refused = quinn.post("/v1/tasks", json={"repo": REPO, "instruction": "one too many"})
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "too_many_tasks" and f"{cap} unfinished tasks" in error["message"]
    repeat = quinn.post("/v1/tasks", json={"repo": REPO, "instruction": "task 0"}, headers={"Idempotency-Key": "k0"})
    assert repeat.status_code == 200 and repeat.json()["id"] == ids[0], "a repeated create is not a new task"
    other = served_api.client(served_api.token("ruth"))
    assert other.post("/v1/tasks", json={"repo": REPO, "instruction": "mine"}).status_code == 201
    assert quinn.post(f"/v1/tasks/{ids[0]}/cancel").json()["state"] == "cancelled"
    again = quinn.post("/v1/tasks", json={"repo": REPO, "instruction": "room again"})
    assert again.status_code == 201, again.text
    retry = quinn.post(f"/v1/tasks/{ids[0]}/retry")
    assert retry.status_code == 429 and retry.json()["error"]["code"] == "too_many_tasks"
