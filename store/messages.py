"""The queries about messages users send to a task while it runs: sending one (only to a task that has not
ended), listing them, handing the pending ones of a mode to the model at a step, and dropping those still
pending when the task ends.

A message is never left pending by a task that ended. :func:`add_message` locks the task's row while it checks
that the task is live and writes the message, and a task ends in :func:`store.tasks.transition`, which drops
the pending messages in the same transaction as the final state: whichever commits first, the message is either
refused (the task had ended) or seen by the drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from overnight.events import MessageDeliveredEvent, MessageDroppedEvent
from store.events import append_event
from store.models import FINAL_STATES, Task, TaskMessage, utcnow

MessageMode = Literal["steer", "queue"]
EVENT_TEXT_LIMIT = 4_000


class TaskEnded(Exception):
    """The task has ended (or does not exist): messages no longer reach it."""

    def __init__(self, state: str | None) -> None:
        super().__init__(state)
        self.state = state


def add_message(
    session: Session, task_id: str, *, mode: MessageMode, text: str, author: str, user_id: int | None
) -> TaskMessage:
    """A pending message for a task that has not ended; raises :class:`TaskEnded` otherwise.

    The conditional UPDATE both checks the state and locks the task's row (SQLite: the database) until the
    caller commits, so a task cannot end between the check and the message's insert."""
    finals = [state.value for state in FINAL_STATES]
    locked = session.execute(
        update(Task).where(Task.id == task_id, Task.state.not_in(finals)).values(updated_at=utcnow())
    )
    if locked.rowcount != 1:  # type: ignore[attr-defined]
        raise TaskEnded(session.scalar(select(Task.state).where(Task.id == task_id)))
    message = TaskMessage(task_id=task_id, user_id=user_id, author=author[:100], mode=mode, text=text)
    session.add(message)
    session.flush()
    return message


def list_messages(session: Session, task_id: str) -> Sequence[TaskMessage]:
    """Oldest first."""
    return session.scalars(select(TaskMessage).where(TaskMessage.task_id == task_id).order_by(TaskMessage.id)).all()


def pending_count(session: Session, task_id: str, mode: MessageMode | None = None) -> int:
    query = (
        select(func.count())
        .select_from(TaskMessage)
        .where(TaskMessage.task_id == task_id, TaskMessage.state == "pending")
    )
    if mode is not None:
        query = query.where(TaskMessage.mode == mode)
    return int(session.scalar(query) or 0)


def deliver_pending(session: Session, task_id: str, *, mode: MessageMode, step: int) -> list[TaskMessage]:
    """The task's pending messages of ``mode``, oldest first, marked delivered at ``step`` (each with its
    ``message_delivered`` event)."""
    pending = session.scalars(
        select(TaskMessage)
        .where(TaskMessage.task_id == task_id, TaskMessage.state == "pending", TaskMessage.mode == mode)
        .order_by(TaskMessage.id)
        .with_for_update()
    ).all()
    now = utcnow()
    for message in pending:
        message.state, message.step, message.settled_at = "delivered", step, now
        append_event(session, task_id, MessageDeliveredEvent(
            message_id=message.id, mode=mode, step=step, author=message.author, text=_short(message.text),
        ))  # fmt: skip
    session.flush()
    return list(pending)


def redeliver(session: Session, task_id: str) -> None:
    """The task's delivered messages back to pending: its attempt was lost with the history they went into,
    and the next attempt starts a new one (their ``message_delivered`` events stay, and new ones follow)."""
    session.execute(
        update(TaskMessage)
        .where(TaskMessage.task_id == task_id, TaskMessage.state == "delivered")
        .values(state="pending", step=None, settled_at=None)
    )


def drop_pending(session: Session, task_id: str, *, reason: str) -> list[TaskMessage]:
    """Every message of the task still pending, marked dropped with ``reason`` (each with its
    ``message_dropped`` event)."""
    pending = session.scalars(
        select(TaskMessage)
        .where(TaskMessage.task_id == task_id, TaskMessage.state == "pending")
        .order_by(TaskMessage.id)
        .with_for_update()
    ).all()
    now = utcnow()
    for message in pending:
        message.state, message.reason, message.settled_at = "dropped", reason, now
        mode: MessageMode = "queue" if message.mode == "queue" else "steer"
        append_event(session, task_id, MessageDroppedEvent(message_id=message.id, mode=mode, reason=reason))
    session.flush()
    return list(pending)


def _short(text: str) -> str:
    return text if len(text) <= EVENT_TEXT_LIMIT else text[: EVENT_TEXT_LIMIT - 1] + "…"
