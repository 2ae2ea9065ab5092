"""GitHub settings (and git credential hosts) that cannot work, found before anything listens: the API, the
worker and `overnight up` refuse to start with them, and `overnight doctor` names them (and, when they look
fine, asks GitHub who the credentials are)."""

from __future__ import annotations

import ipaddress
import logging
import re
from urllib.parse import urlsplit

from overnight.github.auth import app_jwt, load_private_key
from overnight.github.errors import GitHubError
from overnight.repourl import InvalidRepoError, validate_repo_url
from overnight.settings import GitHubSettings, Settings

log = logging.getLogger(__name__)
_CREDENTIAL_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?$")


class ConfigError(RuntimeError):
    """Settings that cannot work; the message names each and how to fix it."""


def configured(settings: Settings) -> bool:
    """Whether any GitHub setting is given (otherwise GitHub is simply off and nothing is checked)."""
    github = settings.github
    return any((github.webhook_secret, github.app_id, github.private_key, github.token))


def problems(settings: Settings) -> list[str]:
    """Every setting that cannot work, each as a sentence that names it and the fix (empty: none found)."""
    found = _credential_hosts(settings)
    if not configured(settings):
        return found
    github = settings.github
    api = _api_url(github.api_url)
    found += api
    has_app = bool(github.app_id and github.private_key)
    if github.token is None and not has_app:
        if github.app_id or github.private_key:
            found.append("OVERNIGHT_GITHUB_APP_ID and OVERNIGHT_GITHUB_PRIVATE_KEY go together: set both")
        else:
            found.append("OVERNIGHT_GITHUB_WEBHOOK_SECRET is set but there are no GitHub credentials, so no delivery "
                         "could start a task: set OVERNIGHT_GITHUB_APP_ID and OVERNIGHT_GITHUB_PRIVATE_KEY (an App) "
                         "or OVERNIGHT_GITHUB_TOKEN")  # fmt: skip
    elif github.token is None and github.private_key is not None:
        found += _private_key(github)
    if api and not github.git_url:
        return found  # the clone address comes from the API root: one fix for both
    try:
        validate_repo_url(f"{github.git_base}/owner/repo.git", allow_local=settings.allow_local_repos)
    except InvalidRepoError as exc:
        found.append(f"repositories would be cloned from {github.git_base}/OWNER/REPO.git, which tasks may "
                     f"not use ({exc}): set OVERNIGHT_GITHUB_GIT_URL to https://HOST")  # fmt: skip
    return found


def refuse_unworkable(settings: Settings, who: str) -> None:
    """Raise ``ConfigError`` (after logging each problem) when a setting cannot work; ``who`` is starting."""
    found = problems(settings)
    for problem in found:
        log.error("%s cannot start: %s", who, problem)
    if found:
        raise ConfigError(f"{who} cannot start: " + "; ".join(found))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_url(url: str) -> list[str]:
    fix = "use https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        return [f"OVERNIGHT_GITHUB_API_URL={url!r} is not an http(s) URL: {fix}"]
    if parts.scheme == "http" and not is_loopback(host):
        return [f"OVERNIGHT_GITHUB_API_URL={url} would send tokens unencrypted to {host} (http://): {fix}"]
    if parts.username or parts.password or parts.query or parts.fragment:
        return [f"OVERNIGHT_GITHUB_API_URL must not hold credentials, a query or a fragment: {fix}"]
    path = parts.path.rstrip("/")
    if path.endswith("/api/v3") or (not path and (host.startswith("api.") or is_loopback(host))):
        return []
    if host.lower() == "github.com":
        return [f"OVERNIGHT_GITHUB_API_URL={url} is the web site, not the REST API: use https://api.github.com"]
    return [f"OVERNIGHT_GITHUB_API_URL={url} is not a REST API root: {fix}"]


def _private_key(github: GitHubSettings) -> list[str]:
    assert github.private_key is not None and github.app_id is not None
    try:
        app_jwt(github.app_id, load_private_key(github.private_key.get_secret_value()))
    except GitHubError as exc:
        return [f"OVERNIGHT_GITHUB_PRIVATE_KEY: {exc}"]
    return []


def _credential_hosts(settings: Settings) -> list[str]:
    """OVERNIGHT_GIT_CREDENTIALS keys must be what git matches: a host, or host:port (no scheme, no path)."""
    bad = sorted(key for key in settings.git_credentials if not _CREDENTIAL_HOST.match(key.strip()))
    if not bad:
        return []
    return [f"OVERNIGHT_GIT_CREDENTIALS keys {bad} are not a host or host:port (e.g. git.example.com or "
            "git.example.com:8443; no scheme, no path), so no clone would ever use them"]  # fmt: skip
