"""Claims, fencing and recovery on both databases: each claim starts a numbered attempt, a superseded
attempt's writes are refused, and a task whose cancel was asked for never runs again."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

import store.attempts
import store.tasks
from store.attempts import Superseded
from store.models import Task, TaskState


def _running(session: Session, *, worker: str = "w1") -> tuple[str, int]:
    task_id = store.tasks.create_task(session, repo="https://example.com/r.git", ref=None, instruction="x").id
    attempt = store.attempts.claim(session, task_id, worker=worker, max_active_per_user=4)
    assert isinstance(attempt, int)
    return task_id, attempt


def test_each_claim_starts_the_next_attempt_and_the_old_one_is_fenced_off(session: Session) -> None:
    task_id, first = _running(session)
    store.attempts.fence(session, task_id, first)  # the owner may write
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    assert store.attempts.requeue_or_fail(session, task, max_attempts=3, reason="stopped beating") == "requeued"
    with pytest.raises(Superseded):  # put back to queued: the old attempt's writes are refused at once
        store.attempts.fence(session, task_id, first)
    second = store.attempts.claim(session, task_id, worker="w2", max_active_per_user=4)
    assert second == first + 1
    with pytest.raises(Superseded):
        store.attempts.beat(session, task_id, first)
    store.attempts.beat(session, task_id, second)
    assert store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.succeeded)
    with pytest.raises(Superseded):  # an ended task takes no more writes from any attempt
        store.attempts.fence(session, task_id, second)


def test_a_task_whose_worker_died_after_a_cancel_is_cancelled_not_requeued(session: Session) -> None:
    task_id, _ = _running(session)
    store.tasks.request_cancel(session, task_id)
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    assert store.attempts.requeue_or_fail(session, task, max_attempts=3, reason="stopped beating") == "cancelled"
    task = store.tasks.get_task(session, task_id)
    assert task is not None and task.state == "cancelled" and task.failure_reason == "cancelled by user"


def test_claim_never_clears_a_cancel_it_finalises_the_task_instead(session: Session) -> None:
    task_id, _ = _running(session)
    store.tasks.request_cancel(session, task_id)
    # The race the claim guards against: the task went back to queued while its cancel was being asked for.
    session.execute(update(Task).where(Task.id == task_id).values(state=TaskState.queued.value))
    assert store.attempts.claim(session, task_id, worker="w2", max_active_per_user=4) == "gone"
    task = store.tasks.get_task(session, task_id)
    assert task is not None and task.state == "cancelled" and task.attempt == 1 and task.cancel_requested
