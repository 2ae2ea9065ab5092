"""A task run as N attempt tasks, on SQLite and PostgreSQL: the group runs from its first attempt's claim, each
attempt's end is an event on the group, the ranking is due (and claimed once) only when every attempt ended, the
group counts for neither the concurrency limit nor the quota (its attempts do), lists hide attempt tasks, and a
cancel of the group cancels every attempt."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import store.attempts
import store.bestof
import store.events
import store.tasks
import store.users
from store.bestof import RankEntry
from store.engine import make_sessionmaker
from store.models import Task, TaskState, User


def _group(session: Session, count: int = 3, user_id: int | None = None) -> tuple[Task, list[Task]]:
    group = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="fix it",
                                    user_id=user_id)  # fmt: skip
    return group, store.bestof.add_attempts(session, group, count)


def _end(session: Session, task: Task, state: TaskState, reason: str | None = None) -> None:
    assert store.tasks.transition(session, task.id, from_states=[TaskState.queued, TaskState.preparing,
                                  TaskState.running], to_state=state, reason=reason)  # fmt: skip


def test_attempt_tasks_copy_the_task_and_are_numbered(session: Session) -> None:
    group, attempts = _group(session)
    assert group.attempts == 3 and [a.attempt_index for a in attempts] == [1, 2, 3]
    assert {(a.kind, a.attempt_of, a.repo, a.ref, a.instruction, a.attempts) for a in attempts} == {
        ("attempt", group.id, group.repo, "main", "fix it", 1)
    }
    assert store.bestof.attempt_task(session, group.id, 2).id == attempts[1].id  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="from 2 to 8"):
        store.bestof.add_attempts(session, group, 9)


def test_the_group_runs_from_its_first_claim_and_is_ranked_once_every_attempt_ended(session: Session) -> None:
    group, attempts = _group(session)
    assert store.attempts.claim(session, attempts[0].id, worker="w", max_active_per_user=4) == 1
    assert session.get(Task, group.id).state == "running"  # type: ignore[union-attr]
    _end(session, attempts[0], TaskState.succeeded)
    _end(session, attempts[1], TaskState.failed, "step budget exhausted")
    assert not store.bestof.ranking_due(session, group.id)
    assert store.bestof.claim_ranking(session, group.id, worker="w", max_active_per_user=4) is None
    _end(session, attempts[2], TaskState.cancelled, "cancelled by user")
    assert store.bestof.ranking_due(session, group.id)
    assert store.bestof.due_groups(session, older_than=timedelta(0)) == [group.id]
    assert store.bestof.claim_ranking(session, group.id, worker="w", max_active_per_user=4) == 1
    assert store.bestof.claim_ranking(session, group.id, worker="v", max_active_per_user=4) is None  # one ranks
    assert not store.bestof.ranking_due(session, group.id)
    ended = [(e.type, e.data) for e in store.events.list_events(session, group.id) if e.type == "attempt_ended"]
    assert ended == [
        ("attempt_ended", {"attempt": 1, "task_id": attempts[0].id, "state": "succeeded"}),
        ("attempt_ended", {"attempt": 2, "task_id": attempts[1].id, "state": "failed",
                           "reason": "step budget exhausted"}),
        ("attempt_ended", {"attempt": 3, "task_id": attempts[2].id, "state": "cancelled",
                           "reason": "cancelled by user"}),
    ]  # fmt: skip


def test_the_group_counts_for_neither_the_concurrency_limit_nor_the_quota(session: Session) -> None:
    user = User(name="bestof-user")
    session.add(user)
    session.flush()
    group, attempts = _group(session, 2, user_id=user.id)
    assert store.users.unfinished_tasks_locked(session, user.id) == 2  # its attempts, not the group
    assert store.attempts.claim(session, attempts[0].id, worker="w", max_active_per_user=2) == 1
    # The group is running now, but only attempt 1 counts: attempt 2 may start with a limit of 2.
    assert store.attempts.claim(session, attempts[1].id, worker="w", max_active_per_user=2) == 1
    tasks, _ = store.tasks.list_tasks(session, user=user)
    assert [t.id for t in tasks] == [group.id]
    everything, _ = store.tasks.list_tasks(session, user=user, include_attempts=True)
    assert {t.id for t in everything} == {group.id, *(a.id for a in attempts)}
    assert [t.id for t in store.attempts.lost_queued_tasks(session, older_than=timedelta(0))
            if t.id == group.id] == []  # fmt: skip


def test_cancelling_the_group_cancels_every_attempt_and_leaves_it_to_be_ranked(session: Session) -> None:
    group, attempts = _group(session)
    assert store.attempts.claim(session, attempts[0].id, worker="w", max_active_per_user=4) == 1
    store.bestof.cancel_group(session, group.id)
    states = {a.id: session.get(Task, a.id) for a in attempts}
    assert states[attempts[0].id].cancel_requested and states[attempts[0].id].state == "preparing"  # type: ignore[union-attr]
    assert [states[a.id].state for a in attempts[1:]] == ["cancelled", "cancelled"]  # type: ignore[union-attr]
    assert session.get(Task, group.id).cancel_requested  # type: ignore[union-attr]
    assert not store.bestof.ranking_due(session, group.id)
    _end(session, attempts[0], TaskState.cancelled, "cancelled by user")
    assert store.bestof.ranking_due(session, group.id)
    # cancel_group commits (on SQLite past the fixture's savepoint): leave nothing running for other tests' lists
    store.tasks.transition(session, group.id, from_states=[TaskState.running], to_state=TaskState.cancelled)
    session.commit()


def test_ranking_puts_passing_tests_before_size_and_size_before_number() -> None:
    def entry(k: int, passed: bool | None, size: int | None) -> RankEntry:
        return RankEntry(attempt=k, task_id=str(k), state="succeeded", passed=passed, patch_bytes=size, rank=0,
                         reason="")  # fmt: skip

    ranked = store.bestof.rank(
        [entry(1, False, 10), entry(2, True, 900), entry(3, True, 300), entry(4, None, 5), entry(5, True, 300),
         entry(6, None, None), entry(7, None, 0)],
        usable={1, 2, 3, 4, 5, 7},
    )  # fmt: skip
    # 7 found no change needed: after 4's change, though smaller; 6 left no patch at all.
    assert [(e.attempt, e.rank) for e in ranked] == [(3, 1), (5, 2), (2, 3), (4, 4), (7, 5), (1, 6), (6, 7)]


def test_two_attempts_ending_at_once_append_in_turn_and_the_later_sees_the_ranking_due(engine: Engine) -> None:
    """Attempt 1's end is held uncommitted while attempt 2 ends on another connection: attempt 2's end waits for
    the task's row, then appends after it (no clash of sequence numbers) and sees every attempt ended."""
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        group, attempts = _group(session, 2)
        group_id, (first, second) = group.id, [a.id for a in attempts]
        for task_id in (first, second):
            store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running)
    seen: list[bool] = []

    def end_second() -> None:
        with sessions.begin() as session:
            store.tasks.transition(session, second, from_states=[TaskState.running], to_state=TaskState.succeeded)
            seen.append(store.bestof.ranking_due(session, group_id))

    with sessions.begin() as session:
        store.tasks.transition(session, first, from_states=[TaskState.running], to_state=TaskState.failed,
                               reason="boom")  # fmt: skip
        assert not store.bestof.ranking_due(session, group_id)  # attempt 2 still runs, as this one sees it
        other = threading.Thread(target=end_second)
        other.start()
        time.sleep(0.5)
        assert seen == []  # waiting for the task's row
    other.join(timeout=30)
    assert seen == [True]
    with sessions() as session:
        ended = [(e.seq, e.data["attempt"]) for e in store.events.list_events(session, group_id)
                 if e.type == "attempt_ended"]  # fmt: skip
        assert [attempt for _, attempt in ended] == [1, 2] and ended[0][0] < ended[1][0]


def test_a_ranking_waits_while_its_user_is_at_the_limit_and_holds_a_slot_while_it_runs(session: Session) -> None:
    user = User(name="bestof-limit")
    session.add(user)
    session.flush()
    group, attempts = _group(session, 2, user_id=user.id)
    for attempt in attempts:
        _end(session, attempt, TaskState.failed, "boom")
    other = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref=None, instruction="x",
                                    user_id=user.id)  # fmt: skip
    assert store.attempts.claim(session, other.id, worker="w", max_active_per_user=1) == 1
    assert store.bestof.claim_ranking(session, group.id, worker="w", max_active_per_user=1) == "busy"
    _end(session, other, TaskState.succeeded)
    assert store.bestof.claim_ranking(session, group.id, worker="w", max_active_per_user=1) == 1
    late = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref=None, instruction="y",
                                   user_id=user.id)  # fmt: skip
    assert store.attempts.claim(session, late.id, worker="w", max_active_per_user=1) == "busy"  # the ranking holds it
