"""A task's events on the wire: each stored row as its typed record (``EventPublic``), as JSON or as
Server-Sent Events — everything after the resume point, then new events as they are written, ending once the
task has reached a final state and its last event was sent."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse

import store.events
import store.tasks
from api.schemas import EVENT_RECORDS, EventPublic, UnreadableEventRecord
from overnight.events import UnreadableEvent, event_data
from store.models import TaskEvent as TaskEventRow
from store.models import TaskState

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


def event_public(row: TaskEventRow) -> EventPublic:
    """The row as its event's record; a row that is no known event (a newer version's, or a broken one) is
    passed on as stored with the reason, so that one row cannot break a task's event list or stream."""
    try:
        event = store.events.read_event(row)
    except UnreadableEvent as exc:
        log.warning("task %s: event %s cannot be read: %s", row.task_id, row.seq, exc)
        return EventPublic(
            UnreadableEventRecord(seq=row.seq, type=row.type, data=row.data, created_at=row.created_at, error=str(exc))
        )
    record = {"seq": row.seq, "type": event.type, "data": event_data(event), "created_at": row.created_at}
    return EventPublic(EVENT_RECORDS[event.type].model_validate(record))


def _read(sessions: sessionmaker[Session], task_id: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    with sessions() as session:
        task = store.tasks.get_task(session, task_id)
        final = task is None or TaskState(task.state).is_final
        events = [
            {"id": str(row.seq), "event": row.type, "data": event_public(row).model_dump_json()}
            for row in store.events.list_events(session, task_id, after=after, limit=500)
        ]
        return events, final


def event_stream(
    sessions: sessionmaker[Session], task_id: str, *, after: int, ping_seconds: float
) -> EventSourceResponse:
    """A keep-alive comment goes out every ``ping_seconds`` (clients skip it), so that proxies keep the
    connection of a quiet task open."""

    async def generate() -> AsyncIterator[dict[str, Any]]:
        position = after
        while True:
            events, final = await anyio.to_thread.run_sync(_read, sessions, task_id, position)
            for event in events:
                position = int(event["id"])
                yield event
            if final and not events:
                return
            if not events:
                await anyio.sleep(POLL_SECONDS)

    return EventSourceResponse(generate(), ping=ping_seconds, headers={"Cache-Control": "no-cache"})
