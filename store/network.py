"""A task's refused requests (its ``network_blocked`` events), grouped in the database: one row per host, port,
method, phase and reason, however many events there are, so the summary costs the same for three refusals
and for a hundred thousand."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from overnight.network_report import BlockedGroup, BlockedSummary, summarize
from store.models import Task, TaskEvent

MAX_GROUPS = 500
"""Groups read for one summary (the most refused first): hosts past them are counted, not listed."""


def blocked_summary(session: Session, task_id: str) -> BlockedSummary | None:
    """What the egress proxy refused during the task, summed up per host (None: nothing). A task run as
    best-of-N attempts counts the refusals of every attempt (each attempt task has its own events)."""
    data = TaskEvent.data
    host, port, method = data["host"].as_string(), data["port"].as_integer(), data["method"].as_string()
    phase, reason = data["phase"].as_string(), data["reason"].as_string()
    requests = func.sum(func.coalesce(data["count"].as_integer(), 1))
    # ``at`` is ISO 8601 text in UTC as pydantic writes it: its text order is its time order.
    first_at = func.min(cast(data["at"].as_string(), String))
    tasks = select(Task.id).where(or_(Task.id == task_id, Task.attempt_of == task_id))
    mine = (TaskEvent.task_id.in_(tasks), TaskEvent.type == "network_blocked")
    rows = session.execute(
        select(host, port, method, phase, reason, requests, first_at)
        .where(*mine)
        .group_by(host, port, method, phase, reason)
        .order_by(requests.desc(), host)
        .limit(MAX_GROUPS)
    ).all()
    if not rows:
        return None
    host_count = session.scalar(select(func.count(func.distinct(host))).where(*mine))
    groups = [
        BlockedGroup(host=str(row[0]), port=int(row[1] or 0), method=str(row[2]), phase=row[3], reason=str(row[4]),
                     requests=int(row[5]), first_at=datetime.fromisoformat(str(row[6])))
        for row in rows
        if row[3] in ("setup", "agent")
    ]  # fmt: skip
    return summarize(groups, host_count=int(host_count or 0))
