"""The environment endpoints against a real database: who manages which environment, what a set changes,
secrets that are write-only and sealed at rest, validation in the API's one error shape."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import store.users
from api.app import create_app
from overnight.queue import TaskQueue
from overnight.secrets import SecretBox, new_key
from overnight.settings import SecretsSettings, Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import EnvironmentSecret

PATTERN = "https://github.com/acme/*"
SECRET_VALUE = "npm_" + secrets.token_hex(16)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    settings = Settings(
        data_dir=tmp_path, broker_url=redis_url, queue=f"test-env-{secrets.token_hex(4)}",
        secrets=SecretsSettings(key=SecretStr(new_key())),
    )  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    return settings


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        return {
            name: store.users.create_token(session, name, admin=name == "root") for name in ("alice", "bob", "root")
        }


@pytest.fixture
def api(settings: Settings, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, queue=TaskQueue(settings.broker_url or "", queue=settings.queue))) as client:
        yield client


def as_(tokens: dict[str, str], user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[user]}"}


def set_env(api: TestClient, tokens: dict[str, str], user: str, **body: Any) -> Any:
    return api.post("/v1/environments", json={"pattern": PATTERN, **body}, headers=as_(tokens, user))


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    code: str = response.json()["error"]["code"]
    return code


def test_admins_create_environments_and_the_owners_they_name_manage_them(
    api: TestClient, tokens: dict[str, str]
) -> None:
    assert error(set_env(api, tokens, "alice", variables={"CI": "1"}), 403) == "environment_forbidden"
    created = set_env(api, tokens, "root", owners=["alice", "alice"], variables={"CI": "1"})
    assert created.status_code == 201, created.text
    env = created.json()
    assert env["owners"] == ["alice"] and env["variables"] == {"CI": "1"}
    assert env["setup_network"] == {"mode": "full"} and env["agent_network"] == {"mode": "none"}
    assert api.get("/v1/environments", headers=as_(tokens, "bob")).json() == {"environments": []}
    assert error(api.get(f"/v1/environments/{env['id']}", headers=as_(tokens, "bob")), 404) == "environment_not_found"
    assert error(set_env(api, tokens, "bob", variables={"X": "1"}), 403) == "environment_forbidden"
    allowlist = {"mode": "allowlist", "domains": ["Registry.NPMjs.org", "*.example.com"]}
    changed = set_env(api, tokens, "alice", variables={"CI": None, "NODE_ENV": "test"}, setup_script="npm ci\n",
                      agent_network=allowlist)  # fmt: skip
    assert changed.status_code == 200, changed.text
    assert changed.json()["variables"] == {"NODE_ENV": "test"} and changed.json()["setup_script"] == "npm ci\n"
    assert changed.json()["agent_network"] == {
        "mode": "allowlist", "domains": ["registry.npmjs.org", "*.example.com"], "read_only": False
    }  # fmt: skip
    assert error(set_env(api, tokens, "alice", owners=["alice", "bob"]), 403) == "environment_forbidden"
    assert set_env(api, tokens, "alice", setup_script=None).json()["setup_script"] is None
    listed = api.get("/v1/environments", headers=as_(tokens, "alice")).json()["environments"]
    assert [item["pattern"] for item in listed] == [PATTERN]
    same = api.get("/v1/environments", params={"pattern": "HTTPS://github.com/acme/*/"}, headers=as_(tokens, "alice"))
    assert [item["id"] for item in same.json()["environments"]] == [env["id"]], "the pattern is matched as spelled"


def test_secrets_are_write_only_and_sealed_at_rest(
    api: TestClient, tokens: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    env = set_env(api, tokens, "root", owners=["alice"]).json()
    url = f"/v1/environments/{env['id']}/secrets/NPM_TOKEN"
    first = api.put(url, json={"value": SECRET_VALUE}, headers=as_(tokens, "alice"))
    assert first.status_code == 201 and set(first.json()) == {"name", "updated_at"}
    assert api.put(url, json={"value": SECRET_VALUE}, headers=as_(tokens, "alice")).status_code == 200
    assert error(api.put(url, json={"value": "x" * 12}, headers=as_(tokens, "bob")), 404) == "environment_not_found"
    answers = [
        api.get(f"/v1/environments/{env['id']}", headers=as_(tokens, "alice")),
        api.get("/v1/environments", headers=as_(tokens, "root")),
        set_env(api, tokens, "alice", variables={"A": "b"}),
    ]
    for answer in answers:
        assert answer.status_code == 200 and SECRET_VALUE not in answer.text
    assert [secret["name"] for secret in answers[0].json()["secrets"]] == ["NPM_TOKEN"]
    database = (tmp_path / "overnight.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("*.db-wal"))
    assert SECRET_VALUE.encode() not in database, "the database holds the value in clear"
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        row = session.get(EnvironmentSecret, (env["id"], "NPM_TOKEN"))
        assert row is not None and len(row.version) == 32
        box = settings.secrets.box()
        assert box.open(row.ciphertext, pattern=PATTERN, name="NPM_TOKEN") == SECRET_VALUE
    assert api.delete(url, headers=as_(tokens, "alice")).status_code == 204
    assert error(api.delete(url, headers=as_(tokens, "alice")), 404) == "secret_not_found"


def test_a_new_value_gets_a_new_version_and_a_ciphertext_opens_only_where_it_was_sealed(
    api: TestClient, tokens: dict[str, str], settings: Settings
) -> None:
    env = set_env(api, tokens, "root").json()
    url = f"/v1/environments/{env['id']}/secrets/TOKEN"
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    versions = []
    for value in ("value-one", "value-two"):
        assert api.put(url, json={"value": value}, headers=as_(tokens, "root")).status_code in (200, 201)
        with sessions() as session:
            row = session.get(EnvironmentSecret, (env["id"], "TOKEN"))
            assert row is not None
            versions.append(row.version)
            ciphertext = row.ciphertext
    assert versions[0] != versions[1]
    box = settings.secrets.box()
    with pytest.raises(Exception, match="another environment or name"):
        box.open(ciphertext, pattern=PATTERN, name="OTHER")
    with pytest.raises(Exception, match="does not open"):
        SecretBox.from_config(new_key(), None).open(ciphertext, pattern=PATTERN, name="TOKEN")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"pattern": "https://*.example.com/x"}, "invalid_pattern"),
        ({"pattern": "ftp://example.com/x"}, "invalid_pattern"),
        ({"pattern": PATTERN, "variables": {"PATH": "/evil"}}, "validation_error"),
        ({"pattern": PATTERN, "variables": {"OVERNIGHT_X": "1"}}, "validation_error"),
        ({"pattern": PATTERN, "variables": {"1BAD": "1"}}, "validation_error"),
        ({"pattern": PATTERN, "variables": {"A": "x\u0000y"}}, "validation_error"),
        ({"pattern": PATTERN, "setup_script": "   "}, "validation_error"),
        ({"pattern": PATTERN, "setup_script": "x" * (256 * 1024 + 1)}, "validation_error"),
        ({"pattern": PATTERN, "agent_network": {"mode": "allowlist", "domains": []}}, "validation_error"),
        ({"pattern": PATTERN, "agent_network": {"mode": "allowlist", "domains": ["a b.com"]}}, "validation_error"),
        ({"pattern": PATTERN, "agent_network": {"mode": "proxy"}}, "validation_error"),
        ({"pattern": PATTERN, "surprise": 1}, "validation_error"),
    ],
)
def test_invalid_environments_are_refused_with_the_error_shape(
    api: TestClient, tokens: dict[str, str], body: dict[str, Any], code: str
) -> None:
    response = api.post("/v1/environments", json=body, headers=as_(tokens, "root"))
    assert error(response, 422) == code
    assert api.get("/v1/environments", headers=as_(tokens, "root")).json() == {"environments": []}


def test_a_name_is_a_variable_or_a_secret_never_both_and_values_are_never_quoted(
    api: TestClient, tokens: dict[str, str]
) -> None:
    env = set_env(api, tokens, "root", variables={"SHARED": "1"}).json()
    base = f"/v1/environments/{env['id']}/secrets"
    assert error(api.put(f"{base}/SHARED", json={"value": "v" * 12}, headers=as_(tokens, "root")), 422) == "name_in_use"
    assert api.put(f"{base}/ONLY_SECRET", json={"value": "v" * 12}, headers=as_(tokens, "root")).status_code == 201
    assert error(set_env(api, tokens, "root", variables={"ONLY_SECRET": "1"}), 422) == "name_in_use"
    assert error(api.put(f"{base}/HOME", json={"value": "v" * 12}, headers=as_(tokens, "root")), 422) == "invalid_name"
    short = api.put(f"{base}/SHORT", json={"value": "1234567"}, headers=as_(tokens, "root"))
    assert error(short, 422) == "validation_error" and "at least 8 characters" in short.text
    hidden = "x" * 40_000 + "\u0000" + SECRET_VALUE
    refused = api.put(f"{base}/LONG", json={"value": hidden}, headers=as_(tokens, "root"))
    assert error(refused, 422) == "validation_error" and SECRET_VALUE not in refused.text
    assert error(api.get("/v1/environments", params={"surprise": 1}, headers=as_(tokens, "root")), 422)
    assert error(api.get("/v1/environments"), 401) == "unauthorized"


def test_without_a_server_key_a_secret_is_refused_and_nothing_is_stored(
    tmp_path: Path, redis_url: str, tokens: dict[str, str], settings: Settings
) -> None:
    keyless = settings.model_copy(update={"secrets": SecretsSettings()})
    with TestClient(create_app(keyless, queue=TaskQueue(redis_url, queue=settings.queue))) as api:
        env = set_env(api, tokens, "root").json()
        response = api.put(
            f"/v1/environments/{env['id']}/secrets/TOKEN", json={"value": "v" * 12}, headers=as_(tokens, "root")
        )
        assert (
            error(response, 503) == "secrets_unavailable"
            and "OVERNIGHT_SECRETS_KEY" in response.json()["error"]["message"]
        )
        assert api.get(f"/v1/environments/{env['id']}", headers=as_(tokens, "root")).json()["secrets"] == []
