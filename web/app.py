"""Mounting the web app on the API: its pages, its static files and the cookie sessions the API accepts."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from overnight.settings import Settings
from web.config import WebConfig
from web.pages import STATIC, SignInRequired, WebState, asset_version, make_templates, sign_in_redirect
from web.routes import apidocs, environments, signin, tasks
from web.session import CookieAuth, SessionCodec, load_session_key


def install_web(app: FastAPI, settings: Settings) -> CookieAuth:
    """Adds the pages to ``app`` (which has its database sessions in ``app.state.sessions`` already) and
    returns the cookie authenticator the API's auth middleware should accept."""
    codec = SessionCodec(load_session_key(settings.data_dir))
    config = WebConfig.from_settings(settings)
    cookie_auth = CookieAuth(codec, app.state.sessions, always_secure=config.secure_cookies)
    app.state.web = WebState(
        config=config,
        codec=codec,
        cookie_auth=cookie_auth,
        sessions=app.state.sessions,
        templates=make_templates(),
        version=asset_version(),
    )
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    app.include_router(apidocs.router)
    app.include_router(signin.router)
    app.include_router(tasks.router)
    app.include_router(environments.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return cookie_auth
