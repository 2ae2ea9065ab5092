"""The store on both SQLite and PostgreSQL: the same code, the same answers."""

from __future__ import annotations

from sqlalchemy.orm import Session

import store.events
import store.patches
import store.tasks
from overnight.events import ToolCallEvent
from store.models import TaskState


def _task(session: Session) -> str:
    return store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="fix it").id


def test_new_task_is_queued_with_a_timestamp_and_a_first_event(session: Session) -> None:
    task_id = _task(session)
    session.commit()
    task = store.tasks.get_task(session, task_id)
    assert task is not None and task.state == "queued" and task.created_at.tzinfo is not None
    events = store.events.list_events(session, task_id)
    assert [(e.seq, e.type, e.data) for e in events] == [(1, "state", {"state": "queued"})]


def test_transitions_are_guarded_and_stamp_times(session: Session) -> None:
    task_id = _task(session)
    assert store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.preparing)
    # A second worker picking up the same message loses the race.
    assert not store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.preparing)
    assert store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.running)
    assert store.tasks.transition(
        session, task_id, from_states=[TaskState.running], to_state=TaskState.failed, reason="ref not found: 'x'"
    )
    session.expire_all()
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    assert task.state == "failed" and task.failure_reason == "ref not found: 'x'"
    assert task.started_at is not None and task.finished_at is not None and task.finished_at >= task.started_at
    states = [e.data["state"] for e in store.events.list_events(session, task_id) if e.type == "state"]
    assert states == ["queued", "preparing", "running", "failed"]


def test_events_are_ordered_per_task_and_resumable(session: Session) -> None:
    first, second = _task(session), _task(session)
    for n in range(5):
        store.events.append_event(session, first, ToolCallEvent(step=n, id=f"call_{n}", name="bash", arguments="{}"))
        store.events.append_event(session, second, ToolCallEvent(step=n, id=f"call_{n}", name="bash", arguments="{}"))
    seqs = [e.seq for e in store.events.list_events(session, first)]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert [e.data["step"] for e in store.events.list_events(session, first, after=3)] == [2, 3, 4]


def test_cancel_ends_a_queued_task_and_flags_a_preparing_or_running_one(session: Session) -> None:
    queued, preparing, running, ended = _task(session), _task(session), _task(session), _task(session)
    store.tasks.transition(session, preparing, from_states=[TaskState.queued], to_state=TaskState.preparing)
    store.tasks.transition(session, running, from_states=[TaskState.queued], to_state=TaskState.running)
    store.tasks.transition(session, ended, from_states=[TaskState.queued], to_state=TaskState.failed, reason="x")
    assert store.tasks.request_cancel(session, queued).state == "cancelled"  # type: ignore[union-attr]
    for active in (preparing, running):
        task = store.tasks.request_cancel(session, active)
        assert task is not None and task.state != "cancelled" and store.tasks.cancel_requested(session, active)
    assert store.tasks.request_cancel(session, ended).state == "failed" and not store.tasks.cancel_requested(
        session, ended
    )  # type: ignore[union-attr]


def test_patch_is_stored_and_replaced(session: Session) -> None:
    task_id = _task(session)
    store.patches.store_patch(
        session,
        task_id,
        base_sha="a" * 40,
        diff="diff --git a/x b/x\n",
        title="t",
        body="b",
        files_changed=1,
        complete=False,
    )
    store.patches.store_patch(session, task_id, base_sha="a" * 40, diff="", title="t2", body="b2", files_changed=0)
    session.expire_all()
    patch = store.patches.get_patch(session, task_id)
    assert patch is not None and patch.title == "t2" and patch.diff == "" and patch.complete


def test_list_filters_by_state_and_repo(session: Session) -> None:
    a = _task(session)
    b = store.tasks.create_task(session, repo="https://example.com/other.git", ref=None, instruction="x").id
    store.tasks.transition(session, a, from_states=[TaskState.queued], to_state=TaskState.running)
    assert [t.id for t in store.tasks.list_tasks(session, state="running")[0]] == [a]
    ids = [t.id for t in store.tasks.list_tasks(session, repo="https://example.com/other.git")[0]]
    assert ids == [b]


def test_usage_accumulates(session: Session) -> None:
    task_id = _task(session)
    store.tasks.add_usage(session, task_id, prompt=100, cached=64, completion=10)
    store.tasks.add_usage(session, task_id, prompt=150, cached=96, completion=5)
    session.expire_all()
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    assert (task.steps, task.prompt_tokens, task.cached_tokens, task.completion_tokens) == (2, 250, 160, 15)
