"""An instance as a normal task: created in the database and handed to the workers as the API does it, waited for,
and read back (its patch, its figures) from the rows the worker wrote."""

from __future__ import annotations

import threading
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import store.events
import store.patches
import store.tasks
from agent.budget import Budget, Spend
from api.queueing import enqueue_or_fail
from overnight.access import Requester
from overnight.admin.eval.instances import Instance
from overnight.events import PhaseEvent, SetupEvent, UnreadableEvent
from overnight.queue import TaskQueue
from overnight.repourl import validate_repo_url
from store.models import Task, TaskState, User

POLL_SECONDS = 1.0
EARLY_EVENTS = 200
"""The set-up and the agent's start are among a task's first events."""


class Stopped(Exception):
    """The eval was interrupted while waiting; the task goes on, and a resumed eval waits for it again."""


def eval_user(session: Session, name: str) -> User:
    """The user the eval's tasks belong to: an admin (a mirror folder is a local path, which only admins' tasks
    may name), made on first use."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, is_admin=True)
        session.add(user)
        session.flush()
    elif not user.is_admin:
        user.is_admin = True
    return user


def requester(user: User) -> Requester:
    return Requester(name=user.name, is_admin=user.is_admin)


def submit(sessions: sessionmaker[Session], queue: TaskQueue, instance: Instance, *, repo: str, user_id: int,
           allow_local: bool, max_steps: int | None) -> str:  # fmt: skip
    """Create the task at the instance's base commit and enqueue it (a broker that cannot take it fails the task
    with that reason, as the API does)."""
    with sessions() as session:
        task = store.tasks.create_task(
            session, repo=validate_repo_url(repo, allow_local=allow_local), ref=instance.base_commit,
            instruction=instance.instruction, max_steps=max_steps, setup=instance.setup, user_id=user_id,
        )  # fmt: skip
        session.commit()
        enqueue_or_fail(session, queue, task.id)
        return task.id


def wait_for(sessions: sessionmaker[Session], task_id: str, stop: threading.Event) -> None:
    """Until the task has ended (raises ``Stopped`` when ``stop`` is set first)."""
    while not stop.is_set():
        with sessions() as session:
            task = store.tasks.get_task(session, task_id)
            if task is None:
                raise LookupError(f"task {task_id} is gone from the database")
            if TaskState(task.state).is_final:
                return
        stop.wait(POLL_SECONDS)
    raise Stopped(task_id)


class TaskFigures(BaseModel):
    """What the task did and cost, as its rows say."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    repo: str
    setup: str | None
    state: str
    reason: str | None
    base_sha: str | None
    diff: str
    patch_complete: bool | None
    """False: the run ended early and the diff is what it had done (graded all the same)."""
    steps: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: float
    wall_seconds: float | None
    """From the worker's claim to the final state."""
    queued_seconds: float | None
    setup_seconds: float | None
    """From the set-up phase to the agent's start: the set-up (or its snapshot), and the agent's sandbox."""
    setup_cached: bool | None
    setup_script: str | None


def task_figures(sessions: sessionmaker[Session], task_id: str, budget: Budget) -> TaskFigures:
    with sessions() as session:
        task = store.tasks.get_task(session, task_id)
        if task is None:
            raise LookupError(f"task {task_id} is gone from the database")
        patch = store.patches.get_patch(session, task_id)
        setup_seconds, setup_cached, setup_script = _setup_time(session, task)
        spend = Spend(budget=budget, prompt_tokens=task.prompt_tokens, cached_tokens=task.cached_tokens,
                      completion_tokens=task.completion_tokens)  # fmt: skip
        return TaskFigures(
            task_id=task.id, repo=task.repo, setup=task.setup, state=task.state, reason=task.failure_reason,
            base_sha=task.base_sha, diff=patch.diff if patch else "", patch_complete=patch.complete if patch else None,
            steps=task.steps, prompt_tokens=task.prompt_tokens, cached_tokens=task.cached_tokens,
            completion_tokens=task.completion_tokens, cost=round(spend.cost, 6),
            wall_seconds=_seconds(task.started_at, task.finished_at),
            queued_seconds=_seconds(task.created_at, task.started_at),
            setup_seconds=setup_seconds, setup_cached=setup_cached, setup_script=setup_script,
        )  # fmt: skip


def _setup_time(session: Session, task: Task) -> tuple[float | None, bool | None, str | None]:
    began: datetime | None = None
    ended: datetime | None = None
    cached: bool | None = None
    script: str | None = None
    for row in store.events.list_events(session, task.id, limit=EARLY_EVENTS):
        try:
            event = store.events.read_event(row)
        except UnreadableEvent:
            continue
        if isinstance(event, PhaseEvent) and event.phase == "setup":
            began = row.created_at
        elif isinstance(event, PhaseEvent) and event.phase == "agent" and ended is None:
            ended = row.created_at
        elif isinstance(event, SetupEvent):
            cached, script = event.cached, event.script
    return _seconds(began, ended or (task.finished_at if began else None)), cached, script


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 2)
