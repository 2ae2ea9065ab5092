"""GitHub settings that cannot work are refused before anything listens (the API, the worker, `overnight up`)
and named by `overnight doctor`, which otherwise asks GitHub who the credentials are; git credentials are keyed
by host and port exactly as git matches them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from overnight.admin.doctor import _github
from overnight.github.config import ConfigError, problems
from overnight.settings import Settings
from tests.github_fake import KEYS, SECRET, FakeGitHub, FakeGitHubServer
from worker.mirrors import credential_origin, git_env

APP = {"github_webhook_secret": SECRET, "github_app_id": "4242", "github_private_key": KEYS[0]}


def settings_with(tmp_path: Path, **changes: object) -> Settings:
    """Settings with ``changes`` named as their variables are (``github_api_url``: OVERNIGHT_GITHUB_API_URL)."""
    github = {name.removeprefix("github_"): value for name, value in changes.items() if name.startswith("github_")}
    others = {name: value for name, value in changes.items() if not name.startswith("github_")}
    return Settings(data_dir=tmp_path, github=github, **others)  # type: ignore[arg-type]


def found(tmp_path: Path, **changes: object) -> list[str]:
    return problems(settings_with(tmp_path, **changes))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"github_api_url": "http://ghe.example.com/api/v3"}, "would send tokens unencrypted to ghe.example.com"),
        ({"github_api_url": "https://ghe.example.com"}, "is not a REST API root"),
        ({"github_api_url": "https://github.com"}, "is the web site, not the REST API"),
        ({"github_api_url": "ftp://ghe.example.com/api/v3"}, "is not an http(s) URL"),
        ({"github_api_url": "https://user:pw@ghe.example.com/api/v3"}, "must not hold credentials"),
        ({"github_app_id": None, "github_private_key": None}, "there are no GitHub credentials"),
        ({"github_private_key": None}, "go together: set both"),
        ({"github_private_key": "/nonexistent/app.pem"}, "cannot read the GitHub App private key"),
        ({"github_private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----"},
         "cannot sign the GitHub App JWT"),
        ({"github_git_url": "http://git.example.com"}, "which tasks may not use"),
        ({"git_credentials": {"https://git.example.com": "t"}}, "are not a host or host:port"),
        ({"git_credentials": {"git.example.com/org": "t"}}, "are not a host or host:port"),
    ],
)  # fmt: skip
def test_settings_that_cannot_work_are_named_with_their_fix(
    tmp_path: Path, changes: dict[str, object], expected: str
) -> None:
    [problem] = found(tmp_path, **{**APP, **changes})
    assert expected in problem


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"github_api_url": "https://ghe.example.com/api/v3/"},
        {"github_api_url": "https://api.acme.ghe.com"},
        {"github_api_url": "http://127.0.0.1:8080", "github_git_url": "https://127.0.0.1:8443"},  # on this machine
        {"github_app_id": None, "github_private_key": None, "github_token": "ghp_x"},
        {"git_credentials": {"git.example.com:8443": "t", "GIT.example.org": "t"}},
    ],
)
def test_settings_that_work_pass(tmp_path: Path, changes: dict[str, object]) -> None:
    assert found(tmp_path, **{**APP, **changes}) == []


def test_github_off_is_not_a_problem_and_nothing_of_it_is_checked(tmp_path: Path) -> None:
    assert found(tmp_path) == [] and found(tmp_path, github_api_url="http://ghe.example.com") == []


def test_the_api_refuses_to_start_instead_of_blaming_every_payload(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the API cannot start: OVERNIGHT_GITHUB_API_URL=http://ghe\.example\.com"):
        create_app(settings_with(tmp_path, github_api_url="http://ghe.example.com/api/v3", **APP))


def server_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
        "OVERNIGHT_DATA_DIR": str(tmp_path / "data"), "OVERNIGHT_CONFIG_DIR": str(tmp_path / "config"),
        "OVERNIGHT_BROKER_URL": "redis://127.0.0.1:1/0", "OVERNIGHT_LLM_BASE_URL": "http://127.0.0.1:1/v1",
        "OVERNIGHT_SANDBOX_BACKEND": "bwrap", "OVERNIGHT_SANDBOX_ROOTFS": str(tmp_path / "no-rootfs"), **settings,
    }  # fmt: skip


SECRET_ONLY = {"OVERNIGHT_GITHUB_WEBHOOK_SECRET": "s3cret"}


def test_the_worker_and_overnight_up_refuse_to_start(tmp_path: Path) -> None:
    worker = subprocess.run([sys.executable, "-m", "worker"], env=server_env(tmp_path, **SECRET_ONLY),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert worker.returncode == 1 and "the worker cannot start: OVERNIGHT_GITHUB_WEBHOOK_SECRET" in worker.stderr
    up = subprocess.run(["overnight", "up"], env=server_env(tmp_path, **SECRET_ONLY), capture_output=True, text=True,
                        timeout=60)  # fmt: skip
    assert up.returncode == 2 and "cannot start: OVERNIGHT_GITHUB_WEBHOOK_SECRET is set but" in up.stderr
    assert not (tmp_path / "data").exists()  # refused before it made or started anything


def test_doctor_names_the_setting(tmp_path: Path) -> None:
    env = server_env(tmp_path, OVERNIGHT_GITHUB_TOKEN="ghp_x", OVERNIGHT_GITHUB_API_URL="http://ghe.example.com")
    result = subprocess.run(["overnight", "doctor", "--json"], env=env, capture_output=True, text=True, timeout=180)
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    check = checks["GitHub and git credential settings work"]
    assert result.returncode == 1 and not check["ok"]
    assert "would send tokens unencrypted to ghe.example.com" in check["detail"] and "docs/github.md" in check["fix"]


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(FakeGitHub(public_key=KEYS[1], personal_token="ghp_" + "d" * 36)) as server:
        yield server


def test_doctor_asks_github_who_the_credentials_are(tmp_path: Path, fake: FakeGitHubServer) -> None:
    where = {"github_api_url": fake.url, "github_git_url": "https://git.example.com"}
    assert _github(settings_with(tmp_path, **where, **APP)) == f"GitHub App overnight-test (id 4242) at {fake.url}"
    token = settings_with(tmp_path, **where, github_token=fake.fake.personal_token)
    assert _github(token) == f"the token of @Codertocat at {fake.url}"
    wrong = settings_with(tmp_path, **where, github_token="ghp_wrong")
    with pytest.raises(Exception, match="user lookup failed: GitHub answered 401 Bad credentials"):
        _github(wrong)


def header_for(env: dict[str, str], url: str) -> str | None:
    """What git itself would send to ``url`` with ``env`` (its own URL matching, not ours)."""
    result = subprocess.run(["git", "config", "--get-urlmatch", "http.extraheader", url], env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    return result.stdout.strip() or None


@pytest.mark.parametrize(
    ("key", "url", "also", "not_to"),
    [
        ("ghe.example.com:8443", "https://ghe.example.com:8443/o/r.git", None, "https://ghe.example.com/o/r.git"),
        ("GHE.Example.com:8443", "https://ghe.example.com:8443/o/r.git", None, "https://ghe.example.com:8444/o"),
        ("ghe.example.com", "https://ghe.example.com/o/r.git", "https://ghe.example.com:443/x",
         "https://ghe.example.com:8443/o/r.git"),
        ("ghe.example.com:443", "https://GHE.example.com/o/r.git", None, "https://other.example.com/o/r.git"),
    ],
)  # fmt: skip
def test_a_token_reaches_exactly_the_host_and_port_it_is_keyed_by(
    key: str, url: str, also: str | None, not_to: str
) -> None:
    env = git_env(allow_local=False, credentials={key: "tok"}, url=url)
    header = header_for(env, url)
    assert header is not None and header.startswith("AUTHORIZATION: basic ")
    assert also is None or header_for(env, also) == header
    assert header_for(env, not_to) is None


def test_no_token_for_another_port_plain_http_or_ssh() -> None:
    credentials = {"ghe.example.com": "tok"}
    for url in ("https://ghe.example.com:8443/o/r.git", "http://ghe.example.com/o/r.git",
                "ssh://git@ghe.example.com/o/r.git", "git@ghe.example.com:o/r.git"):  # fmt: skip
        assert header_for(git_env(allow_local=False, credentials=credentials, url=url), url) is None
    assert credential_origin("https://[::1]:8443/o/r.git") == "[::1]:8443"
    assert credential_origin("https://h:notaport/o") is None
