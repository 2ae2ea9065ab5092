"""Engines, migrations and every query the API and the worker run: one place for the SQL."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from migrations.models import (
    ACTIVE_STATES,
    FINAL_STATES,
    Patch,
    Task,
    TaskEvent,
    TaskState,
    Trajectory,
    User,
    utcnow,
)
from migrations.user_store import create_token as create_token  # the token queries live in user_store
from migrations.user_store import hash_token as hash_token
from migrations.user_store import user_for_token as user_for_token

MIGRATIONS_DIR = Path(__file__).resolve().parent


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get their folder, WAL and a busy timeout for many processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(alembic_config(engine), "head")


def new_task_id() -> str:
    return secrets.token_hex(8)


# --- tasks -----------------------------------------------------------------------------------------


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
    append_event(session, task.id, "state", {"state": TaskState.queued.value})
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
) -> tuple[Sequence[Task], str | None]:
    """Newest first; the second value is the cursor of the next page (None on the last)."""
    query = select(Task).order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)
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
    """Move a task to ``to_state`` only if it is in one of ``from_states``; record the change as an event.

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
    data: dict[str, Any] = {"state": to_state.value}
    if reason:
        data["reason"] = reason
    append_event(session, task_id, "state", data)
    return True


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


# --- events ----------------------------------------------------------------------------------------


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


# --- patches ---------------------------------------------------------------------------------------


def store_patch(
    session: Session,
    task_id: str,
    *,
    base_sha: str,
    diff: str,
    title: str,
    body: str,
    files_changed: int,
    complete: bool = True,
    excluded: list[str] | None = None,
) -> Patch:
    patch = session.get(Patch, task_id)
    if patch is None:
        patch = Patch(task_id=task_id)
        session.add(patch)
    patch.base_sha = base_sha
    patch.diff = diff
    patch.title = title
    patch.body = body
    patch.files_changed = files_changed
    patch.complete = complete
    patch.excluded = excluded or []
    patch.created_at = utcnow()
    session.flush()
    return patch


def get_patch(session: Session, task_id: str) -> Patch | None:
    return session.get(Patch, task_id)


def age(moment: datetime) -> float:
    return (utcnow() - moment).total_seconds()


# --- trajectories ----------------------------------------------------------------------------------


def store_trajectory(session: Session, task_id: str, data: dict[str, Any]) -> Trajectory:
    trajectory = session.get(Trajectory, task_id)
    if trajectory is None:
        trajectory = Trajectory(task_id=task_id)
        session.add(trajectory)
    trajectory.data = data
    trajectory.updated_at = utcnow()
    session.flush()
    return trajectory


def get_trajectory(session: Session, task_id: str) -> Trajectory | None:
    return session.get(Trajectory, task_id)


# --- queues and reconciling (claims and fencing: attempt_store.py) ---------------------------------


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
            Task.state == TaskState.queued.value, (Task.enqueued_at < limit) | (Task.enqueued_at.is_(None))
        )
    ).all()


def add_sandbox_seconds(session: Session, task_id: str, seconds: float) -> None:
    session.execute(update(Task).where(Task.id == task_id).values(sandbox_seconds=Task.sandbox_seconds + seconds))


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
