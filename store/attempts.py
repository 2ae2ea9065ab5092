"""Who runs a task: claiming it (each claim starts a numbered attempt), fencing every write of that attempt,
and recovering a task whose worker was lost.

The attempt number is the fencing token. A worker's writes all run in transactions that begin with
:func:`fence`, a conditional UPDATE of the task row that matches only while the task is preparing or
running *on that attempt*; PostgreSQL keeps the row locked (SQLite the whole database) until the
transaction commits, so a reconciler cannot take the task away between the check and the write. Once the
task was put back to queued, claimed again or ended, the old attempt's writes are refused with
:class:`Superseded`, and that attempt stops itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

import store.bestof
import store.messages
import store.users
from store.models import ACTIVE_STATES, Task, TaskState, utcnow
from store.tasks import transition

CANCELLED_BY_USER = "cancelled by user"


class Superseded(Exception):
    """This attempt no longer owns its task (put back to queued, claimed again, or ended): its write is refused."""


def claim(session: Session, task_id: str, *, worker: str, max_active_per_user: int) -> int | Literal["busy", "gone"]:
    """Try to start task ``task_id`` on ``worker``: the new attempt's number, "busy" (its user is at the
    concurrency limit: leave it queued), or "gone" (not queued any more, or cancelled now because a cancel
    was asked for while an earlier attempt ran)."""
    task = session.get(Task, task_id)
    if task is None or task.state != TaskState.queued.value:
        return "gone"
    if task.cancel_requested:  # never cleared: a task whose cancel was asked for does not run again
        transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.cancelled,
                   reason=CANCELLED_BY_USER)  # fmt: skip
        return "gone"
    if task.user_id is not None and store.users.active_tasks_locked(session, task.user_id) >= max_active_per_user:
        return "busy"
    claimed = transition(
        session, task_id, from_states=[TaskState.queued], to_state=TaskState.preparing,
        attempt=Task.attempt + 1, worker=worker, heartbeat_at=utcnow(),
    )  # fmt: skip
    if not claimed:
        return "gone"
    store.bestof.attempt_claimed(session, task_id)
    return int(session.scalar(select(Task.attempt).where(Task.id == task_id)) or 0)


def fence(session: Session, task_id: str, attempt: int) -> None:
    """Begin a write of attempt ``attempt``: refresh the task's heartbeat (a write is a sign of life), or raise
    :class:`Superseded` when the attempt no longer owns the task."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.attempt == attempt, Task.state.in_([s.value for s in ACTIVE_STATES]))
        .values(heartbeat_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Superseded(f"attempt {attempt} of task {task_id} no longer owns it")


def beat(session: Session, task_id: str, attempt: int) -> bool:
    """The heartbeat of attempt ``attempt`` (fenced); returns whether the user asked to cancel."""
    fence(session, task_id, attempt)
    return bool(session.scalar(select(Task.cancel_requested).where(Task.id == task_id)))


def requeue_or_fail(session: Session, task: Task, *, max_attempts: int, reason: str) -> str:
    """A task whose worker died: back to queued for a clean new attempt, failed after ``max_attempts``, or
    cancelled when its user asked for that meanwhile ("requeued", "failed", "cancelled", "unchanged")."""
    states = [s for s in ACTIVE_STATES if s.value == task.state]
    if task.cancel_requested:
        if transition(session, task.id, from_states=states, to_state=TaskState.cancelled, reason=CANCELLED_BY_USER):
            return "cancelled"
        return "unchanged"
    if task.attempt >= max_attempts:
        transition(session, task.id, from_states=states, to_state=TaskState.failed,
                   reason=f"worker lost: {reason} (after {task.attempt} attempts)")  # fmt: skip
        return "failed"
    if transition(session, task.id, from_states=states, to_state=TaskState.queued, reason=reason):
        store.messages.redeliver(session, task.id)  # the next attempt starts a new history: they go in it again
        return "requeued"
    return "unchanged"


# --- what the reconciler looks for -------------------------------------------------------------


def mark_enqueued(session: Session, task_id: str) -> None:
    session.execute(update(Task).where(Task.id == task_id).values(enqueued_at=utcnow()))


def stale_active_tasks(session: Session, *, older_than: timedelta) -> Sequence[Task]:
    """Preparing or running tasks whose worker stopped beating."""
    limit = utcnow() - older_than
    return session.scalars(
        select(Task).where(Task.state.in_([s.value for s in ACTIVE_STATES]), Task.heartbeat_at < limit)
    ).all()


def lost_queued_tasks(session: Session, *, older_than: timedelta) -> Sequence[Task]:
    """Queued tasks last handed to the broker long ago (the broker may have lost them)."""
    limit = utcnow() - older_than
    return session.scalars(
        select(Task).where(
            Task.state == TaskState.queued.value,
            (Task.enqueued_at < limit) | (Task.enqueued_at.is_(None)),
            Task.attempts <= 1,  # a task with attempts is sent only to be ranked: store.bestof.due_groups
        )
    ).all()
