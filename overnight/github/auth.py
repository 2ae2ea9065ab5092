"""Who Overnight is on GitHub: a GitHub App (a short-lived JWT, then installation tokens cached until shortly
before they expire) or, for a single-user set-up, a personal access token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import jwt

from overnight.github.errors import GitHubError

JWT_BACKDATE = 60
"""``iat`` this many seconds in the past: GitHub's advice against clock drift."""
JWT_LIFETIME = 9 * 60
"""``exp`` under GitHub's ten-minute ceiling."""
REFRESH_MARGIN = 5 * 60
"""An installation token is replaced when it has less than this left (GitHub gives an hour)."""


def load_private_key(value: str) -> str:
    """The PEM text of ``value``, which is either PEM text or the path of a PEM file."""
    text = value.strip()
    if "-----BEGIN" not in text:
        path = Path(text).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise GitHubError(0, f"cannot read the GitHub App private key at {path}: {exc.strerror}") from exc
    if "PRIVATE KEY-----" not in text:
        raise GitHubError(0, "the GitHub App private key is not a PEM private key")
    return text + "\n"


def app_jwt(app_id: str, private_key: str, *, now: float | None = None) -> str:
    """An RS256 JWT that authenticates as the App itself (for /app/... endpoints)."""
    issued = int(now if now is not None else time.time()) - JWT_BACKDATE
    payload = {"iat": issued, "exp": issued + JWT_BACKDATE + JWT_LIFETIME, "iss": app_id}
    try:
        return jwt.encode(payload, private_key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:  # a malformed key
        raise GitHubError(0, f"cannot sign the GitHub App JWT: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class InstallationToken:
    token: str
    expires_at: float
    """Unix time."""


class Credentials:
    """Bearer tokens for REST calls and git: per installation in App mode, one token in personal mode."""

    def __init__(
        self,
        *,
        api_url: str,
        app_id: str | None = None,
        private_key: str | None = None,
        personal_token: str | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not personal_token and not (app_id and private_key):
            raise GitHubError(0, "GitHub is not configured: set OVERNIGHT_GITHUB_APP_ID and "
                                 "OVERNIGHT_GITHUB_PRIVATE_KEY, or OVERNIGHT_GITHUB_TOKEN")  # fmt: skip
        self.api_url = api_url.rstrip("/")
        self.app_id = app_id
        self._private_key = load_private_key(private_key) if private_key and not personal_token else None
        self._personal = personal_token
        self._http = http or httpx.Client(timeout=10)
        self._clock = clock
        self._tokens: dict[int, InstallationToken] = {}
        self._lock = threading.Lock()

    @property
    def app_mode(self) -> bool:
        return self._personal is None

    def app_token(self) -> str:
        """The App's JWT (App mode only)."""
        if self._private_key is None or self.app_id is None:
            raise GitHubError(0, "App endpoints need OVERNIGHT_GITHUB_APP_ID and OVERNIGHT_GITHUB_PRIVATE_KEY")
        return app_jwt(self.app_id, self._private_key, now=self._clock())

    def token(self, installation_id: int | None) -> str:
        """The token for REST calls and git on behalf of ``installation_id`` (ignored in personal mode)."""
        if self._personal is not None:
            return self._personal
        if installation_id is None:
            raise GitHubError(0, "this repository's deliveries carry no App installation")
        with self._lock:
            cached = self._tokens.get(installation_id)
            if cached is not None and cached.expires_at - self._clock() > REFRESH_MARGIN:
                return cached.token
            fresh = self._issue(installation_id)
            self._tokens[installation_id] = fresh
            return fresh.token

    def invalidate(self, installation_id: int | None) -> None:
        """Forget a token GitHub refused (revoked, or expired early)."""
        with self._lock:
            self._tokens.pop(installation_id or 0, None)

    def _issue(self, installation_id: int) -> InstallationToken:
        response = self._http.post(
            f"{self.api_url}/app/installations/{installation_id}/access_tokens",
            headers={"Authorization": f"Bearer {self.app_token()}", **API_HEADERS},
        )
        if response.status_code != 201:
            raise GitHubError.from_response(response, "could not get an installation token")
        body = response.json()
        try:
            expires = datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00")).timestamp()
            return InstallationToken(token=str(body["token"]), expires_at=expires)
        except (KeyError, ValueError) as exc:
            raise GitHubError(response.status_code, f"unexpected installation token response: {exc}") from exc


API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
