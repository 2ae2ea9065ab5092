"""One task, start to end, as stages:

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
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal, Protocol

from sqlalchemy.orm import Session, sessionmaker

import store.attempts
import store.patches
import store.tasks
from agent.base import ModelClient, Submitted
from agent.loop import AgentConfig, Trajectory, run_agent
from agent.tools import ToolContext
from overnight.access import Requester
from overnight.events import EventSink, PhaseEvent
from sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from sandbox.environments import EnvironmentCache
from sandbox.reaper import mark_owned, remove_owned
from store.attempts import CANCELLED_BY_USER
from store.models import Task, TaskState
from worker import errors
from worker.attempt import Attempt, Superseded, Watch
from worker.environment import Environment, SetupPolicy, enter_environment, prepare_environment
from worker.hostgit import DataLimits
from worker.patch import changed_files
from worker.records import UsageRecorder, event_sink, store_patch, store_trajectory
from worker.repo import Checkout, Commit, apply_to_workspace, clone_repository, task_owner

log = logging.getLogger(__name__)
Outcome = Literal["ran", "busy", "skipped"]


class TaskHooks(Protocol):
    """Where a task came from gets told (GitHub: a progress comment, then the branch and pull request)."""

    def git_credentials(self, task_id: str, url: str) -> dict[str, str]:
        """Extra {host: token} for cloning this task's repository."""

    def started(self, task_id: str) -> None: ...

    def finished(self, task_id: str, state: TaskState, reason: str | None, commit: Commit | None) -> None:
        """Called after the sandbox is gone and before the final state is written, with the patch's commit
        (None without one); must not raise."""


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
    claimed = _claim(task_id, ctx)
    if not isinstance(claimed, tuple):
        return claimed
    number, task = claimed
    attempt = Attempt(ctx.sessions, task_id, number, retry_seconds=ctx.database_retry_seconds)
    with Watch(attempt, ctx.heartbeat_seconds) as watch:
        _execute(ctx, attempt, watch, task)
    return "ran"


@dataclass(kw_only=True, frozen=True)
class _Task:
    """What the task asks for, as its row said when it was claimed."""

    id: str
    repo: str
    ref: str | None
    instruction: str
    max_steps: int | None
    setup: str | None
    start_diff: str | None
    follows: str | None
    """The task whose patch a follow-up starts from."""
    user_id: int | None
    """Whose task: what it may clone and with whose credentials, whose set-up snapshots it may reuse."""

    @classmethod
    def of(cls, row: Task) -> _Task:
        follows = row.parent_id if row.kind == "follow-up" else None
        return cls(id=row.id, repo=row.repo, ref=row.ref, instruction=row.instruction, max_steps=row.max_steps,
                   setup=row.setup, start_diff=row.start_diff, follows=follows, user_id=row.user_id)  # fmt: skip


def _claim(task_id: str, ctx: WorkerContext) -> tuple[int, _Task] | Outcome:
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
        task = _Task.of(row)
        claim = store.attempts.claim(
            session, task_id, worker=ctx.worker_name, max_active_per_user=ctx.max_active_per_user
        )
    if claim == "busy":
        return "busy"
    if claim == "gone":
        return "skipped"
    return claim, task


@dataclass(kw_only=True)
class _Run:
    """One attempt on its way through the stages: what it was given, and what it holds (all of it let go
    whatever happens)."""

    ctx: WorkerContext
    attempt: Attempt
    watch: Watch
    lease: ExitStack
    """Keeps the mirror from being pruned until the result is published."""
    task: _Task
    emit: EventSink
    workspace: Path
    commit_into: Path
    """Where the patch's commit is made (a repository beside the workspace, kept until it was published)."""
    deadline: float
    owner: Requester | None = None
    start_diff: str | None = None
    start_from: str = "the uploaded local changes"
    base_sha: str | None = None
    mirror: Path | None = None
    environment: Environment | None = None
    sandbox: Sandbox | None = None
    trajectory: Trajectory = field(default_factory=Trajectory)
    submission: Submitted | None = None
    commit: Commit | None = None


def _execute(ctx: WorkerContext, attempt: Attempt, watch: Watch, task: _Task) -> None:
    """Run the attempt, then end the task with a final state and a reason, whatever raised; a superseded
    attempt only lets go of what it holds."""
    with ExitStack() as lease:
        run = _Run(
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


def _ending(run: _Run) -> tuple[TaskState, str | None] | None:
    """How the run ends, its trajectory stored; None for a superseded attempt."""
    try:
        state, reason = _outcome(run)
        if run.trajectory.messages:
            store_trajectory(run.attempt, run.trajectory)
        return state, reason
    except Superseded:
        return None


def _outcome(run: _Run) -> tuple[TaskState, str | None]:
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


# --- the stages, in order -------------------------------------------------------------------------


def _prepare_workspace(run: _Run) -> None:
    """The workspace's own disk (made before the clone: the kernel keeps all of it within the limit) and the
    commit's folder, owned by this process (if it dies, a live worker's reaper removes them); whose task it is
    and what it starts from."""
    mark_owned(run.workspace)
    mark_owned(run.commit_into)
    run.lease.callback(remove_owned, run.commit_into)
    run.ctx.backend.create_workspace(run.workspace)
    run.owner, run.start_diff, run.start_from = run.attempt.read(lambda session: _starting_point(session, run.task))
    if run.ctx.hooks is not None:
        run.ctx.hooks.started(run.task.id)


def _starting_point(session: Session, task: _Task) -> tuple[Requester | None, str | None, str]:
    parent = store.patches.get_patch(session, task.follows) if task.follows else None
    owner = task_owner(session, task.user_id)
    if parent is not None:
        return owner, parent.diff, "the previous task's patch"
    return owner, task.start_diff, "the uploaded local changes"


def _clone(run: _Run) -> None:
    ctx, task = run.ctx, run.task
    run.emit(PhaseEvent(phase="clone", repo=task.repo, ref=task.ref))
    credentials = ctx.hooks.git_credentials(task.id, task.repo) if ctx.hooks is not None else None
    run.base_sha, run.mirror = clone_repository(
        task.repo, task.ref, run.workspace, checkout=ctx.checkout, owner=run.owner, credentials=credentials,
        lease=run.lease,
    )  # fmt: skip


def _apply_start_diff(run: _Run) -> None:
    """The uploaded local changes, or the parent's patch of a follow-up, before any untrusted code ran."""
    if run.start_diff:
        apply_to_workspace(run.workspace, run.start_diff, what=run.start_from, memory=run.ctx.limits.git_memory)
        run.emit(PhaseEvent(phase="start-diff", files=len(changed_files(run.start_diff))))


def _set_up(run: _Run) -> None:
    """The set-up script (or the automatic set-up), or its snapshot: where the agent's sandbox starts."""
    ctx, task, base_sha = run.ctx, run.task, run.base_sha
    assert base_sha is not None
    run.attempt.write(lambda session: store.tasks.set_base_sha(session, task.id, base_sha))
    run.emit(PhaseEvent(phase="setup", base_sha=base_sha))
    run.environment = prepare_environment(
        task_id=task.id, repository=task.repo, workspace=run.workspace, setup_path=task.setup,
        backend=ctx.backend, cache=ctx.environments, policy=ctx.setup, emit=run.emit, on_sandbox=run.watch.attach,
        owner=None if task.user_id is None else str(task.user_id), git_memory=ctx.limits.git_memory,
    )  # fmt: skip


def _start_sandbox(run: _Run) -> None:
    """The agent's sandbox, from the set-up's environment; the task is running from here."""
    assert run.environment is not None
    run.sandbox = sandbox = run.ctx.backend.start(
        SandboxSpec(
            task_id=run.task.id,
            workspace=run.workspace,
            image=run.environment.ref,
            network=run.ctx.agent_network,
            lifetime=max(run.deadline - time.monotonic(), 1.0),
        )
    )
    run.watch.attach(sandbox)
    enter_environment(sandbox, run.environment.ref)
    run.attempt.write(lambda session: store.tasks.transition(session, run.task.id, from_states=[TaskState.preparing],
                                                       to_state=TaskState.running))  # fmt: skip


def _run_agent(run: _Run) -> None:
    assert run.sandbox is not None and run.environment is not None
    run.emit(PhaseEvent(phase="agent", environment=run.environment.ref))
    config = run.ctx.agent
    if run.task.max_steps:
        config = replace(config, budget=replace(config.budget, max_steps=run.task.max_steps))
    result = run_agent(
        instruction=run.task.instruction,
        model=UsageRecorder(run.ctx.model_factory(run.task.id), run.attempt, run.watch, run.trajectory),
        ctx=ToolContext(
            sandbox=run.sandbox, output_limit=config.tool_output_limit, command_timeout=config.command_timeout
        ),
        config=config,
        on_event=run.emit,
        should_stop=run.watch.should_stop,
        trajectory=run.trajectory,
        environment_note=run.environment.note,
    )
    run.submission = result.submission


def _store_patch(run: _Run) -> None:
    assert run.submission is not None
    _keep_patch(run, run.submission, complete=True)


STAGES: tuple[Callable[[_Run], None], ...] = (
    _prepare_workspace, _clone, _apply_start_diff, _set_up, _start_sandbox, _run_agent, _store_patch,
)  # fmt: skip
"""The task's way up to its patch; the watch is asked before each (publish and finish always follow)."""


# --- how it ends ----------------------------------------------------------------------------------


def _cut_short(run: _Run, exc: Exception) -> tuple[TaskState, str | None]:
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


def _release(run: _Run) -> None:
    if run.sandbox is not None:
        run.watch.attach(None)
        try:
            run.sandbox.close()
        except Exception:  # the reaper removes it later; the task still ends
            log.exception("could not remove the sandbox of task %s", run.task.id)
    remove_owned(run.workspace)


def _publish_and_finish(run: _Run, state: TaskState, reason: str | None) -> None:
    """Tell where the task came from, then write its final state (last: when a task reads as ended, its
    sandbox is gone and its result published). A superseded attempt publishes nothing."""
    ctx, attempt, task_id = run.ctx, run.attempt, run.task.id
    try:
        attempt.write(lambda session: None)  # still this attempt's task?
        if ctx.hooks is not None:
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


def _keep_patch(run: _Run, submission: Submitted, *, complete: bool) -> None:
    assert run.sandbox is not None and run.base_sha is not None and run.mirror is not None
    run.commit = store_patch(
        run.attempt, run.sandbox, submission, run.trajectory, base_sha=run.base_sha, mirror=run.mirror,
        commit_into=run.commit_into, complete=complete, author=run.ctx.author, limits=run.ctx.limits,
    )  # fmt: skip


def _store_partial(run: _Run, reason: str) -> None:
    """Keep what the agent did before the run was cut short, marked incomplete."""
    if run.sandbox is None or run.base_sha is None or run.mirror is None:
        return
    try:
        partial = Submitted(summary=reason, pr_title=f"Incomplete: {reason}"[:200], pr_body=reason)
        _keep_patch(run, partial, complete=False)
    except Superseded:
        raise
    except Exception:  # the task's end matters more than its partial diff
        log.exception("could not store the partial diff of task %s", run.task.id)
