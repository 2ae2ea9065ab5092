"""Messages to a task on both databases: delivered at a step, oldest first and each once; dropped with the
reason by whatever ends the task; and never left pending when a message and the task's end race."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import store.attempts
import store.events
import store.messages
import store.tasks
from store.engine import make_sessionmaker
from store.messages import TaskEnded
from store.models import TaskState


def _running(session: Session) -> str:
    task_id = store.tasks.create_task(session, repo="https://example.com/r.git", ref=None, instruction="x").id
    assert isinstance(store.attempts.claim(session, task_id, worker="w1", max_active_per_user=4), int)
    return task_id


def _say(session: Session, task_id: str, text: str, mode: store.messages.MessageMode = "steer") -> int:
    return store.messages.add_message(session, task_id, mode=mode, text=text, author="alice", user_id=None).id


def test_pending_messages_of_a_mode_are_delivered_once_oldest_first_with_their_step(session: Session) -> None:
    task_id = _running(session)
    first, queued, second = (
        _say(session, task_id, "a"),
        _say(session, task_id, "q", "queue"),
        _say(session, task_id, "b"),
    )
    delivered = store.messages.deliver_pending(session, task_id, mode="steer", step=4)
    assert [(m.id, m.text, m.state, m.step) for m in delivered] == [
        (first, "a", "delivered", 4),
        (second, "b", "delivered", 4),
    ]
    assert store.messages.deliver_pending(session, task_id, mode="steer", step=5) == []
    assert store.messages.pending_count(session, task_id) == 1
    [held] = store.messages.deliver_pending(session, task_id, mode="queue", step=9)
    assert (held.id, held.step) == (queued, 9)
    events = [
        (row.type, row.data) for row in store.events.list_events(session, task_id) if row.type.startswith("message")
    ]
    assert events == [
        ("message_delivered", {"message_id": first, "mode": "steer", "step": 4, "author": "alice", "text": "a"}),
        ("message_delivered", {"message_id": second, "mode": "steer", "step": 4, "author": "alice", "text": "b"}),
        ("message_delivered", {"message_id": queued, "mode": "queue", "step": 9, "author": "alice", "text": "q"}),
    ]


@pytest.mark.parametrize("ending", ["succeeded", "failed", "worker-lost", "cancelled"])
def test_whatever_ends_a_task_drops_its_pending_messages_and_keeps_the_delivered_ones(
    session: Session, ending: str
) -> None:
    task_id = _running(session)
    delivered = _say(session, task_id, "seen")
    store.messages.deliver_pending(session, task_id, mode="steer", step=2)
    pending = _say(session, task_id, "never seen", "queue")
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    if ending == "worker-lost":
        assert store.attempts.requeue_or_fail(session, task, max_attempts=1, reason="stopped beating") == "failed"
    elif ending == "cancelled":
        store.tasks.request_cancel(session, task_id)
        assert store.attempts.requeue_or_fail(session, task, max_attempts=3, reason="stopped beating") == "cancelled"
    else:
        store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState(ending),
                               reason="boom" if ending == "failed" else None)  # fmt: skip
    messages = {m.id: m for m in store.messages.list_messages(session, task_id)}
    assert messages[delivered].state == "delivered" and messages[delivered].reason is None
    assert messages[pending].state == "dropped" and messages[pending].settled_at is not None
    ended = {"succeeded": "succeeded", "failed": "failed (boom)", "cancelled": "cancelled (cancelled by user)",
             "worker-lost": "failed (worker lost: stopped beating (after 1 attempts))"}[ending]  # fmt: skip
    assert messages[pending].reason == f"the task ended before it was delivered: {ended}"


def test_a_task_put_back_in_the_queue_gives_its_messages_to_the_next_attempt_again(session: Session) -> None:
    """The lost attempt's history, which held them, is gone; the next attempt starts a new one."""
    task_id = _running(session)
    steer, queued = _say(session, task_id, "seen by the lost attempt"), _say(session, task_id, "later", "queue")
    store.messages.deliver_pending(session, task_id, mode="steer", step=3)
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    assert store.attempts.requeue_or_fail(session, task, max_attempts=3, reason="stopped beating") == "requeued"
    assert [(m.id, m.state, m.step) for m in store.messages.list_messages(session, task_id)] == [
        (steer, "pending", None),
        (queued, "pending", None),
    ]
    store.tasks.request_cancel(session, task_id)  # a queued task ends at once: both dropped, none left pending
    assert {m.state for m in store.messages.list_messages(session, task_id)} == {"dropped"}


def test_a_message_to_an_ended_or_unknown_task_raises_task_ended(session: Session) -> None:
    task_id = _running(session)
    store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.cancelled)
    with pytest.raises(TaskEnded) as ended:
        _say(session, task_id, "too late")
    assert ended.value.state == "cancelled"
    with pytest.raises(TaskEnded) as unknown:
        _say(session, "0" * 16, "nobody")
    assert unknown.value.state is None
    assert store.messages.list_messages(session, task_id) == []


def test_a_message_sent_while_the_task_is_ending_is_refused_or_dropped_never_left_pending(engine: Engine) -> None:
    """The task's end is written and held uncommitted while another connection sends a message: the send waits
    for the end's commit and is refused; sent first and committed, the end drops it."""
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        task_id = _running(session)
    outcome: list[object] = []

    def send() -> None:
        try:
            with sessions.begin() as session:
                outcome.append(_say(session, task_id, "racing the end"))
        except TaskEnded as exc:
            outcome.append(exc)

    with sessions.begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.succeeded)
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.5)
        assert outcome == []  # waiting for the end's transaction
    sender.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], TaskEnded) and outcome[0].state == "succeeded"
    with sessions.begin() as session:
        other = _running(session)
        message = _say(session, other, "sent first")
    with sessions.begin() as session:
        store.tasks.transition(session, other, from_states=[TaskState.preparing], to_state=TaskState.succeeded)
    with sessions() as session:
        assert [(m.id, m.state) for m in store.messages.list_messages(session, other)] == [(message, "dropped")]
