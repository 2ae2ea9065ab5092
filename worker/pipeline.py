"""One task, start to end, as stages (the ones up to the patch are in ``worker/stages.py``):

    claim → workspace → clone → start-diff → set-up → sandbox → agent → patch → publish → finish

The database is the source of truth; a message from the broker only says "look at this task". So the body
is idempotent: a task already ended, or running on a live worker, is left alone; one whose worker stopped
beating starts a clean new attempt (or fails with "worker lost" after the last one). The task's row is read
once, when it is claimed. Every way out leaves the task in a final state with a one-line reason
(``worker/errors.py``), and the sandbox and workspace removed — except for an attempt that was superseded
(the reconciler gave the task to another): its writes are refused (see ``worker/attempt.py``), and it stops
without writing anything more.

Whether the task should stop, and why, is the attempt's :class:`~worker.attempt.Watch`'s to say, and only
its: it is asked before every stage, by the agent loop before each step, while a model call streams, and once
more when a run ends early; it kills the command running in the sandbox of the moment (set-up included).
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import ExitStack
from typing import Literal

from sqlalchemy.orm import Session

import store.attempts
import store.tasks
import worker.bestof
from agent.base import Submitted
from sandbox.reaper import remove_owned
from store.attempts import CANCELLED_BY_USER
from store.models import TaskState
from worker import errors
from worker.attempt import Attempt, Superseded, Watch
from worker.context import TaskHooks, WorkerContext
from worker.records import event_sink, store_trajectory
from worker.stages import STAGES, AttemptRun, ClaimedTask, keep_patch

__all__ = ["Outcome", "TaskHooks", "WorkerContext", "run_task"]

log = logging.getLogger(__name__)
Outcome = Literal["ran", "busy", "skipped"]


def run_task(task_id: str, ctx: WorkerContext) -> Outcome:
    """Run task ``task_id`` if nobody else is; "busy" means its user is at the concurrency limit (retry later). A
    task with attempts runs none of its own: it is sent once they all ended, to rank them (``worker/bestof.py``)."""
    if worker.bestof.is_group(task_id, ctx):
        return worker.bestof.rank_attempts(task_id, ctx)
    claimed = _claim(task_id, ctx)
    if not isinstance(claimed, tuple):
        return claimed
    number, task = claimed
    attempt = Attempt(ctx.sessions, task_id, number, retry_seconds=ctx.database_retry_seconds)
    with Watch(attempt, ctx.heartbeat_seconds) as watch:
        _execute(ctx, attempt, watch, task)
    return "ran"


def _claim(task_id: str, ctx: WorkerContext) -> tuple[int, ClaimedTask] | Outcome:
    """A new attempt's number and what the task asks for, or why it does not run here now."""
    with ctx.sessions.begin() as session:
        row = store.tasks.get_task(session, task_id)
        if row is None or TaskState(row.state).is_final:
            return "skipped"
        if row.state != TaskState.queued.value:
            beat = row.heartbeat_at
            if beat is not None and store.tasks.age(beat) < ctx.stale_after.total_seconds():
                log.info("task %s is %s on live worker %s; leaving it", task_id, row.state, row.worker)
                return "skipped"
            outcome = store.attempts.requeue_or_fail(session, row, max_attempts=ctx.max_attempts, reason="redelivered")
            if outcome != "requeued":
                return "skipped"
        task = ClaimedTask.of(row)
        claim = store.attempts.claim(
            session, task_id, worker=ctx.worker_name, max_active_per_user=ctx.max_active_per_user
        )
    if claim == "busy":
        return "busy"
    if claim == "gone":
        return "skipped"
    return claim, task


def _execute(ctx: WorkerContext, attempt: Attempt, watch: Watch, task: ClaimedTask) -> None:
    """Run the attempt, then end the task with a final state and a reason, whatever raised; a superseded
    attempt only lets go of what it holds."""
    with ExitStack() as lease:
        run = AttemptRun(
            ctx=ctx, attempt=attempt, watch=watch, lease=lease, task=task, emit=event_sink(attempt),
            workspace=ctx.workspaces / f"{task.id}.{attempt.number}",
            commit_into=ctx.workspaces / f"{task.id}.{attempt.number}.commit",
            deadline=time.monotonic() + ctx.setup.lifetime,
        )  # fmt: skip
        try:
            ending = _ending(run)
        finally:
            _release(run)
        if ending is None:
            log.warning("task %s: attempt %d was superseded; it let go of its sandbox and writes nothing more",
                        task.id, attempt.number)  # fmt: skip
            return
        _publish_and_finish(run, *ending)


def _ending(run: AttemptRun) -> tuple[TaskState, str | None] | None:
    """How the run ends, its trajectory stored; None for a superseded attempt."""
    try:
        state, reason = _outcome(run)
        if run.trajectory.messages:
            store_trajectory(run.attempt, run.trajectory)
        return state, reason
    except Superseded:
        return None


def _outcome(run: AttemptRun) -> tuple[TaskState, str | None]:
    """How the run ends; only :class:`Superseded` passes through."""
    try:
        for stage in STAGES:
            run.watch.check()
            stage(run)
        return TaskState.succeeded, None
    except Superseded:
        raise
    except Exception as exc:
        try:
            return _cut_short(run, exc)
        except Superseded:
            raise
        except Exception:  # raised while handling the first (the time limit while keeping the partial diff)
            log.exception("task %s: ending it after %s failed", run.task.id, type(exc).__name__)
            return TaskState.failed, errors.failure_reason(exc)


# --- how it ends ----------------------------------------------------------------------------------


def _cut_short(run: AttemptRun, exc: Exception) -> tuple[TaskState, str | None]:
    """The state and reason of a run that raised ``exc``: the watch says whether it was stopped, and why; a
    cancelled run keeps its partial diff, as does one that ran out of budget, disk or time."""
    stopped = run.watch.stop_reason(ask=True)
    if stopped == "superseded":
        raise Superseded(f"attempt {run.attempt.number} of task {run.task.id} was superseded") from exc
    if not errors.expected(exc):
        log.error("task %s crashed:\n%s", run.task.id, "".join(traceback.format_exception(exc)))
    reason = CANCELLED_BY_USER if stopped == "cancelled" else errors.failure_reason(exc)
    if stopped == "cancelled" or errors.keeps_partial_diff(exc):
        _store_partial(run, reason)
    return (TaskState.cancelled if stopped == "cancelled" else TaskState.failed), reason


def _release(run: AttemptRun) -> None:
    if run.sandbox is not None:
        run.watch.attach(None)
        try:
            run.sandbox.close()
        except Exception:  # the reaper removes it later; the task still ends
            log.exception("could not remove the sandbox of task %s", run.task.id)
    remove_owned(run.workspace)


def _publish_and_finish(run: AttemptRun, state: TaskState, reason: str | None) -> None:
    """Tell where the task came from, then write its final state (last: when a task reads as ended, its
    sandbox is gone and its result published). A superseded attempt publishes nothing."""
    ctx, attempt, task_id = run.ctx, run.attempt, run.task.id
    try:
        attempt.write(lambda session: None)  # still this attempt's task?
        if ctx.hooks is not None and run.task.attempt_of is None:  # an attempt's task is told after the ranking
            try:
                ctx.hooks.finished(task_id, state, reason, run.commit)
            except Exception:  # publishing is the hook's business; the task still ends
                log.exception("publishing the result of task %s failed", task_id)
        attempt.write(lambda session: _finish(session, task_id, state, reason))
    except Superseded:
        log.warning("task %s: attempt %d was superseded; its end (%s) is not written", task_id, attempt.number, state)
    except Exception:  # the database stayed away: the reconciler takes the task up once its heartbeat is stale
        log.exception("could not write the end (%s: %s) of task %s", state, reason, task_id)


def _finish(session: Session, task_id: str, state: TaskState, reason: str | None) -> None:
    store.tasks.transition(session, task_id, from_states=[TaskState.preparing, TaskState.running], to_state=state,
                     reason=reason)  # fmt: skip


def _store_partial(run: AttemptRun, reason: str) -> None:
    """Keep what the agent did before the run was cut short, marked incomplete."""
    if run.sandbox is None or run.base_sha is None or run.mirror is None:
        return
    try:
        partial = Submitted(summary=reason, pr_title=f"Incomplete: {reason}"[:200], pr_body=reason)
        keep_patch(run, partial, complete=False)
    except Superseded:
        raise
    except Exception:  # the task's end matters more than its partial diff
        log.exception("could not store the partial diff of task %s", run.task.id)
