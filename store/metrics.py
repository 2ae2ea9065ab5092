"""Figures for /metrics, read from the database (the source of truth)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import Task


def metrics_snapshot(session: Session) -> dict[str, Any]:
    """Figures for /metrics, read from the database (the source of truth)."""
    by_state = dict(session.execute(select(Task.state, func.count()).group_by(Task.state)).all())
    tokens = session.execute(
        select(
            func.coalesce(func.sum(Task.prompt_tokens), 0),
            func.coalesce(func.sum(Task.cached_tokens), 0),
            func.coalesce(func.sum(Task.completion_tokens), 0),
            func.coalesce(func.sum(Task.sandbox_seconds), 0.0),
        )
    ).one()
    durations: dict[str, list[float]] = {}
    finished = session.execute(
        select(Task.state, Task.started_at, Task.finished_at)
        .where(Task.finished_at.is_not(None), Task.started_at.is_not(None))
        .order_by(Task.finished_at.desc())
        .limit(10_000)
    ).all()
    for state, started, ended in finished:
        if started is not None and ended is not None:
            durations.setdefault(state, []).append((ended - started).total_seconds())
    return {
        "by_state": by_state,
        "prompt_tokens": int(tokens[0]),
        "cached_tokens": int(tokens[1]),
        "completion_tokens": int(tokens[2]),
        "sandbox_seconds": float(tokens[3]),
        "durations": durations,
    }
