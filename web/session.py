"""Browser sessions: an Overnight token, given once at sign-in, becomes a signed cookie.

The cookie holds no secret of its own: it names the token's row and a fingerprint of the token's hash, signed
with the server's session key. Every request looks the token up again, so revoking or expiring the token ends
each session made with it at the next request. CSRF tokens are derived from the cookie (HMAC with the same
key), so they need no storage either and change with every sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import Message, Scope, Send

import store.users
from api.auth import CookieRefused
from store.models import Token, User, utcnow

SESSION_COOKIE = "overnight_session"
SIGN_IN_COOKIE = "overnight_sign_in"
"""A nonce the sign-in form repeats in a hidden field (double submit): a page elsewhere cannot sign a browser
in as someone else."""
SECURE_PREFIX = "__Host-"
"""Over HTTPS both cookies take this prefix: the browser then keeps them only if Secure, Path=/ and with no
Domain, so a sibling host (another subdomain, a plain-HTTP page) cannot plant or replace them."""

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 7 * 24 * 3600
"""A session lasts a week at most, and never past its token's own expiry."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RECHECK_SECONDS = 0.2
"""A long answer (an event stream) checks its session again before sending anything this long after the last
check: every poll of a stream does (they are half a second apart), a burst of events once."""
KEY_FILE = "web-session.key"


def cookie_name(base: str, *, secure: bool) -> str:
    return SECURE_PREFIX + base if secure else base


def read_cookie(headers: Headers, base: str, *, secure: bool) -> str | None:
    """Over HTTPS the cookie under its ``__Host-`` name only (a plain-named one may have been planted by a
    sibling host for the parent domain); over plain HTTP its plain name."""
    return cookie_parser(headers.get("cookie", "")).get(cookie_name(base, secure=secure)) or None


def load_session_key(data_dir: Path, configured: str | None = None) -> bytes:
    """The key that signs sessions: ``configured`` when given (several API replicas must share one), else a
    random key kept in ``data_dir`` (made on first use, mode 0600; a second process racing to make it reads
    the first one's)."""
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) >= 32:
            return key.encode()
        raise RuntimeError(f"{path} holds no usable session key; remove it and restart the API") from None
    with os.fdopen(descriptor, "w") as handle:
        key = secrets.token_hex(32)
        handle.write(key + "\n")
    return key.encode()


def fingerprint(token_hash: str) -> str:
    """Names the token in the cookie without carrying its hash (a leaked cookie tells nothing about the token)."""
    return hashlib.sha256(f"overnight-session|{token_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class WebSession:
    user: User
    token_id: int
    csrf: str
    """The CSRF token pages send back with every state-changing request."""


class SessionCodec:
    """Signs and reads session cookies; derives and checks CSRF tokens."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.serializer = URLSafeTimedSerializer(key, salt="overnight-web-session")

    def issue(self, token: Token) -> str:
        return self.serializer.dumps({"tid": token.id, "fp": fingerprint(token.token_hash), "n": secrets.token_hex(8)})

    def read(self, cookie: str) -> dict[str, Any]:
        try:
            payload = self.serializer.loads(cookie, max_age=SESSION_SECONDS)
        except SignatureExpired:
            raise CookieRefused(401, "session_expired", "the session has expired; sign in again") from None
        except BadSignature:
            raise CookieRefused(401, "unauthorized", "the session cookie is not valid; sign in again") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("tid"), int) or "fp" not in payload:
            raise CookieRefused(401, "unauthorized", "the session cookie is not valid; sign in again")
        return payload

    def csrf_token(self, cookie: str) -> str:
        return hmac.new(self.key, b"csrf|" + cookie.encode(), hashlib.sha256).hexdigest()

    def csrf_matches(self, cookie: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token(cookie), str(presented))

    def sign_in_nonce_matches(self, cookie: str | None, presented: str | None) -> bool:
        return bool(cookie) and bool(presented) and hmac.compare_digest(str(cookie), str(presented))


def token_user(session: Session, payload: dict[str, Any]) -> User:
    """The user of the session's token, which must still exist, be the same token and be active."""
    row = session.get(Token, payload["tid"])
    if row is None or not hmac.compare_digest(fingerprint(row.token_hash), str(payload["fp"])):
        raise CookieRefused(401, "unauthorized", "the token this session was signed in with no longer exists")
    state = store.users.token_state(row)
    if state != "active":
        raise CookieRefused(401, f"token_{state}", f"the token this session was signed in with was {state}; "
                            "sign in with another")  # fmt: skip
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= store.users.LAST_USED_PRECISION:
        row.last_used_at = now
    return row.user


class CookieAuth:
    """Authenticates a request by its session cookie: the web pages, and the API for the pages' scripts
    (``api.auth.BearerAuthMiddleware`` asks it when a request has no Authorization header)."""

    def __init__(self, codec: SessionCodec, sessions: sessionmaker[Session], *, always_secure: bool = False) -> None:
        self.codec, self.sessions, self.always_secure = codec, sessions, always_secure

    def secure(self, scope: Scope) -> bool:
        """Whether the request's cookies are the HTTPS ones: over HTTPS, or behind a proxy that ends TLS."""
        return self.always_secure or scope.get("scheme") == "https"

    def session_cookie(self, scope: Scope) -> str | None:
        return read_cookie(Headers(scope=scope), SESSION_COOKIE, secure=self.secure(scope))

    def authenticate(self, cookie: str, *, method: str, headers: Headers) -> User:
        """The session's user; a state-changing request must also carry the session's CSRF token (403)."""
        payload = self.codec.read(cookie)
        if method.upper() not in SAFE_METHODS:
            if headers.get("sec-fetch-site") == "cross-site":
                raise CookieRefused(403, "csrf_failed", "a request from another site is refused")
            if not self.codec.csrf_matches(cookie, headers.get(CSRF_HEADER)):
                raise CookieRefused(403, "csrf_failed", "the CSRF token is missing or wrong; reload the page")
        with self.sessions() as session:
            user = token_user(session, payload)
            session.commit()  # last_used_at, when it moved
            _ = user.name, user.is_admin  # loaded while the session is open
            return user

    def still_valid(self, cookie: str) -> bool:
        try:
            payload = self.codec.read(cookie)
            with self.sessions() as session:
                token_user(session, payload)
            return True
        except CookieRefused:
            return False

    def guard_send(self, cookie: str, send: Send) -> Send:
        """The API's answers to the pages are never cached (a shared computer's browser, a proxy), and a long
        one (a task's event stream) ends as soon as its session's token is revoked or expires: nothing written
        after that reaches it."""
        checked, ended = time.monotonic(), False

        def due() -> bool:
            return time.monotonic() - checked >= RECHECK_SECONDS

        async def guarded(message: Message) -> None:
            nonlocal checked, ended
            if ended:
                return
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                headers["Cache-Control"] = "no-store"
                message = {**message, "headers": headers.raw}
            elif message["type"] == "http.response.body" and message.get("more_body") and due():
                checked = time.monotonic()
                if not await run_in_threadpool(self.still_valid, cookie):
                    ended = True
                    message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        return guarded

    def web_session(self, cookie: str) -> WebSession:
        """For the pages: the user and the CSRF token their forms and scripts send back."""
        payload = self.codec.read(cookie)
        with self.sessions() as session:
            user = token_user(session, payload)
            session.commit()
            _ = user.name, user.is_admin
        return WebSession(user=user, token_id=int(payload["tid"]), csrf=self.codec.csrf_token(cookie))


def sign_in(session: Session, token: str) -> Token:
    """The token's row when the token lets its user in; raises store.users.TokenRefused (the reason in words)."""
    store.users.authenticate(session, token)
    row = session.scalar(select(Token).where(Token.token_hash == store.users.hash_token(token)))
    assert row is not None  # authenticate found it
    _ = row.user.name
    return row


def session_seconds(token: Token) -> int:
    """A week, or less when the token expires sooner."""
    if token.expires_at is None:
        return SESSION_SECONDS
    return max(0, min(SESSION_SECONDS, int((token.expires_at - utcnow()).total_seconds())))
