"""Keeping the database's promises when the broker or a worker lets go: every queued task has a message,
and no task stays preparing or running once its worker stopped beating.

Nobody can beat while the database is down, so right after an outage every heartbeat looks stale: the
reconciler takes tasks away from their workers only once the database has answered it for
``OVERNIGHT_WORKER_STALE_SECONDS`` in a row (the workers beat again meanwhile). A worker that lost its task
all the same (a long pause, a skewed clock) finds its writes refused and stops (``worker/attempt.py``)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy.orm import Session, configure_mappers, sessionmaker

import store.attempts
import store.bestof
from overnight.queue import TaskQueue
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker
from worker.attempt import database_unreachable

log = logging.getLogger(__name__)


def reconcile(
    sessions: sessionmaker[Session],
    queue: TaskQueue,
    *,
    stale_after: timedelta,
    lost_after: timedelta,
    max_attempts: int,
    recover_stale: bool = True,
) -> dict[str, list[str]]:
    """One pass: recover tasks of dead workers (unless ``recover_stale`` is False: the database was just
    down), then re-send every queued task not sent for a while."""
    done: dict[str, list[str]] = {"requeued": [], "failed": [], "cancelled": [], "resent": []}
    with sessions.begin() as session:
        for task in store.attempts.stale_active_tasks(session, older_than=stale_after) if recover_stale else ():
            outcome = store.attempts.requeue_or_fail(
                session, task, max_attempts=max_attempts, reason=f"worker {task.worker} stopped beating"
            )
            if outcome in done:
                done[outcome].append(task.id)
    with sessions.begin() as session:
        waiting = [task.id for task in store.attempts.lost_queued_tasks(session, older_than=lost_after)]
        unranked = store.bestof.due_groups(session, older_than=lost_after)  # every attempt ended; nobody ranks them
    # Queued tasks with no message: fewer messages wait than tasks (a broker restarted empty, a failed send).
    lost = (waiting if waiting and _depth(queue) < len(waiting) else []) + unranked
    for task_id in lost + done["requeued"]:
        queue.enqueue(task_id)  # a duplicate message is harmless: the task body checks the database
        with sessions.begin() as session:
            store.attempts.mark_enqueued(session, task_id)
        if task_id in lost:
            done["resent"].append(task_id)
    return done


def _depth(queue: TaskQueue) -> int:
    try:
        return queue.depth()
    except Exception:  # a queue that does not exist yet holds nothing
        return 0


def start_reconciler(settings: Settings, queue: TaskQueue) -> threading.Thread:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    # Now, before the thread: SQLAlchemy configures its mappers on the first query, under a global lock, and
    # a Celery pool process forked while this thread held that lock would wait for it forever.
    configure_mappers()

    def loop() -> None:
        answering_since: float | None = time.monotonic()  # since when the database has answered every pass
        while True:
            time.sleep(settings.worker.reconcile_seconds)
            now = time.monotonic()
            try:
                done = reconcile(
                    sessions, queue,
                    stale_after=timedelta(seconds=settings.worker.stale_seconds),
                    lost_after=timedelta(seconds=max(settings.worker.reconcile_seconds * 2, 30)),
                    max_attempts=settings.worker.task_max_attempts,
                    recover_stale=answering_since is not None
                    and now - answering_since >= settings.worker.stale_seconds,
                )  # fmt: skip
                if answering_since is None:
                    answering_since = now
                if any(done.values()):
                    log.warning("reconciled: %s", done)
            except Exception as exc:  # the reconciler must outlive a broker or database outage
                if not database_unreachable(exc):
                    log.exception("reconciler pass failed")
                    continue
                if answering_since is not None:  # once per outage
                    log.warning("reconciler: the database is unreachable (%s); waiting for it", type(exc).__name__)
                answering_since = None

    thread = threading.Thread(target=loop, name="overnight-reconciler", daemon=True)
    thread.start()
    return thread
