"""A task's events: appended with the next sequence number, read back after a resume point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import TaskEvent


def append_event(session: Session, task_id: str, type_: str, data: dict[str, Any]) -> TaskEvent:
    """Append an event with the next sequence number of its task (one writer per task at a time)."""
    last = session.scalar(select(func.max(TaskEvent.seq)).where(TaskEvent.task_id == task_id))
    event_row = TaskEvent(task_id=task_id, seq=(last or 0) + 1, type=type_, data=data)
    session.add(event_row)
    session.flush()
    return event_row


def list_events(session: Session, task_id: str, *, after: int = 0, limit: int = 1000) -> Sequence[TaskEvent]:
    query = (
        select(TaskEvent)
        .where(TaskEvent.task_id == task_id, TaskEvent.seq > after)
        .order_by(TaskEvent.seq)
        .limit(limit)
    )
    return session.scalars(query).all()
