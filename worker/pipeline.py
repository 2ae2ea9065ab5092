"""One task, start to end: claim → clone → set-up → sandbox → run_agent → extract_patch → store_patch.

The database is the source of truth; a message from the broker only says "look at this task". So the body
is idempotent: a task already ended, or running on a live worker, is left alone; one whose worker stopped
beating starts a clean new attempt (or fails with "worker lost" after the last one). Every way out leaves
the task in a final state with a one-line reason, and the sandbox and workspace removed — except for an
attempt that was superseded (the reconciler gave the task to another): its writes are refused (see
``worker/attempt.py``), and it stops without writing anything more.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy.orm import Session, sessionmaker

import store.attempts
import store.patches
import store.tasks
from agent.base import Cancelled, ModelClient, Submitted
from agent.loop import AgentConfig, Trajectory, run_agent
from agent.tools import ToolContext
from overnight.access import Requester
from sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from sandbox.environments import EnvironmentCache
from sandbox.reaper import mark_owned, remove_owned
from store.models import TaskState
from worker import errors
from worker.attempt import Attempt, Superseded, Watch
from worker.environment import Environment, SetupPolicy, enter_environment, prepare_environment
from worker.hostgit import DataLimits
from worker.patch import changed_files
from worker.records import UsageRecorder, event_sink, store_patch, store_trajectory
from worker.repo import Checkout, apply_to_workspace, clone_repository, task_owner

log = logging.getLogger(__name__)
Outcome = Literal["ran", "busy", "skipped"]


class TaskHooks(Protocol):
    """Where a task came from gets told (GitHub: a progress comment, then the branch and pull request)."""

    def git_credentials(self, task_id: str, url: str) -> dict[str, str]:
        """Extra {host: token} for cloning this task's repository."""

    def started(self, task_id: str) -> None: ...

    def finished(self, task_id: str, state: TaskState, reason: str | None, mirror: Path | None) -> None:
        """Called after the sandbox is gone and before the final state is written; must not raise."""


@dataclass(kw_only=True)
class WorkerContext:
    sessions: sessionmaker[Session]
    backend: SandboxBackend
    model_factory: Callable[[str], ModelClient]
    """Builds the model client of one task (the task id becomes its cache-affinity key)."""
    workspaces: Path
    checkout: Checkout
    agent: AgentConfig
    environments: EnvironmentCache
    setup: SetupPolicy
    agent_network: bool = False
    worker_name: str = "worker"
    max_active_per_user: int = 4
    max_attempts: int = 3
    heartbeat_seconds: float = 5.0
    stale_after: timedelta = timedelta(seconds=60)
    author: tuple[str, str] = ("Overnight", "overnight@localhost")
    hooks: TaskHooks | None = None
    database_retry_seconds: float = 300.0
    """How long writes (the final state included) are retried while the database cannot be reached."""
    limits: DataLimits = field(default_factory=DataLimits)
    """What a task's bytes may cost the worker: the patch's size, git's memory over uploads and patches."""


def run_task(task_id: str, ctx: WorkerContext) -> Outcome:
    """Run task ``task_id`` if nobody else is; "busy" means its user is at the concurrency limit (retry later)."""
    with ctx.sessions.begin() as session:
        task = store.tasks.get_task(session, task_id)
        if task is None or TaskState(task.state).is_final:
            return "skipped"
        if task.state != TaskState.queued.value:
            beat = task.heartbeat_at
            if beat is not None and store.tasks.age(beat) < ctx.stale_after.total_seconds():
                log.info("task %s is %s on live worker %s; leaving it", task_id, task.state, task.worker)
                return "skipped"
            outcome = store.attempts.requeue_or_fail(session, task, max_attempts=ctx.max_attempts, reason="redelivered")
            if outcome != "requeued":
                return "skipped"
        claim = store.attempts.claim(
            session, task_id, worker=ctx.worker_name, max_active_per_user=ctx.max_active_per_user
        )
    if claim == "busy":
        return "busy"
    if claim == "gone":
        return "skipped"
    attempt = Attempt(ctx.sessions, task_id, claim, retry_seconds=ctx.database_retry_seconds)
    with Watch(attempt, ctx.heartbeat_seconds) as watch:
        _execute(ctx, attempt, watch)
    return "ran"


@dataclass(kw_only=True, frozen=True)
class _Inputs:
    repo: str
    ref: str | None
    instruction: str
    max_steps: int | None
    setup: str | None
    start_diff: str | None
    owner: Requester | None
    """Whose task: what it may clone, with whose credentials."""
    user_id: int | None = None
    """Whose set-up snapshots it may reuse when it starts from an upload or a parent's patch."""
    start_from: str = "the uploaded local changes"


@dataclass(kw_only=True)
class _Run:
    """What one attempt holds while it runs; all of it is let go whatever happens."""

    workspace: Path
    deadline: float
    sandbox: Sandbox | None = None
    base_sha: str | None = None
    mirror: Path | None = None
    trajectory: Trajectory = field(default_factory=Trajectory)


def _execute(ctx: WorkerContext, attempt: Attempt, watch: Watch) -> None:
    """Run the attempt, then end the task with a final state and a reason, whatever raised; a superseded
    attempt only lets go of what it holds."""
    run = _Run(
        workspace=ctx.workspaces / f"{attempt.task_id}.{attempt.number}",
        deadline=time.monotonic() + ctx.setup.lifetime,
    )
    with ExitStack() as lease:  # keeps the mirror from being pruned until the result is published
        try:
            state, reason = _outcome(ctx, attempt, watch, run, lease)
            if run.trajectory.messages:
                store_trajectory(attempt, run.trajectory)
        except Superseded:
            log.warning("task %s: attempt %d was superseded; it writes nothing more", attempt.task_id, attempt.number)
            return
        finally:
            _release(attempt.task_id, watch, run)
        _publish_and_finish(ctx, attempt, run.mirror, state, reason)


def _outcome(
    ctx: WorkerContext, attempt: Attempt, watch: Watch, run: _Run, lease: ExitStack
) -> tuple[TaskState, str | None]:
    """How the run ends; only :class:`Superseded` passes through."""
    try:
        _run_to_patch(ctx, attempt, watch, run, lease)
        return TaskState.succeeded, None
    except Superseded:
        raise
    except Exception as exc:
        try:
            return _cut_short(ctx, attempt, watch, run, exc)
        except Superseded:
            raise
        except Exception:  # raised while handling the first (the time limit while keeping the partial diff)
            log.exception("task %s: ending it after %s failed", attempt.task_id, type(exc).__name__)
            return TaskState.failed, errors.failure_reason(exc)


def _run_to_patch(ctx: WorkerContext, attempt: Attempt, watch: Watch, run: _Run, lease: ExitStack) -> None:
    task_id = attempt.task_id
    mark_owned(run.workspace)  # if this process dies, a live worker's reaper removes the workspace
    ctx.backend.create_workspace(run.workspace)  # before the clone: the kernel keeps all of it within the limit
    inputs = attempt.read(lambda session: _inputs(session, task_id))
    emit = event_sink(attempt)
    if ctx.hooks is not None:
        ctx.hooks.started(task_id)
    environment = _prepare(ctx, attempt, watch, run, lease, inputs, emit)
    if watch.stopping:
        raise Cancelled("cancelled by user")
    run.sandbox = sandbox = ctx.backend.start(
        SandboxSpec(
            task_id=task_id,
            workspace=run.workspace,
            image=environment.ref,
            network=ctx.agent_network,
            lifetime=max(run.deadline - time.monotonic(), 1.0),
        )
    )
    watch.attach(sandbox)
    enter_environment(sandbox, environment.ref)
    attempt.write(lambda session: store.tasks.transition(session, task_id, from_states=[TaskState.preparing],
                                                   to_state=TaskState.running))  # fmt: skip
    emit("phase", {"phase": "agent", "environment": environment.ref})
    config = ctx.agent
    if inputs.max_steps:
        config = replace(config, budget=replace(config.budget, max_steps=inputs.max_steps))
    result = run_agent(
        instruction=inputs.instruction,
        model=UsageRecorder(ctx.model_factory(task_id), attempt, watch, run.trajectory),
        ctx=ToolContext(sandbox=sandbox, output_limit=config.tool_output_limit, command_timeout=config.command_timeout),
        config=config,
        on_event=emit,
        should_stop=lambda: watch.stopping or _cancel_requested(attempt),
        trajectory=run.trajectory,
        environment_note=environment.note,
    )
    _store_patch(ctx, attempt, run, result.submission, complete=True)


def _inputs(session: Session, task_id: str) -> _Inputs:
    task = store.tasks.get_task(session, task_id)
    assert task is not None
    parent_patch = (
        store.patches.get_patch(session, task.parent_id) if task.kind == "follow-up" and task.parent_id else None
    )
    return _Inputs(
        repo=task.repo, ref=task.ref, instruction=task.instruction, max_steps=task.max_steps, setup=task.setup,
        start_diff=parent_patch.diff if parent_patch else task.start_diff, owner=task_owner(session, task.user_id),
        user_id=task.user_id,
        start_from="the previous task's patch" if parent_patch else "the uploaded local changes",
    )  # fmt: skip


def _prepare(
    ctx: WorkerContext,
    attempt: Attempt,
    watch: Watch,
    run: _Run,
    lease: ExitStack,
    inputs: _Inputs,
    emit: Callable[[str, dict[str, Any]], None],
) -> Environment:
    """Clone, start from the uploaded or parent diff, run the set-up: where the agent's sandbox starts."""
    task_id = attempt.task_id
    emit("phase", {"phase": "clone", "repo": inputs.repo, "ref": inputs.ref})
    credentials = ctx.hooks.git_credentials(task_id, inputs.repo) if ctx.hooks is not None else None
    run.base_sha, run.mirror = base_sha, _ = clone_repository(
        inputs.repo, inputs.ref, run.workspace, checkout=ctx.checkout, owner=inputs.owner, credentials=credentials,
        lease=lease,
    )  # fmt: skip
    if inputs.start_diff:
        apply_to_workspace(run.workspace, inputs.start_diff, what=inputs.start_from, memory=ctx.limits.git_memory)
        emit("phase", {"phase": "start-diff", "files": len(changed_files(inputs.start_diff))})
    attempt.write(lambda session: setattr(store.tasks.get_task(session, task_id), "base_sha", base_sha))
    emit("phase", {"phase": "setup", "base_sha": base_sha})
    return prepare_environment(
        task_id=task_id, repository=inputs.repo, workspace=run.workspace, setup_path=inputs.setup,
        backend=ctx.backend, cache=ctx.environments, policy=ctx.setup, emit=emit, on_sandbox=watch.attach,
        owner=None if inputs.user_id is None else str(inputs.user_id), git_memory=ctx.limits.git_memory,
    )  # fmt: skip


def _cut_short(
    ctx: WorkerContext, attempt: Attempt, watch: Watch, run: _Run, exc: Exception
) -> tuple[TaskState, str | None]:
    """The state and reason of a run that raised ``exc``; keeps the partial diff where that helps."""
    if watch.superseded.is_set():
        raise Superseded(f"attempt {attempt.number} of task {attempt.task_id} was superseded") from exc
    if not errors.expected(exc):
        log.error("task %s crashed:\n%s", attempt.task_id, "".join(traceback.format_exception(exc)))
    cancelled = isinstance(exc, Cancelled) or watch.cancelled.is_set() or _cancel_requested(attempt)
    reason = "cancelled by user" if cancelled else errors.failure_reason(exc)
    if cancelled or errors.keeps_partial_diff(exc):
        _store_partial(ctx, attempt, run, reason)
    return (TaskState.cancelled if cancelled else TaskState.failed), reason


def _cancel_requested(attempt: Attempt) -> bool:
    """Asked between steps and on the way out; when the database does not answer, the watcher's flag decides."""
    try:
        with attempt.sessions() as session:
            return store.tasks.cancel_requested(session, attempt.task_id)
    except Exception:
        return False


def _release(task_id: str, watch: Watch, run: _Run) -> None:
    if run.sandbox is not None:
        watch.sandbox = None
        try:
            run.sandbox.close()
        except Exception:  # the reaper removes it later; the task still ends
            log.exception("could not remove the sandbox of task %s", task_id)
    remove_owned(run.workspace)


def _publish_and_finish(
    ctx: WorkerContext, attempt: Attempt, mirror: Path | None, state: TaskState, reason: str | None
) -> None:
    """Tell where the task came from, then write its final state (last: when a task reads as ended, its
    sandbox is gone and its result published). A superseded attempt publishes nothing."""
    task_id = attempt.task_id
    try:
        attempt.write(lambda session: None)  # still this attempt's task?
        if ctx.hooks is not None:
            try:
                ctx.hooks.finished(task_id, state, reason, mirror)
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


def _store_patch(ctx: WorkerContext, attempt: Attempt, run: _Run, submission: Submitted, *, complete: bool) -> None:
    assert run.sandbox is not None and run.base_sha is not None and run.mirror is not None
    store_patch(attempt, run.sandbox, run.base_sha, run.mirror, submission, run.trajectory, complete=complete,
                author=ctx.author, limits=ctx.limits)  # fmt: skip


def _store_partial(ctx: WorkerContext, attempt: Attempt, run: _Run, reason: str) -> None:
    """Keep what the agent did before the run was cut short, marked incomplete."""
    if run.sandbox is None or run.base_sha is None or run.mirror is None:
        return
    try:
        partial = Submitted(summary=reason, pr_title=f"Incomplete: {reason}"[:200], pr_body=reason)
        _store_patch(ctx, attempt, run, partial, complete=False)
    except Superseded:
        raise
    except Exception:  # the task's end matters more than its partial diff
        log.exception("could not store the partial diff of task %s", attempt.task_id)
