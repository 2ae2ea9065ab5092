"""One attempt at a task, as the worker running it sees the database: every write is fenced by the attempt
number (a superseded attempt's writes are refused and it stops itself) and retried while the database is
unreachable; its :class:`Watch` beats the heartbeat, and is the one thing that says whether the attempt
should stop and why (its user cancelled, or it was superseded), stopping the sandbox's command when so."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

import store.attempts
import store.tasks
from agent.base import Cancelled
from sandbox.base import Sandbox
from store.attempts import CANCELLED_BY_USER, Superseded

log = logging.getLogger(__name__)
T = TypeVar("T")

StopReason = Literal["cancelled", "superseded"]

__all__ = ["Attempt", "StopReason", "Superseded", "Watch", "database_unreachable"]


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
    """The one answer to "should this attempt stop, and why", asked by every stage of the task's way (between
    stages, between agent steps, while a model call streams, on the way out).

    A thread beats the attempt's heartbeat, which also reads whether the user asked to cancel; when they did,
    or the attempt turns out superseded, the command running in the attached sandbox (set-up included) is
    stopped. Between agent steps and on the way out the database is asked at once (``ask``), not a beat later.
    A reason, once found, stays."""

    def __init__(self, attempt: Attempt, heartbeat_seconds: float) -> None:
        self.attempt, self.heartbeat_seconds = attempt, heartbeat_seconds
        self.sandbox: Sandbox | None = None
        self._cancelled = threading.Event()
        self._superseded = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch-{attempt.task_id}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def stop_reason(self, *, ask: bool = False) -> StopReason | None:
        """Why the attempt should stop, or None; ``ask``: ask the database whether the user cancelled (when it
        does not answer, what the heartbeat found decides)."""
        if self._superseded.is_set():
            return "superseded"
        if not self._cancelled.is_set() and ask and self._cancel_requested():
            self._stopping(self._cancelled)
        return "cancelled" if self._cancelled.is_set() else None

    def should_stop(self) -> bool:
        """For the agent loop, asked before each step."""
        return self.stop_reason(ask=True) is not None

    def check(self) -> None:
        """Raise :class:`Superseded` or :class:`Cancelled` if the attempt should stop."""
        reason = self.stop_reason()
        if reason == "superseded":
            raise Superseded(f"attempt {self.attempt.number} of task {self.attempt.task_id} was superseded")
        if reason == "cancelled":
            raise Cancelled(CANCELLED_BY_USER)

    def attach(self, sandbox: Sandbox | None) -> None:
        """The sandbox whose command a stop kills (None: none now). Raises as :meth:`check` does when the
        attempt is stopping already: a stop found while the sandbox started had no command to kill, and no
        command is to start in it."""
        self.sandbox = sandbox
        if sandbox is not None:
            self.check()

    def _cancel_requested(self) -> bool:
        try:
            with self.attempt.sessions() as session:
                return store.tasks.cancel_requested(session, self.attempt.task_id)
        except Exception:
            return False

    def _stopping(self, reason: threading.Event) -> None:
        with self._lock:  # found by both threads at once, the command is stopped once (not the next one)
            if reason.is_set():
                return
            reason.set()
            sandbox = self.sandbox
        if sandbox is not None:
            sandbox.interrupt()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(min(self.heartbeat_seconds, 1.0)):
            try:
                cancel = self.attempt.beat()
            except Superseded:
                log.warning(
                    "task %s: attempt %d was superseded; stopping it", self.attempt.task_id, self.attempt.number
                )
                self._stopping(self._superseded)
                return
            except Exception as exc:  # a missed beat is not worth the task; say so once per outage
                if not failing:
                    log.warning("heartbeat of task %s failed: %s: %s", self.attempt.task_id, type(exc).__name__, exc)
                failing = True
                continue
            if failing:
                log.info("heartbeat of task %s is back", self.attempt.task_id)
                failing = False
            if cancel:
                self._stopping(self._cancelled)
