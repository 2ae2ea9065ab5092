"""Signing in with an Overnight token, and out."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

import store.users
from web.pages import PAGE_HEADERS, WebStateDep, render
from web.session import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    cookie_name,
    read_cookie,
    session_seconds,
    sign_in,
)

router = APIRouter(include_in_schema=False)
MAX_FORM_BYTES = 64 * 1024
REASONS = {
    "session_expired": "Your session has ended (they last a week at most); sign in again.",
    "token_revoked": "The token this browser signed in with was revoked; sign in with another.",
    "token_expired": "The token this browser signed in with has expired; sign in with another.",
    "unauthorized": "This browser's session is no longer valid; sign in again.",
}
"""What the sign-in page says for each ``?reason=`` code; any other value shows nothing."""


def safe_next(target: str | None) -> str:
    """Only a path of this site: never another host (``//evil``, ``/\\evil``, ``https://...``)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ord(char) < 32 or char == "\\" for char in target):
        return "/"
    return target


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (first value of each)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def secure(request: Request, web: WebStateDep) -> bool:
    return web.cookie_auth.secure(request.scope)


def sign_in_page(
    request: Request, web: WebStateDep, *, target: str, message: str | None, status_code: int = 200
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "sign_in.html", {"next": target, "nonce": nonce, "message": message},
                      status_code=status_code)  # fmt: skip
    over_tls = secure(request, web)
    name, path = cookie_name(SIGN_IN_COOKIE, secure=over_tls), "/" if over_tls else "/sign-in"
    response.set_cookie(name, nonce, max_age=3600, path=path, httponly=True, samesite="lax", secure=over_tls)
    return response


@router.get("/sign-in")
def sign_in_form(request: Request, web: WebStateDep, next: str = "/", reason: str | None = None) -> HTMLResponse:
    return sign_in_page(request, web, target=safe_next(next), message=REASONS.get(reason or ""))


@router.post("/sign-in")
async def sign_in_submit(request: Request, web: WebStateDep) -> Response:
    form = await read_form(request)
    target = safe_next(form.get("next"))
    nonce = read_cookie(request.headers, SIGN_IN_COOKIE, secure=secure(request, web))
    if not web.codec.sign_in_nonce_matches(nonce, form.get(CSRF_FIELD)):
        message = "The sign-in form had expired (or came from another site); please try again."
        return sign_in_page(request, web, target=target, message=message, status_code=403)
    token = form.get("token", "").strip()
    if not token:
        return sign_in_page(request, web, target=target, message="Paste your Overnight token.", status_code=401)

    def check() -> tuple[str, int]:
        with web.sessions() as session:
            row = sign_in(session, token)
            session.commit()
            return web.codec.issue(row), session_seconds(row)

    try:
        cookie, seconds = await run_in_threadpool(check)
    except store.users.TokenRefused as exc:
        message = str(exc).replace("the bearer token", "This token")
        return sign_in_page(request, web, target=target, message=message, status_code=401)
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    over_tls = secure(request, web)
    response.set_cookie(cookie_name(SESSION_COOKIE, secure=over_tls), cookie, max_age=seconds, path="/",
                        httponly=True, samesite="lax", secure=over_tls)  # fmt: skip
    response.delete_cookie(cookie_name(SIGN_IN_COOKIE, secure=over_tls), path="/" if over_tls else "/sign-in",
                           secure=over_tls)  # fmt: skip
    return response


@router.post("/sign-out")
async def sign_out(request: Request, web: WebStateDep) -> Response:
    """Ends this browser's session (the cookie is dropped); revoking the token ends every session made with it."""
    form = await read_form(request)
    cookie = web.cookie_auth.session_cookie(request.scope)
    response = RedirectResponse("/sign-in", status_code=303, headers={"Cache-Control": "no-store"})
    if cookie is None:  # nothing to sign out of (or a page elsewhere, which the browser sent no cookie with)
        return response
    if not web.codec.csrf_matches(cookie, form.get(CSRF_FIELD)):
        return HTMLResponse("The sign-out form is missing its CSRF token; reload the page and try again.",
                            status_code=403, headers=PAGE_HEADERS)  # fmt: skip
    over_tls = secure(request, web)
    response.delete_cookie(cookie_name(SESSION_COOKIE, secure=over_tls), path="/", httponly=True, samesite="lax",
                           secure=over_tls)  # fmt: skip
    return response
