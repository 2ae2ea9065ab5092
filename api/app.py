"""The FastAPI application, built from settings."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api.auth import BearerAuthMiddleware
from api.errors import install_error_handlers
from api.limits import BodyLimitMiddleware
from api.routes import attempts, environments, github, health, messages, tasks
from api.routes.health import TaskCollector
from overnight.broker import resolve_broker_url
from overnight.github.client import GitHubClient, client_from_settings
from overnight.github.config import refuse_unworkable
from overnight.queue import TaskQueue
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker
from web.app import install_web


def create_app(
    settings: Settings | None = None, *, queue: TaskQueue | None = None, github_client: GitHubClient | None = None
) -> FastAPI:
    settings = settings or Settings()
    refuse_unworkable(settings, "the API")  # e.g. an http:// GitHub API root: refused now, not per delivery
    app = FastAPI(
        title="Overnight",
        version="0.1.0",
        summary="File a coding task against a git repository; come back to a PR-ready patch.",
        docs_url=None,  # the web app serves /docs with Swagger UI's files of its own, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    app.state.metrics = CollectorRegistry()
    app.state.metrics.register(TaskCollector(app.state.sessions))
    if queue is None:
        broker_url, _ = resolve_broker_url(settings)
        queue = TaskQueue(broker_url, queue=settings.queue)
    app.state.queue = queue
    # The webhook may look an installation up while GitHub waits (10 s): one short try, no retries.
    app.state.github = github_client or client_from_settings(settings.github, attempts=1, timeout=4.0)
    install_error_handlers(app)
    # Added last, runs first: the token is checked before the body is counted, and both before it is parsed.
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.api.max_body_bytes,
        limits={
            ("POST", "/v1/tasks"): settings.api.max_upload_bytes + settings.images.upload_allowance,
            ("POST", "/v1/github/webhook"): settings.github.webhook_max_body_bytes,
        },
    )
    cookie_auth = install_web(app, settings)  # the web pages; their scripts reach the API with the cookie
    app.add_middleware(BearerAuthMiddleware, sessions=app.state.sessions, cookie_auth=cookie_auth)
    app.include_router(health.router)
    app.include_router(tasks.router)
    app.include_router(messages.router)
    app.include_router(attempts.router)
    app.include_router(github.router)
    app.include_router(environments.router)
    return app
