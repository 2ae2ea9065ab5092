"""Environments as data: pattern spelling and matching, reserved names, network policies, and the sealing of
secrets under rotating keys."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from overnight.environments import (
    LOADER_PREFIXES,
    RESERVED_NAMES,
    AllowlistNetwork,
    NetworkPolicy,
    best_match,
    check_name,
    describe_policy,
    pattern_key,
)
from overnight.secrets import SecretBox, SecretsUnavailable, new_key, parse_keys, write_key_file
from sandbox.execsupport import UNSAFE_ENV
from sandbox.runtime import BASE_ENV, CA_ENV


@dataclass
class Row:
    id: int
    pattern: str


def test_the_names_every_sandbox_is_given_or_drops_are_reserved() -> None:
    assert set(BASE_ENV) | set(CA_ENV) <= RESERVED_NAMES
    assert set(LOADER_PREFIXES) == set(UNSAFE_ENV)
    for name in ("PATH", "OVERNIGHT_SECRETS", "overnight_x", "https_proxy", "LD_PRELOAD", "MALLOC_ARENA_MAX"):
        with pytest.raises(ValueError):
            check_name(name)
    assert check_name("NPM_TOKEN") == "NPM_TOKEN"


@pytest.mark.parametrize(
    ("given", "spelled"),
    [
        ("HTTPS://GitHub.com/Acme/Widgets.git/", "https://github.com/acme/widgets"),
        ("git@github.com:acme/*", "ssh://git@github.com/acme/*"),
        ("*", "*"),
        ("/srv/repos/app/", "/srv/repos/app"),
    ],
)
def test_a_pattern_has_one_spelling(given: str, spelled: str) -> None:
    assert pattern_key(given) == spelled


@pytest.mark.parametrize(
    "bad", ["", "https://*.example.com/x", "https://git*hub.com/a", "file:///x", "acme/*", "/a/../b"]
)
def test_patterns_that_would_match_more_than_they_say_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        pattern_key(bad)


def test_the_exact_pattern_wins_then_the_longest_then_the_oldest() -> None:
    rows = [Row(1, "*"), Row(2, "https://github.com/acme/*"), Row(3, "https://github.com/acme/widgets"),
            Row(4, "https://github.com/acme/w*"), Row(5, "https://github.com/acme/x*")]  # fmt: skip
    assert best_match("https://github.com/Acme/widgets.git", rows) == rows[2]
    assert best_match("https://github.com/acme/wodgets", rows) == rows[3]
    assert best_match("https://github.com/acme/other", rows) == rows[1]
    assert best_match("git@gitlab.com:other/thing.git", rows) == rows[0]
    assert best_match("git@gitlab.com:other/thing.git", rows[1:]) is None
    tie = [Row(7, "https://github.com/acme/a*"), Row(6, "https://github.com/acme/*b")]
    assert best_match("https://github.com/acme/ab", tie) == tie[1]


def test_network_policies_parse_from_their_mode() -> None:
    adapter: TypeAdapter[NetworkPolicy] = TypeAdapter(NetworkPolicy)
    policy = adapter.validate_python(
        {"mode": "allowlist", "domains": ["PyPI.org.", "*.pythonhosted.org"], "read_only": True}
    )
    assert isinstance(policy, AllowlistNetwork) and policy.domains == ["pypi.org", "*.pythonhosted.org"]
    assert describe_policy(policy) == "allowlist (GET/HEAD only): pypi.org, *.pythonhosted.org"
    assert describe_policy(adapter.validate_python({"mode": "none"})) == "none"
    for bad in ({"mode": "allowlist", "domains": ["*"]}, {"mode": "allowlist", "domains": ["10.0.0.1"]},
                {"mode": "full", "domains": ["a.com"]}, {"mode": "sometimes"}):  # fmt: skip
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


def test_rotation_reseals_under_the_first_key_and_the_old_key_can_go() -> None:
    old, new = new_key(), new_key()
    sealed = SecretBox.from_config(old, None).seal("s3cret", pattern="*", name="TOKEN")
    both = SecretBox.from_config(f"{new},{old}", None)
    assert both.open(sealed, pattern="*", name="TOKEN") == "s3cret"
    resealed = both.rotate(sealed)
    assert SecretBox.from_config(new, None).open(resealed, pattern="*", name="TOKEN") == "s3cret"
    with pytest.raises(SecretsUnavailable):
        SecretBox.from_config(old, None).open(resealed, pattern="*", name="TOKEN")
    with pytest.raises(SecretsUnavailable, match="does not open"):
        SecretBox.from_config(new, None).rotate(SecretBox.from_config(new_key(), None).seal("x", pattern="*", name="A"))


def test_keys_come_from_the_setting_and_the_file_and_a_bad_one_is_named_not_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "secrets.key"
    write_key_file(key_file)
    first = key_file.read_text()
    write_key_file(key_file)
    assert key_file.read_text() == first, "an existing key file is kept"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    box = SecretBox.from_config(new_key(), key_file)
    assert box.key_count == 2
    assert len(parse_keys(f"# comment\n{new_key()}  # current\n\n")) == 1
    with pytest.raises(SecretsUnavailable, match="key 2 is not a Fernet key") as caught:
        parse_keys(f"{new_key()},not-a-key-but-a-value")
    assert "not-a-key-but-a-value" not in str(caught.value)
    with pytest.raises(SecretsUnavailable, match="OVERNIGHT_SECRETS_KEY"):
        SecretBox.from_config(None, None)
    with pytest.raises(SecretsUnavailable, match="cannot read"):
        SecretBox.from_config(None, tmp_path / "missing")
