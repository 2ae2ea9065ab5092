"""Engines, migrations and every query the API and the worker run: one place for the SQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from migrations.models import FINAL_STATES, Patch, Task, TaskEvent, TaskState, Trajectory, utcnow

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
) -> Task:
    task = Task(
        id=new_task_id(),
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


def get_task(session: Session, task_id: str) -> Task | None:
    return session.get(Task, task_id)


def list_tasks(
    session: Session, *, limit: int = 50, state: str | None = None, repo: str | None = None
) -> Sequence[Task]:
    query = select(Task).order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    if state:
        query = query.where(Task.state == state)
    if repo:
        query = query.where(Task.repo == repo)
    return session.scalars(query).all()


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
    if to_state is TaskState.running:
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
    """Cancel a queued task at once; ask a running one to stop at its next step."""
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
        .where(Task.id == task_id, Task.state == TaskState.running.value)
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
