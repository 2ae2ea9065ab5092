"""`overnight env` (the client, over HTTP) and `overnight secrets rotate` (the server) against the API under
uvicorn: a secret goes in through standard input and never comes out; a rotated key lets the old one go."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import store.users
from bench.flood import api_env, serve_api
from overnight.secrets import SecretBox, new_key
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import EnvironmentSecret
from tests.conftest import REDIS_URL

PATTERN = "https://github.com/acme/*"
VALUE = "tok_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("env-cli")
    env = api_env(tmp, extra={"OVERNIGHT_SECRETS_KEY": new_key(), "OVERNIGHT_QUEUE": f"t-{secrets.token_hex(4)}"})
    engine = make_engine(env["OVERNIGHT_DATABASE_URL"])
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        env["root"] = store.users.create_token(session, "root", admin=True)
        env["alice"] = store.users.create_token(session, "alice")
    engine.dispose()
    try:
        with serve_api(env, log=tmp / "api.log") as (port, _pid):
            yield env | {"server": f"http://127.0.0.1:{port}", "log": str(tmp / "api.log"), "tmp": str(tmp)}
    finally:
        redis.Redis.from_url(REDIS_URL).delete(env["OVERNIGHT_QUEUE"])


def client(served: dict[str, str], user: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
    env |= {"OVERNIGHT_SERVER": served["server"], "OVERNIGHT_TOKEN": served[user],
            "OVERNIGHT_CONFIG_DIR": str(Path(served["tmp"]) / "client")}  # fmt: skip
    return subprocess.run(["overnight", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def test_env_set_show_secret_set_and_rm_through_the_cli(served: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text("npm ci\n")
    agent = ("--agent-network", "allowlist", "--agent-allow", "registry.npmjs.org", "--agent-read-only")
    made = client(served, "root", "env", "set", PATTERN, "--owner", "alice", "--var", "CI=1", "--script", str(script),
                  *agent, "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["agent_network"] == {
        "mode": "allowlist", "domains": ["registry.npmjs.org"], "read_only": True
    }  # fmt: skip
    denied = client(served, "alice", "env", "set", PATTERN, "--owner", "alice")
    assert denied.returncode == 3 and "only admins name" in denied.stderr
    added = client(served, "alice", "env", "secret", "set", PATTERN, "NPM_TOKEN", stdin=VALUE + "\n")
    assert added.returncode == 0, added.stderr
    shown = client(served, "alice", "env", "show", PATTERN)
    listed = client(served, "alice", "env", "list", "--json")
    assert shown.returncode == 0 and "NPM_TOKEN" in shown.stdout and "CI=1" in shown.stdout
    assert "allowlist (GET/HEAD only): registry.npmjs.org" in shown.stdout and "npm ci" in shown.stdout
    assert [env["pattern"] for env in json.loads(listed.stdout)] == [PATTERN]
    for output in (added.stdout + added.stderr, shown.stdout, listed.stdout, Path(served["log"]).read_text()):
        assert VALUE not in output
    engine = make_engine(served["OVERNIGHT_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        [row] = session.query(EnvironmentSecret).all()
        opened = SecretBox.from_config(served["OVERNIGHT_SECRETS_KEY"], None).open(
            row.ciphertext, pattern=PATTERN, name="NPM_TOKEN"
        )
        assert opened == VALUE, "one trailing newline of standard input is dropped, nothing else"
    engine.dispose()
    removed = client(served, "alice", "env", "secret", "rm", PATTERN, "NPM_TOKEN")
    again = client(served, "alice", "env", "secret", "rm", PATTERN, "NPM_TOKEN")
    assert removed.returncode == 0 and again.returncode == 2 and "has no secret NPM_TOKEN" in again.stderr
    missing = client(served, "alice", "env", "show", "https://github.com/other/*")
    assert missing.returncode == 2 and "no environment for" in missing.stderr


def test_rotate_reseals_every_secret_so_the_old_key_can_go(served: dict[str, str]) -> None:
    made = client(served, "root", "env", "set", "https://github.com/rotate/*", "--json")
    assert made.returncode == 0, made.stderr
    assert (
        client(
            served, "root", "env", "secret", "set", "https://github.com/rotate/*", "KEYED", stdin="value-one"
        ).returncode
        == 0
    )
    old, new = served["OVERNIGHT_SECRETS_KEY"], new_key()
    server_env = {key: value for key, value in served.items() if key.startswith("OVERNIGHT_") or key == "PATH"}
    refused = subprocess.run(["overnight", "secrets", "rotate"], env=server_env | {"OVERNIGHT_SECRETS_KEY": new},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "nothing was changed" in refused.stderr
    rotated = subprocess.run(["overnight", "secrets", "rotate", "--json"], capture_output=True, text=True, timeout=60,
                             env=server_env | {"OVERNIGHT_SECRETS_KEY": f"{new},{old}"})  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["rotated"] >= 1
    engine = make_engine(served["OVERNIGHT_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        row = session.get(EnvironmentSecret, (json.loads(made.stdout)["id"], "KEYED"))
        assert row is not None
        assert (
            SecretBox.from_config(new, None).open(row.ciphertext, pattern="https://github.com/rotate/*", name="KEYED")
            == "value-one"
        )
    engine.dispose()
