"""Handing a committed task to the workers, for every route that creates one (tasks and GitHub requests)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

import store.attempts
import store.tasks
from overnight.queue import TaskQueue
from store.models import TaskState

log = logging.getLogger(__name__)


def enqueue_or_fail(session: Session, queue: TaskQueue, task_id: str) -> bool:
    """Hand a committed task to the workers; a broker that cannot take it fails the task with that reason (it
    must not stay queued with no message). False when that happened."""
    try:
        queue.enqueue(task_id)
    except Exception as exc:  # any broker failure
        log.exception("could not enqueue task %s", task_id)
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.failed,
                         reason=f"could not enqueue the task: broker unreachable ({type(exc).__name__})")  # fmt: skip
        session.commit()
        return False
    store.attempts.mark_enqueued(session, task_id)
    session.commit()
    return True
