"""The bearer token is checked before anything else of a request is read.

FastAPI reads and validates a request's body before it resolves dependencies, so a dependency that checks the
token comes too late (a request without one got the schema's 422, after its body was read whole). This
middleware answers 401 first; the routes find the user it authenticated in the scope (``api.deps.get_user``).

A request with no Authorization header may instead carry the web app's session cookie (``web.session``): the
pages' scripts and their event streams (EventSource cannot send headers) use the same API that way, and a
state-changing request then needs the session's CSRF token as well. Bearer requests are not affected.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import store.users
from store.models import User

USER_SCOPE_KEY = "overnight.user"
PROTECTED_PREFIX = "/v1/"
SIGNED_PATHS = frozenset({"/v1/github/webhook"})
"""Authenticated by their own signature over the body instead of a bearer token."""


class CookieRefused(Exception):
    """A session cookie that does not let its request in: 401 (no valid session) or 403 (no CSRF token)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class CookieAuthenticator(Protocol):
    def session_cookie(self, scope: Scope) -> str | None: ...

    def authenticate(self, cookie: str, *, method: str, headers: Headers) -> User:
        """The session's user; raises CookieRefused."""
        ...

    def guard_send(self, cookie: str, send: Send) -> Send:
        """How the answer to a cookie's request goes out (its caching, a long stream's end)."""
        ...


def unauthorized(message: str, *, has_body: bool) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"}
    if has_body:  # the body stays unread: the connection cannot carry another request
        headers["Connection"] = "close"
    return JSONResponse({"error": {"code": "unauthorized", "message": message}}, status_code=401, headers=headers)


class BearerAuthMiddleware:
    def __init__(
        self, app: ASGIApp, *, sessions: sessionmaker[Session], cookie_auth: CookieAuthenticator | None = None
    ) -> None:
        self.app, self.sessions, self.cookie_auth = app, sessions, cookie_auth

    @staticmethod
    def needs_token(scope: Scope) -> bool:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path.startswith(PROTECTED_PREFIX) and path.rstrip("/") not in SIGNED_PATHS

    def authenticate(self, token: str) -> User:
        with self.sessions() as session:
            user = store.users.authenticate(session, token)
            session.commit()  # last_used_at, when it moved
            return user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.needs_token(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        cookie = self.cookie_auth.session_cookie(scope) if self.cookie_auth else None
        if cookie is not None and "authorization" not in headers:
            await self.with_cookie(cookie, headers, has_body, scope, receive, send)
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "a bearer token is required (Authorization: Bearer TOKEN)"
            await unauthorized(message, has_body=has_body)(scope, receive, send)
            return
        try:
            user = await run_in_threadpool(self.authenticate, token.strip())
        except store.users.TokenRefused as exc:
            await unauthorized(str(exc), has_body=has_body)(scope, receive, send)
            return
        scope[USER_SCOPE_KEY] = user
        await self.app(scope, receive, send)

    async def with_cookie(
        self, cookie: str, headers: Headers, has_body: bool, scope: Scope, receive: Receive, send: Send
    ) -> None:
        assert self.cookie_auth is not None
        method = scope["method"]
        try:
            user = await run_in_threadpool(self.cookie_auth.authenticate, cookie, method=method, headers=headers)
        except CookieRefused as exc:
            refusal = {"error": {"code": exc.code, "message": exc.message}}
            extra = {"Connection": "close"} if has_body else {}
            await JSONResponse(refusal, status_code=exc.status, headers=extra)(scope, receive, send)
            return
        scope[USER_SCOPE_KEY] = user
        await self.app(scope, receive, self.cookie_auth.guard_send(cookie, send))
