"""The REST calls Overnight makes: comments (made and updated in place), reactions, labels, pull requests and
installations. Retries 5xx, connection errors and rate limits (honouring ``retry-after`` and
``x-ratelimit-reset``); a token GitHub refuses is replaced once."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt

from overnight.github.auth import API_HEADERS, Credentials
from overnight.github.errors import GitHubError
from overnight.github.markers import MARK
from overnight.settings import GitHubSettings

log = logging.getLogger(__name__)
MAX_WAIT = 60.0
PERMISSION_TTL = 300.0
"""Seconds a collaborator's permission is remembered (a revoked write access stops working within this)."""
WRITE_PERMISSIONS = frozenset({"admin", "write"})
"""``permission`` values of GET /repos/{repo}/collaborators/{user}/permission that may start tasks (GitHub maps
maintain to write and triage to read; ``role_name`` is not trusted: a custom role may carry any name)."""


@dataclass(frozen=True, kw_only=True)
class PullRequest:
    number: int
    html_url: str
    draft: bool
    head_ref: str


@dataclass(frozen=True, kw_only=True)
class Permission:
    """A user's access to a repository, as GET /repos/{repo}/collaborators/{user}/permission says."""

    permission: str
    """admin, write, read or none (maintain counts as write, triage as read)."""
    role_name: str

    @property
    def may_write(self) -> bool:
        return self.permission in WRITE_PERMISSIONS


class _Retryable(Exception):
    def __init__(self, response: httpx.Response | None, error: Exception | None = None) -> None:
        super().__init__(str(error) if error else f"GitHub answered {response.status_code if response else '?'}")
        self.response, self.error = response, error


def _rate_limited(response: httpx.Response) -> bool:
    if response.status_code == 429:
        return True
    if response.status_code != 403:
        return False
    if response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers:
        return True
    return "rate limit" in response.text.lower()


def _wait(state: RetryCallState) -> float:
    """retry-after seconds, else until x-ratelimit-reset, else exponential; capped."""
    exc = state.outcome.exception() if state.outcome else None
    response = exc.response if isinstance(exc, _Retryable) else None
    if response is not None:
        if (after := response.headers.get("retry-after", "")).isdigit():
            return min(float(after), MAX_WAIT)
        if response.headers.get("x-ratelimit-remaining") == "0" and (
            reset := response.headers.get("x-ratelimit-reset")
        ):
            try:
                return min(max(float(reset) - time.time(), 1.0), MAX_WAIT)
            except ValueError:
                pass
    return float(min(0.5 * 2 ** (state.attempt_number - 1), MAX_WAIT))


class GitHubClient:
    def __init__(self, credentials: Credentials, *, http: httpx.Client | None = None, attempts: int = 4) -> None:
        self.credentials = credentials
        self.api_url = credentials.api_url
        self._http = http or httpx.Client(timeout=15)
        self._attempts = attempts
        self.permission_ttl = PERMISSION_TTL
        self._permissions: dict[tuple[str, str], tuple[float, Permission]] = {}
        self._permissions_lock = threading.Lock()

    # --- the calls ------------------------------------------------------------------------------------

    def installation(self, installation_id: int) -> dict[str, Any] | None:
        """The App's installation ``installation_id``, or None when GitHub does not know it (App JWT)."""
        try:
            return self._call("GET", f"/app/installations/{installation_id}", auth="app", what="installation")
        except GitHubError as exc:
            if exc.status == 404:
                return None
            raise

    def identity(self) -> str:
        """Who the credentials are, in words: the App (GET /app) or the token's user (GET /user)."""
        if self.credentials.app_mode:
            app = self._call("GET", "/app", auth="app", what="App lookup")
            return f"GitHub App {app.get('slug') or app.get('name')} (id {app.get('id')})"
        user = self._call("GET", "/user", what="user lookup")
        return f"the token of @{user.get('login')}"

    def permission(self, installation: int | None, repo: str, login: str) -> Permission:
        """``login``'s permission on ``repo``, remembered for ``permission_ttl`` seconds (a user GitHub does not
        know has none)."""
        key, now = (repo.lower(), login.lower()), time.monotonic()
        with self._permissions_lock:
            cached = self._permissions.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        path = f"/repos/{repo}/collaborators/{quote(login, safe='')}/permission"
        data = self._call("GET", path, installation, what="permission check", missing_ok=True) or {}
        found = Permission(permission=str(data.get("permission") or "none").lower(),
                           role_name=str(data.get("role_name") or ""))  # fmt: skip
        with self._permissions_lock:
            self._permissions = {k: v for k, v in self._permissions.items() if v[0] > now}  # drop the expired
            self._permissions[key] = (now + self.permission_ttl, found)
        return found

    def comment(self, installation: int | None, repo: str, number: int, body: str) -> int:
        """Comment on issue or pull request ``number`` (with Overnight's marker); returns the comment id."""
        path = f"/repos/{repo}/issues/{number}/comments"
        return int(self._call("POST", path, installation, json={"body": _marked(body)}, what="comment")["id"])

    def update_comment(self, installation: int | None, repo: str, comment_id: int, body: str) -> None:
        path = f"/repos/{repo}/issues/comments/{comment_id}"
        self._call("PATCH", path, installation, json={"body": _marked(body)}, what="comment update")

    def react(self, installation: int | None, repo: str, target: str, content: str = "eyes") -> None:
        """A reaction on ``target``: ``issues/N``, ``issues/comments/ID`` or ``pulls/comments/ID``."""
        self._call("POST", f"/repos/{repo}/{target}/reactions", installation, json={"content": content},
                   what="reaction")  # fmt: skip

    def remove_label(self, installation: int | None, repo: str, number: int, label: str) -> None:
        path = f"/repos/{repo}/issues/{number}/labels/{quote(label, safe='')}"
        try:
            self._call("DELETE", path, installation, what="label removal")
        except GitHubError as exc:
            if exc.status != 404:  # already gone
                raise

    def create_pull(
        self, installation: int | None, repo: str, *, title: str, head: str, base: str, body: str, draft: bool
    ) -> PullRequest:
        """Open a pull request; a repository without drafts (private, free plan) gets a ready one."""
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft,
                   "maintainer_can_modify": True}  # fmt: skip
        try:
            data = self._call("POST", f"/repos/{repo}/pulls", installation, json=payload, what="pull request")
        except GitHubError as exc:
            if not (draft and exc.status == 422 and "draft pull requests are not supported" in str(exc).lower()):
                raise
            log.info("%s does not support draft pull requests; opening a ready one", repo)
            data = self._call("POST", f"/repos/{repo}/pulls", installation, json={**payload, "draft": False},
                              what="pull request")  # fmt: skip
        return PullRequest(number=int(data["number"]), html_url=str(data["html_url"]),
                           draft=bool(data.get("draft")), head_ref=str(data["head"]["ref"]))  # fmt: skip

    # --- plumbing -------------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        installation: int | None = None,
        *,
        auth: str = "installation",
        json: dict[str, Any] | None = None,
        what: str,
        missing_ok: bool = False,
    ) -> Any:
        """The JSON answer (None for a 404 when ``missing_ok``); GitHubError for any other failure, a token GitHub
        would not issue included."""
        refreshed = False
        while True:
            token = self.credentials.app_token() if auth == "app" else self.credentials.token(installation)
            response = self._send(method, path, token, json)
            if response.status_code == 401 and auth != "app" and self.credentials.app_mode and not refreshed:
                self.credentials.invalidate(installation)  # revoked or expired early: one fresh token
                refreshed = True
                continue
            if response.status_code == 404 and missing_ok:
                return None
            if response.status_code >= 400:
                raise GitHubError.from_response(response, f"{what} failed")
            return response.json() if response.content else {}

    def _send(self, method: str, path: str, token: str, json: dict[str, Any] | None) -> httpx.Response:
        @retry(
            retry=retry_if_exception(lambda exc: isinstance(exc, _Retryable)),
            stop=stop_after_attempt(self._attempts),
            wait=_wait,
            reraise=True,
        )
        def send() -> httpx.Response:
            try:
                response = self._http.request(
                    method, self.api_url + path, json=json,
                    headers={"Authorization": f"Bearer {token}", **API_HEADERS},
                )  # fmt: skip
            except httpx.TransportError as exc:
                raise _Retryable(None, exc) from exc
            if response.status_code >= 500 or _rate_limited(response):
                raise _Retryable(response)
            return response

        try:
            return send()
        except _Retryable as exc:
            if exc.response is not None:
                return exc.response
            raise GitHubError(0, f"GitHub unreachable at {self.api_url}: {exc.error}") from exc


def _marked(body: str) -> str:
    """Every comment Overnight writes starts with its marker, so no delivery of it is ever taken as a request."""
    return body if body.startswith(MARK) else f"{MARK}\n{body}"


def client_from_settings(github: GitHubSettings, *, attempts: int = 4, timeout: float = 15.0) -> GitHubClient | None:
    """The client for the configured App or token; None when GitHub is not configured."""
    token = github.token.get_secret_value() if github.token else None
    key = github.private_key.get_secret_value() if github.private_key else None
    if not token and not (github.app_id and key):
        return None
    credentials = Credentials(api_url=github.api_url, app_id=github.app_id, private_key=key, personal_token=token,
                              http=httpx.Client(timeout=timeout))  # fmt: skip
    return GitHubClient(credentials, http=httpx.Client(timeout=timeout), attempts=attempts)
