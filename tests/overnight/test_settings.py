"""Settings read from the environment the way deployments write it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from overnight.settings import Settings


def test_a_blank_env_line_means_unset_not_an_empty_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # infra/.env.example leaves these blank; "" must not become Path(".") mounted over the CA bundle.
    for name in ("SANDBOX_CA_BUNDLE", "SANDBOX_ROOTFS", "GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "DATABASE_URL"):
        monkeypatch.setenv(f"OVERNIGHT_{name}", "")
    settings = Settings()
    assert settings.sandbox_ca_bundle is None and settings.sandbox_rootfs is None
    assert settings.github_token is None and settings.github_webhook_secret is None
    assert settings.resolved_database_url.endswith("overnight.db")
    monkeypatch.setenv("OVERNIGHT_SANDBOX_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert Settings().sandbox_ca_bundle == Path("/etc/ssl/certs/ca-certificates.crt")


def test_github_clone_base_follows_the_api_root() -> None:
    assert Settings().github_git_base == "https://github.com"
    assert Settings(github_api_url="https://ghe.example.com/api/v3/").github_git_base == "https://ghe.example.com"
    assert Settings(github_git_url="https://git.example.com/").github_git_base == "https://git.example.com"


def test_unknown_author_associations_are_refused() -> None:
    assert Settings(github_allowed_associations=["owner", "member"]).github_allowed_associations == ["OWNER", "MEMBER"]
    with pytest.raises(ValidationError, match="unknown author_association"):
        Settings(github_allowed_associations=["OWNER", "ADMIN"])
