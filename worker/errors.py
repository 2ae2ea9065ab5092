"""The worker's errors, and how a run that raised one ends: the one-line reason a person reads, whether the
ending was expected (anything else is logged with its traceback), and whether the partial diff is kept.

Every way a task ends goes through :func:`failure_reason`: a readable :class:`TaskFailure` says what went
wrong in its own words (``clone failed: ref 'dev' not found``); an ending of the agent's or the sandbox's
says its own; anything else is an ``internal error: …``.
"""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from agent.base import AgentError, Cancelled, LimitsExceeded
from sandbox.base import SandboxDiskFullError, SandboxError
from worker.attempt import database_unreachable


class WorkerError(Exception):
    """Root of the worker's own errors."""


class TaskFailure(WorkerError):
    """A task step failed for a reason a person can read; the message becomes the task's failure reason."""


class GitMemoryError(WorkerError, MemoryError):
    """Git needed more memory than it may use on the worker (``worker/hostgit.py``)."""


class PublishError(WorkerError):
    """Pushing the branch failed; the message is readable and holds no secret."""


EXPECTED_ENDINGS = (Cancelled, LimitsExceeded, TaskFailure, AgentError, SandboxError, SoftTimeLimitExceeded)
"""How a task may end without anything being wrong with the worker: no traceback is logged for these."""
PARTIAL_DIFF_ENDINGS = (LimitsExceeded, SandboxDiskFullError, SoftTimeLimitExceeded)
"""Endings after which the agent's work so far is kept, marked incomplete (a cancel keeps it too)."""


def expected(exc: BaseException) -> bool:
    return isinstance(exc, EXPECTED_ENDINGS)


def keeps_partial_diff(exc: BaseException) -> bool:
    return isinstance(exc, PARTIAL_DIFF_ENDINGS)


def failure_reason(exc: BaseException) -> str:
    """The one line a failed task ends with."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return "task time limit exceeded"
    if isinstance(exc, SandboxError):
        return f"sandbox: {exc}"
    if isinstance(exc, EXPECTED_ENDINGS):
        return str(exc)
    if isinstance(exc, DBAPIError) and database_unreachable(exc):
        return f"internal error: the database could not be reached ({str(exc.orig).strip().splitlines()[0]})"
    return f"internal error: {type(exc).__name__}: {exc}"
