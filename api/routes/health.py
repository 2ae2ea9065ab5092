"""Liveness, readiness (database and broker) and Prometheus metrics; none needs a token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

import store.metrics
from store.models import TaskState

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database and the broker answer",
    responses={503: {"description": "Something the API needs does not answer."}},
)
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report any failure as data
        checks["database"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        request.app.state.queue.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


class TaskCollector(Collector):
    """Task figures read from the database at scrape time, so every API replica reports the same."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Any]:
        with self.sessions() as session:
            snapshot = store.metrics.metrics_snapshot(session)
        tasks = GaugeMetricFamily("overnight_tasks", "Tasks by state.", labels=["state"])
        for state in TaskState:
            tasks.add_metric([state.value], snapshot["by_state"].get(state.value, 0))
        yield tasks
        yield GaugeMetricFamily(
            "overnight_queue_depth", "Tasks waiting for a worker.", value=snapshot["by_state"].get("queued", 0)
        )
        durations = SummaryMetricFamily(
            "overnight_task_duration_seconds", "Start to end of ended tasks (the last 10,000).", labels=["state"]
        )
        for state, values in snapshot["durations"].items():
            durations.add_metric([state], count_value=len(values), sum_value=sum(values))
        yield durations
        tokens = CounterMetricFamily("overnight_tokens", "Model tokens over all tasks.", labels=["kind"])
        for kind in ("prompt", "cached", "completion"):
            tokens.add_metric([kind], snapshot[f"{kind}_tokens"])
        yield tokens
        share = snapshot["cached_tokens"] / snapshot["prompt_tokens"] if snapshot["prompt_tokens"] else 0.0
        yield GaugeMetricFamily(
            "overnight_cached_token_share", "Prompt tokens served from the prefix cache.", value=share
        )
        yield CounterMetricFamily(
            "overnight_sandbox_seconds",
            "Seconds spent running set-up and tool commands.",
            value=snapshot["sandbox_seconds"],
        )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
