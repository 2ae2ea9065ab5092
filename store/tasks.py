"""The queries about tasks: creating, reading, listing, moving between states, cancelling, counting use."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session

import store.bestof
import store.messages
from overnight.events import StateEvent, TaskStateName
from store.events import append_event
from store.models import ACTIVE_STATES, FINAL_STATES, Task, TaskState, User, utcnow


def new_task_id() -> str:
    return secrets.token_hex(8)


def create_task(
    session: Session,
    *,
    repo: str,
    ref: str | None,
    instruction: str,
    max_steps: int | None = None,
    setup: str | None = None,
    user_id: int | None = None,
    idempotency_key: str | None = None,
    parent_id: str | None = None,
    kind: str = "task",
    start_diff: str | None = None,
) -> Task:
    task = Task(
        start_diff=start_diff,
        id=new_task_id(),
        user_id=user_id,
        idempotency_key=idempotency_key,
        parent_id=parent_id,
        kind=kind,
        repo=repo,
        ref=ref,
        instruction=instruction,
        max_steps=max_steps,
        setup=setup,
        state=TaskState.queued.value,
    )
    session.add(task)
    session.flush()
    append_event(session, task.id, _state_event(TaskState.queued))
    return task


def get_task(session: Session, task_id: str, *, user: User | None = None) -> Task | None:
    """The task, or None; with ``user``, only if that user may see it (their own, or any for an admin)."""
    task = session.get(Task, task_id)
    if task is None or (user is not None and not user.is_admin and task.user_id != user.id):
        return None
    return task


def task_by_idempotency_key(session: Session, user_id: int, key: str) -> Task | None:
    return session.scalar(select(Task).where(Task.user_id == user_id, Task.idempotency_key == key))


def encode_cursor(task: Task) -> str:
    return base64.urlsafe_b64encode(f"{task.created_at.isoformat()}|{task.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on a cursor this API did not make."""
    moment, _, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    if not task_id:
        raise ValueError("malformed cursor")
    return datetime.fromisoformat(moment), task_id


def list_tasks(
    session: Session,
    *,
    limit: int = 50,
    state: str | None = None,
    repo: str | None = None,
    user: User | None = None,
    cursor: str | None = None,
    include_attempts: bool = False,
) -> tuple[Sequence[Task], str | None]:
    """Newest first; the second value is the cursor of the next page (None on the last). The attempt tasks of a
    task with attempts are left out unless ``include_attempts``."""
    query = select(Task).order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)
    if not include_attempts:
        query = query.where(Task.attempt_of.is_(None))
    if state:
        query = query.where(Task.state == state)
    if repo:
        query = query.where(Task.repo == repo)
    if user is not None and not user.is_admin:
        query = query.where(Task.user_id == user.id)
    if cursor:
        moment, task_id = decode_cursor(cursor)
        query = query.where((Task.created_at < moment) | ((Task.created_at == moment) & (Task.id < task_id)))
    tasks = session.scalars(query).all()
    next_cursor = encode_cursor(tasks[limit - 1]) if len(tasks) > limit else None
    return tasks[:limit], next_cursor


def transition(
    session: Session,
    task_id: str,
    *,
    from_states: Iterable[TaskState],
    to_state: TaskState,
    reason: str | None = None,
    **fields: Any,
) -> bool:
    """Move a task to ``to_state`` only if it is in one of ``from_states``; record the change as an event. A task
    that ends drops the messages still pending for it (``store.messages``), with the reason.

    The conditional UPDATE makes a cancel racing with a worker's progress resolve to exactly one winner.
    """
    now = utcnow()
    values: dict[str, Any] = {"state": to_state.value, "updated_at": now, **fields}
    if to_state is TaskState.preparing:
        values.setdefault("started_at", now)
    if to_state in FINAL_STATES:
        values["finished_at"] = now
        values["failure_reason"] = reason
    result = session.execute(
        update(Task).where(Task.id == task_id, Task.state.in_([s.value for s in from_states])).values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    append_event(session, task_id, _state_event(to_state, reason))
    if to_state in FINAL_STATES:  # in the same transaction: a message is refused or dropped, never left pending
        ended = f"{to_state.value} ({reason})" if reason else to_state.value
        store.messages.drop_pending(session, task_id, reason=f"the task ended before it was delivered: {ended}")
        store.bestof.attempt_ended(session, task_id, to_state, reason)  # an attempt task's end, on its group
    return True


def _state_event(state: TaskState, reason: str | None = None) -> StateEvent:
    name = cast(TaskStateName, state.value)  # the same names: tests/store/test_events.py
    return StateEvent(state=name, reason=reason) if reason else StateEvent(state=name)


def request_cancel(session: Session, task_id: str) -> Task | None:
    """Cancel a queued task at once; ask a preparing or running one to stop (its worker watches the flag)."""
    if transition(
        session,
        task_id,
        from_states=[TaskState.queued],
        to_state=TaskState.cancelled,
        reason="cancelled by user",
    ):
        return get_task(session, task_id)
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state.in_([s.value for s in ACTIVE_STATES]))
        .values(cancel_requested=True, updated_at=utcnow())
    )
    return get_task(session, task_id)


def cancel_requested(session: Session, task_id: str) -> bool:
    return bool(session.scalar(select(Task.cancel_requested).where(Task.id == task_id)))


def add_usage(session: Session, task_id: str, *, prompt: int, cached: int, completion: int) -> None:
    session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(
            steps=Task.steps + 1,
            prompt_tokens=Task.prompt_tokens + prompt,
            cached_tokens=Task.cached_tokens + cached,
            completion_tokens=Task.completion_tokens + completion,
            updated_at=utcnow(),
        )
    )


def set_base_sha(session: Session, task_id: str, sha: str) -> None:
    """The commit a task's attempt started from (written without reading the row again)."""
    session.execute(update(Task).where(Task.id == task_id).values(base_sha=sha))


def add_sandbox_seconds(session: Session, task_id: str, seconds: float) -> None:
    session.execute(update(Task).where(Task.id == task_id).values(sandbox_seconds=Task.sandbox_seconds + seconds))


def age(moment: datetime) -> float:
    return (utcnow() - moment).total_seconds()
