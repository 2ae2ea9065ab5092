"""One attempt at a task, as the worker running it sees the database: every write is fenced by the attempt
number (a superseded attempt's writes are refused and it stops itself) and retried while the database is
unreachable; a watcher thread beats the heartbeat and stops the sandbox's command on a cancel or when the
attempt was superseded."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

import store.attempts
from sandbox.base import Sandbox
from store.attempts import Superseded

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Attempt", "Superseded", "Watch", "database_unreachable"]


def database_unreachable(exc: BaseException) -> bool:
    """A failure that says nothing about the write itself: the database is down, restarting, or locked."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Attempt:
    """Attempt ``number`` of task ``task_id``: its reads and writes, retried for up to ``retry_seconds`` while
    the database cannot be reached; a write raises :class:`Superseded` once the attempt no longer owns the task."""

    def __init__(self, sessions: sessionmaker[Session], task_id: str, number: int, *, retry_seconds: float) -> None:
        self.sessions, self.task_id, self.number = sessions, task_id, number
        self.retry_seconds = retry_seconds

    def write(self, change: Callable[[Session], T]) -> T:
        """``change`` in a transaction that first checks (and, until it commits, holds) this attempt's claim."""

        def once() -> T:
            with self.sessions.begin() as session:
                store.attempts.fence(session, self.task_id, self.number)
                return change(session)

        return self._retrying()(once)

    def read(self, query: Callable[[Session], T]) -> T:
        def once() -> T:
            with self.sessions() as session:
                return query(session)

        return self._retrying()(once)

    def beat(self) -> bool:
        """One heartbeat (not retried: the watcher beats again soon); True when the user asked to cancel."""
        with self.sessions.begin() as session:
            return store.attempts.beat(session, self.task_id, self.number)

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(database_unreachable),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential(multiplier=0.25, max=5),
            before_sleep=self._waiting,
            reraise=True,
        )

    def _waiting(self, state: RetryCallState) -> None:
        if state.attempt_number == 1:
            error = state.outcome.exception() if state.outcome else None
            log.warning("task %s: the database is unreachable (%s); retrying for up to %g s",
                        self.task_id, type(error).__name__, self.retry_seconds)  # fmt: skip


class Watch:
    """Beats the attempt's heartbeat; when the user cancels, or the attempt turns out superseded, stops the
    command running in its sandbox (set-up included)."""

    def __init__(self, attempt: Attempt, heartbeat_seconds: float) -> None:
        self.attempt, self.heartbeat_seconds = attempt, heartbeat_seconds
        self.sandbox: Sandbox | None = None
        self.cancelled = threading.Event()
        self.superseded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{attempt.task_id}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        return self.cancelled.is_set() or self.superseded.is_set()

    def attach(self, sandbox: Sandbox | None) -> None:
        self.sandbox = sandbox
        if sandbox is not None and self.stopping:
            sandbox.interrupt()

    def _interrupt(self) -> None:
        if self.sandbox is not None:
            self.sandbox.interrupt()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(min(self.heartbeat_seconds, 1.0)):
            try:
                cancel = self.attempt.beat()
            except Superseded:
                log.warning(
                    "task %s: attempt %d was superseded; stopping it", self.attempt.task_id, self.attempt.number
                )
                self.superseded.set()
                self._interrupt()
                return
            except Exception as exc:  # a missed beat is not worth the task; say so once per outage
                if not failing:
                    log.warning("heartbeat of task %s failed: %s: %s", self.attempt.task_id, type(exc).__name__, exc)
                failing = True
                continue
            if failing:
                log.info("heartbeat of task %s is back", self.attempt.task_id)
                failing = False
            if cancel and not self.cancelled.is_set():
                self.cancelled.set()
                self._interrupt()
