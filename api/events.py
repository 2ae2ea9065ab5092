"""Server-Sent Events of one task: everything after the resume point, then new events as they are written,
ending once the task has reached a final state and its last event was sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse

import store.events
import store.tasks
from store.models import TaskState

POLL_SECONDS = 0.5


def _read(sessions: sessionmaker[Session], task_id: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    with sessions() as session:
        task = store.tasks.get_task(session, task_id)
        final = task is None or TaskState(task.state).is_final
        events = [
            {"id": str(e.seq), "event": e.type,
             "data": json.dumps({"seq": e.seq, "type": e.type, "data": e.data, "created_at": e.created_at.isoformat()})}
            for e in store.events.list_events(session, task_id, after=after, limit=500)
        ]  # fmt: skip
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
