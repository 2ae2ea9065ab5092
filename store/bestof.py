"""Best-of-N attempts: a task run as N *attempt tasks* (kind ``attempt``, ``attempt_of`` the task, ``attempt_index``
K from 1 to N), each with its own sandbox, events, patch, trajectory and cost, then ranked.

The task itself (the *group*) is never claimed for an agent run. It goes ``queued → running`` when its first
attempt is claimed, stays running while any attempt has not ended, and ends once its ranking is stored: the
ranking is worker work of its own (``worker/bestof.py``), claimed with :func:`claim_ranking` once every attempt
ended — a conditional update of the group that sees every attempt final, so however many workers try, one
ranks. An attempt's end is written to the group (an ``attempt_ended`` event) in the same transaction as the
attempt's final state, after the group's row is locked: two attempts ending at once append in turn, and the
one that ends last sees the others ended.

Not to be confused with ``Task.attempt`` (``store/attempts.py``): the claim counter that fences a worker's writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

import store.events
import store.patches
import store.tasks
import store.users
from overnight.events import AttemptEndedEvent, AttemptsRankedEvent, TaskStateName
from store.models import FINAL_STATES, Task, TaskState, utcnow

MAX_ATTEMPTS = 8
ATTEMPT_KIND = "attempt"
OUTPUT_TAIL = 2000
"""Characters of a check's output kept in the ranking."""


class RankEntry(BaseModel):
    """One attempt in the ranking, and why it stands where it does."""

    model_config = ConfigDict(extra="forbid")

    attempt: int
    """K, from 1 to N."""
    task_id: str
    state: str
    failure_reason: str | None = None
    test_command: str | None = None
    """What the check ran: the last test command the attempt's agent ran that passed (else another attempt's)."""
    passed: bool | None = None
    """Whether the command passed on the attempt's patch in a fresh sandbox; None: not checked (no command)."""
    exit_code: int | None = None
    output_tail: str | None = None
    patch_bytes: int | None = None
    """Size of the attempt's diff; None: it left no patch."""
    files_changed: int | None = None
    rank: int
    """1 is the best."""
    reason: str
    """One line: "tests pass; 1.2 KB", "tests fail", "no patch: <why>"."""


class Ranking(BaseModel):
    """What a task with attempts stores once they all ended (``tasks.ranking``)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    best: int | None
    """K of the attempt whose patch the task took; None when none left one."""
    checked: bool = True
    """False when the checks were skipped (the task was cancelled, or the checks could not run)."""
    ranked_at: datetime = Field(default_factory=utcnow)
    entries: list[RankEntry]
    """Best first."""


# --- creating ---------------------------------------------------------------------------------------


def add_attempts(session: Session, group: Task, count: int) -> list[Task]:
    """Make ``group`` a task of ``count`` attempts (2..MAX_ATTEMPTS): its attempt tasks, queued, in the caller's
    transaction (enqueue them after the commit). An attempt of a follow-up starts from the same parent's patch."""
    if not 2 <= count <= MAX_ATTEMPTS:
        raise ValueError(f"attempts must be from 2 to {MAX_ATTEMPTS} here, not {count}")
    group.attempts = count
    follows = group.parent_id if group.kind == "follow-up" else None
    made = []
    for index in range(1, count + 1):
        task = store.tasks.create_task(
            session, repo=group.repo, ref=group.ref, instruction=group.instruction, max_steps=group.max_steps,
            setup=group.setup, user_id=group.user_id, parent_id=follows, kind=ATTEMPT_KIND,
            start_diff=group.start_diff,
        )  # fmt: skip
        task.attempt_of, task.attempt_index = group.id, index
        made.append(task)
    session.flush()
    return made


def has_attempts(task: Task) -> bool:
    return task.attempts > 1


def attempts_of(session: Session, group_id: str) -> Sequence[Task]:
    """The attempt tasks of ``group_id``, by K."""
    return session.scalars(select(Task).where(Task.attempt_of == group_id).order_by(Task.attempt_index)).all()


def attempt_task(session: Session, group_id: str, index: int) -> Task | None:
    return session.scalar(select(Task).where(Task.attempt_of == group_id, Task.attempt_index == index))


USAGE = ("steps", "prompt_tokens", "cached_tokens", "completion_tokens", "sandbox_seconds")


def usage_with_attempts(session: Session, group_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """For each task with attempts among ``group_ids``: its attempts' steps, tokens and sandbox seconds added to its
    own (the ranking's checks), as a task shows them. The rows keep their own counts, so sums over tasks (metrics)
    count each once."""
    columns = [func.sum(getattr(Task, name)) for name in USAGE]
    rows = session.execute(
        select(Task.attempt_of, *columns).where(Task.attempt_of.in_(list(group_ids))).group_by(Task.attempt_of)
    ).all()
    own = {task.id: task for task in session.scalars(select(Task).where(Task.id.in_([row[0] for row in rows])))}
    return {
        row[0]: {name: getattr(own[row[0]], name) + (row[i + 1] or 0) for i, name in enumerate(USAGE)} for row in rows
    }


# --- following the attempts (hooks of store.attempts.claim and store.tasks.transition) ----------------


def attempt_claimed(session: Session, task_id: str) -> None:
    """An attempt task was claimed: its group is running from now (the first claim moves it)."""
    group_id = session.scalar(select(Task.attempt_of).where(Task.id == task_id))
    if group_id is not None:
        store.tasks.transition(session, group_id, from_states=[TaskState.queued], to_state=TaskState.running,
                               started_at=utcnow())  # fmt: skip


def attempt_ended(session: Session, task_id: str, state: TaskState, reason: str | None) -> None:
    """A task reached a final state; an attempt task's end is written to its group (its row locked first, so that
    the group's events keep their order and the last attempt to end sees every other one ended)."""
    row = session.execute(select(Task.attempt_of, Task.attempt_index).where(Task.id == task_id)).first()
    if row is None or row.attempt_of is None:
        return
    session.execute(update(Task).where(Task.id == row.attempt_of).values(updated_at=utcnow()))
    name = cast(TaskStateName, state.value)
    event = AttemptEndedEvent(attempt=row.attempt_index or 0, task_id=task_id, state=name)
    if reason:
        event = AttemptEndedEvent(attempt=row.attempt_index or 0, task_id=task_id, state=name, reason=reason)
    store.events.append_event(session, row.attempt_of, event)


def group_of(session: Session, task_id: str) -> str | None:
    return session.scalar(select(Task.attempt_of).where(Task.id == task_id))


def _unfinished_attempts(group_id: str) -> Any:
    return (
        select(func.count())
        .select_from(Task)
        .where(Task.attempt_of == group_id, Task.state.not_in([s.value for s in FINAL_STATES]))
        .scalar_subquery()
    )


def ranking_due(session: Session, group_id: str) -> bool:
    """Every attempt of the group ended, and nobody ranked them or is ranking them."""
    group = session.execute(  # columns, not the row: what this transaction's updates made of them
        select(Task.attempts, Task.ranking, Task.state, Task.heartbeat_at).where(Task.id == group_id)
    ).first()
    if group is None or group.attempts <= 1 or group.ranking is not None:
        return False
    if TaskState(group.state).is_final or (group.state == TaskState.running.value and group.heartbeat_at):
        return False
    return not session.scalar(select(_unfinished_attempts(group_id)))


def due_groups(session: Session, *, older_than: timedelta) -> list[str]:
    """Groups whose attempts all ended, not ranked, with nobody ranking them, last sent to the workers (if ever)
    longer ago than ``older_than``: the reconciler sends them (again)."""
    limit = utcnow() - older_than
    candidates = session.scalars(
        select(Task.id).where(
            Task.attempts > 1,
            Task.ranking.is_(None),
            Task.state.in_([TaskState.queued.value, TaskState.running.value]),
            (Task.state == TaskState.queued.value) | Task.heartbeat_at.is_(None),
            (Task.enqueued_at < limit) | Task.enqueued_at.is_(None),
        )
    ).all()
    return [group_id for group_id in candidates if ranking_due(session, group_id)]


def claim_ranking(
    session: Session, group_id: str, *, worker: str, max_active_per_user: int
) -> int | Literal["busy"] | None:
    """Start ranking the group: its claim number (``Task.attempt``, which fences the ranking's writes as any
    attempt's), "busy" when its user is at the concurrency limit (the ranking runs a sandbox per attempt: it waits
    as a task would), or None when it is not for ranking now (attempts still run, it was ranked, someone ranks it)."""
    if not ranking_due(session, group_id):
        return None
    user_id = session.scalar(select(Task.user_id).where(Task.id == group_id))
    if user_id is not None and store.users.active_tasks_locked(session, user_id) >= max_active_per_user:
        return "busy"
    store.tasks.transition(session, group_id, from_states=[TaskState.queued], to_state=TaskState.running,
                           heartbeat_at=None)  # fmt: skip
    claimed = session.execute(
        update(Task)
        .where(Task.id == group_id, Task.state == TaskState.running.value, Task.heartbeat_at.is_(None),
               Task.ranking.is_(None), _unfinished_attempts(group_id) == 0)
        .values(attempt=Task.attempt + 1, worker=worker, heartbeat_at=utcnow(), updated_at=utcnow())
    )  # fmt: skip
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return int(session.scalar(select(Task.attempt).where(Task.id == group_id)) or 0)


# --- ranking --------------------------------------------------------------------------------------


def size_text(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.1f} MB"


def rank(entries: list[RankEntry], *, usable: set[int]) -> list[RankEntry]:
    """Best first: attempts whose patch may be taken (``usable``: K of those that ended with one), then tests
    passing (passed, then not checked, then failing), then the smaller patch (an empty one, "no changes needed",
    after every change: the task asked for one), then the lower K. Ranks are set."""

    def key(entry: RankEntry) -> tuple[int, int, bool, int, int]:
        tests = {True: 0, None: 1, False: 2}[entry.passed]
        size = entry.patch_bytes or 0
        return (0 if entry.attempt in usable else 1, tests, size == 0, size, entry.attempt)

    ordered = sorted(entries, key=key)
    return [entry.model_copy(update={"rank": place}) for place, entry in enumerate(ordered, start=1)]


def store_ranking(session: Session, group_id: str, ranking: Ranking, best_task_id: str | None) -> None:
    """The ranking on the group, its ``attempts_ranked`` event, and the best attempt's patch as the group's own
    (the caller may then set its diffstat and mbox from the commit it made). Fenced by the caller."""
    group = session.get(Task, group_id)
    assert group is not None
    group.ranking = ranking.model_dump(mode="json")
    best = store.patches.get_patch(session, best_task_id) if best_task_id is not None else None
    if best is not None:
        group.base_sha = best.base_sha
        copy = store.patches.store_patch(
            session, group_id, base_sha=best.base_sha, diff=best.diff, title=best.title, body=best.body,
            files_changed=best.files_changed, complete=best.complete, excluded=list(best.excluded),
        )  # fmt: skip
        copy.diffstat, copy.commit_message, copy.mbox = best.diffstat, best.commit_message, best.mbox
    order = [entry.attempt for entry in ranking.entries]
    store.events.append_event(session, group_id, AttemptsRankedEvent(best=ranking.best, order=order))


def ranking_of(session: Session, group_id: str) -> Ranking | None:
    """The stored ranking of a task with attempts (None before its attempts were ranked, or without attempts)."""
    group = session.get(Task, group_id)
    if group is None or group.ranking is None:
        return None
    return Ranking.model_validate(group.ranking)


def fail_unsent(session: Session, group_id: str, *, reason: str | None) -> None:
    """The attempts of ``group_id`` still queued and never sent end failed with ``reason`` (the broker could not
    take one of them); committed here. No-op for a task without attempts."""
    for task in attempts_of(session, group_id):
        if task.state == TaskState.queued.value and task.enqueued_at is None:
            store.tasks.transition(session, task.id, from_states=[TaskState.queued], to_state=TaskState.failed,
                                   reason=reason)  # fmt: skip
            session.commit()


# --- cancelling -----------------------------------------------------------------------------------


def cancel_group(session: Session, group_id: str) -> None:
    """Cancel every attempt (a queued one ends at once, a running one within seconds) and mark the group, each
    in a transaction of its own, committed here: an attempt's end locks the attempt's row, then the group's,
    the order a worker's end takes too."""
    for task in attempts_of(session, group_id):
        if not TaskState(task.state).is_final:
            store.tasks.request_cancel(session, task.id)
            session.commit()
    session.execute(
        update(Task)
        .where(Task.id == group_id, Task.state.not_in([s.value for s in FINAL_STATES]))
        .values(cancel_requested=True, updated_at=utcnow())
    )
    session.commit()
