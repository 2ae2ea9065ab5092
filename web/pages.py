"""Rendering pages: the templates, the headers every page carries, and who is signed in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session, sessionmaker

from api.auth import CookieRefused
from web import present
from web.config import WebConfig
from web.session import CookieAuth, SessionCodec, WebSession

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",  # diff2html sets a few style attributes
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])  # fmt: skip
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def asset_version() -> str:
    """Changes when a static file does, so that browsers never run a stale script against a newer page."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(STATIC)}:{path.stat().st_mtime_ns}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


@dataclass(kw_only=True)
class WebState:
    config: WebConfig
    codec: SessionCodec
    cookie_auth: CookieAuth
    sessions: sessionmaker[Session]
    templates: Environment
    version: str

    @property
    def vendor_ready(self) -> bool:
        return (STATIC / "vendor" / "diff2html-ui-slim.min.js").is_file()


def make_templates() -> Environment:
    env = Environment(
        loader=PackageLoader("web", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(present.filters())
    return env


class SignInRequired(Exception):
    """Raised by a page whose visitor has no valid session; answered with a redirect to the sign-in page, which
    says why in its own words (``reason`` is a code: a link cannot make the page say anything else)."""

    def __init__(self, target: str, reason: str | None = None) -> None:
        super().__init__(target)
        self.target, self.reason = target, reason


def sign_in_redirect(request: Request, exc: Exception) -> RedirectResponse:
    assert isinstance(exc, SignInRequired)
    location = f"/sign-in?next={quote(exc.target, safe='/')}"
    if exc.reason:
        location += f"&reason={quote(exc.reason)}"
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def web_state(request: Request) -> WebState:
    return request.app.state.web  # type: ignore[no-any-return]


def current_session(request: Request) -> WebSession:
    """The signed-in visitor, or a redirect to the sign-in page (back to this page afterwards)."""
    state = web_state(request)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    cookie = state.cookie_auth.session_cookie(request.scope)
    if cookie is None:
        raise SignInRequired(target)
    try:
        return state.cookie_auth.web_session(cookie)
    except CookieRefused as exc:
        raise SignInRequired(target, exc.code) from exc


WebSessionDep = Annotated[WebSession, Depends(current_session)]
WebStateDep = Annotated[WebState, Depends(web_state)]


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    web: WebSession | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    state = web_state(request)
    html = state.templates.get_template(name).render(
        request=request, web=web, user=web.user if web else None, version=state.version,
        vendor_ready=state.vendor_ready, config=state.config, **context,
    )  # fmt: skip
    return HTMLResponse(html, status_code=status_code, headers={**PAGE_HEADERS, **(headers or {})})
