"""A task's events: appended with the next sequence number, read back after a resume point.

A row is the event's type and the rest of its fields (``overnight.events.event_data``); ``read_event`` turns
it back into the event."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from overnight.events import TaskEvent, event_data, parse_event
from store.models import TaskEvent as TaskEventRow


def append_event(session: Session, task_id: str, event: TaskEvent) -> TaskEventRow:
    """Append an event with the next sequence number of its task (one writer per task at a time)."""
    last = session.scalar(select(func.max(TaskEventRow.seq)).where(TaskEventRow.task_id == task_id))
    event_row = TaskEventRow(task_id=task_id, seq=(last or 0) + 1, type=event.type, data=event_data(event))
    session.add(event_row)
    session.flush()
    return event_row


def list_events(session: Session, task_id: str, *, after: int = 0, limit: int = 1000) -> Sequence[TaskEventRow]:
    query = (
        select(TaskEventRow)
        .where(TaskEventRow.task_id == task_id, TaskEventRow.seq > after)
        .order_by(TaskEventRow.seq)
        .limit(limit)
    )
    return session.scalars(query).all()


def read_event(row: TaskEventRow) -> TaskEvent:
    """The event a row holds; raises ``overnight.events.UnreadableEvent`` for one that is no known event."""
    return parse_event(row.type, row.data)
