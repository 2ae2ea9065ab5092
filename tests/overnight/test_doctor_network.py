"""`overnight doctor`'s issue-18 checks against a real database, the real squid and real keys: the proxy is
installed, every stored policy parses (a broken row is named), and the key opens every stored secret (a wrong
key names the secret, never its value); without a database only the proxy is checked."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from pydantic import SecretStr

import store.environments
from overnight.admin.doctor import Check
from overnight.admin.doctor_network import _proxy, network_checks
from overnight.secrets import SecretBox, new_key
from overnight.settings import SecretsSettings, Settings
from store.engine import make_engine, make_sessionmaker, migrate

PATTERN = "https://github.com/acme/*"
VALUE = "tok_" + secrets.token_hex(16)
KEY = new_key()


def _settings(tmp_path: Path, key: str | None = KEY) -> Settings:
    database = f"sqlite:///{tmp_path / 'doctor.db'}"
    migrate(make_engine(database))
    return Settings(data_dir=tmp_path / "data", database_url=database,
                    secrets=SecretsSettings(key=SecretStr(key) if key else None))  # fmt: skip


def _store(settings: Settings, *, agent_network: dict[str, object], secret_key: str | None = KEY) -> None:
    """An environment with an agent policy as stored (whatever its shape) and, sealed under ``secret_key``, a
    secret."""
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        environment = store.environments.create_environment(session, PATTERN)
        environment.agent_network = agent_network
        environment.setup_network = {"mode": "none"}
        if secret_key is not None:
            sealed = SecretBox.from_config(secret_key, None).seal(VALUE, pattern=PATTERN, name="NPM_TOKEN")
            store.environments.set_secret(session, environment, "NPM_TOKEN", sealed)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_a_healthy_server_passes_every_check(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _store(settings, agent_network={"mode": "allowlist", "domains": ["registry.npmjs.org"], "read_only": True})

    checks = _by_name(network_checks(settings, database_ok=True))

    assert all(check.ok for check in checks.values()), checks
    assert checks["egress proxy installed"].detail.startswith("Squid Cache: Version")
    probe = checks["egress proxy refuses and records a request outside the allowlist"].detail
    assert probe.startswith("squid refused a host outside a sandbox's allowlist and recorded it (not in the allowlist)")
    assert checks["environment network policies parse"].detail == "1 environment, every policy parses"
    assert checks["secrets key opens every stored secret"].detail == "1 key; 1 stored secret, every one opens"


def test_a_policy_row_that_does_not_parse_is_named(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _store(settings, agent_network={"mode": "allowlist", "domains": ["10.0.0.1"]})  # addresses are refused

    check = _by_name(network_checks(settings, database_ok=True))["environment network policies parse"]

    assert not check.ok
    assert f"policies that do not parse (1): {PATTERN} (id 1) agent policy:" in check.detail
    assert "overnight env set" in check.fix


def test_a_wrong_key_names_the_secret_and_never_shows_its_value(tmp_path: Path) -> None:
    settings = _settings(tmp_path, key=new_key())
    _store(settings, agent_network={}, secret_key=KEY)

    check = _by_name(network_checks(settings, database_ok=True))["secrets key opens every stored secret"]

    assert not check.ok
    assert check.detail.endswith(f"secrets that do not open with these keys (1): NPM_TOKEN of {PATTERN}")
    assert VALUE not in check.detail + check.fix
    # The sealing key listed after the new one (a rotation under way) opens it.
    rotating = settings.model_copy(update={"secrets": SecretsSettings(key=SecretStr(f"{new_key()},{KEY}"))})
    again = _by_name(network_checks(rotating, database_ok=True))["secrets key opens every stored secret"]
    assert again.ok and again.detail == "2 keys; 1 stored secret, every one opens"


def test_stored_secrets_without_a_key_fail_and_no_secrets_without_a_key_pass(tmp_path: Path) -> None:
    settings = _settings(tmp_path, key=None)
    empty = _by_name(network_checks(settings, database_ok=True))["secrets key opens every stored secret"]
    assert empty.ok and empty.detail.startswith("no key set and no secret stored")

    _store(settings, agent_network={})
    stored = _by_name(network_checks(settings, database_ok=True))["secrets key opens every stored secret"]
    assert not stored.ok and "secrets are stored (1) but no key is set" in stored.detail


def test_a_key_that_is_no_fernet_key_fails(tmp_path: Path) -> None:
    settings = _settings(tmp_path, key="not-a-key")
    check = _by_name(network_checks(settings, database_ok=True))["secrets key opens every stored secret"]
    assert not check.ok and "not-a-key" not in check.detail


def test_without_a_database_only_the_proxy_is_checked(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert [check.name for check in network_checks(settings, database_ok=False)] == [
        "egress proxy installed", "egress proxy refuses and records a request outside the allowlist"
    ]  # fmt: skip


def test_a_proxy_the_worker_could_not_start_fails_the_probe_saying_why(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    broken = settings.model_copy(update={"sandbox": settings.sandbox.model_copy(update={"proxy": "ftp://up:21"})})
    checks = _by_name(network_checks(broken, database_ok=False))
    probe = checks["egress proxy refuses and records a request outside the allowlist"]
    assert checks["egress proxy installed"].ok and not probe.ok
    assert "must be an http:// address" in probe.detail and "OVERNIGHT_SANDBOX_PROXY" in probe.fix


def test_a_missing_squid_is_a_failure_that_says_so() -> None:
    with pytest.raises(RuntimeError, match="squid is not installed"):
        _proxy(("no-such-squid", "/nonexistent/squid"))
