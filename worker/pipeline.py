"""One task, start to end: claim → clone → set-up → sandbox → run_agent → extract_patch → store_patch.

The database is the source of truth; a message from the broker only says "look at this task". So the body
is idempotent: a task already ended, or running on a live worker, is left alone; one whose worker stopped
beating starts a clean new attempt (or fails with "worker lost" after the last one). Every way out leaves
the task in a final state with a one-line reason, and the sandbox removed.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from agent.base import AgentError, AssistantTurn, Cancelled, LimitsExceeded, ModelClient, Submitted
from agent.loop import AgentConfig, Trajectory, run_agent
from agent.tools import ToolContext
from migrations import store
from migrations.models import TaskState
from sandbox.base import Sandbox, SandboxBackend, SandboxDiskFullError, SandboxError, SandboxSpec
from sandbox.environments import EnvironmentCache
from worker.environment import SetupPolicy, enter_environment, prepare_environment
from worker.patch import changed_files, commit_message, extract_patch, tests_run
from worker.repo import Checkout, TaskFailure, apply_to_workspace, clone_repository, format_patch

log = logging.getLogger(__name__)
Outcome = Literal["ran", "busy", "skipped"]
TRAJECTORY_EVERY_SECONDS = 10.0
"""While a task runs, its transcript is stored before the second model call, then at most this often."""


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


class _Watch:
    """Beats the task's heartbeat and, when the user cancels, kills the command running in its sandbox."""

    def __init__(self, ctx: WorkerContext, task_id: str) -> None:
        self.ctx, self.task_id = ctx, task_id
        self.sandbox: Sandbox | None = None
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{task_id}", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def attach(self, sandbox: Sandbox | None) -> None:
        self.sandbox = sandbox
        if sandbox is not None and self.cancelled.is_set():
            sandbox.interrupt()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(min(self.ctx.heartbeat_seconds, 1.0)):
            try:
                with self.ctx.sessions.begin() as session:
                    store.heartbeat(session, self.task_id, self.ctx.worker_name)
                    cancel = store.cancel_requested(session, self.task_id)
                if cancel and not self.cancelled.is_set():
                    self.cancelled.set()
                    if self.sandbox is not None:
                        self.sandbox.interrupt()
            except Exception:  # a missed beat is not worth the task
                log.exception("heartbeat of task %s failed", self.task_id)


def run_task(task_id: str, ctx: WorkerContext) -> Outcome:
    """Run task ``task_id`` if nobody else is; "busy" means its user is at the concurrency limit (retry later)."""
    with ctx.sessions.begin() as session:
        task = store.get_task(session, task_id)
        if task is None or TaskState(task.state).is_final:
            return "skipped"
        if task.state != TaskState.queued.value:
            beat = task.heartbeat_at
            if beat is not None and store.age(beat) < ctx.stale_after.total_seconds():
                log.info("task %s is %s on live worker %s; leaving it", task_id, task.state, task.worker)
                return "skipped"
            if store.requeue_or_fail(session, task, max_attempts=ctx.max_attempts, reason="redelivered") != "requeued":
                return "skipped"
        claim = store.claim(session, task_id, worker=ctx.worker_name, max_active_per_user=ctx.max_active_per_user)
    if claim != "claimed":
        return "busy" if claim == "busy" else "skipped"
    with _Watch(ctx, task_id) as watch:
        _execute(task_id, ctx, watch)
    return "ran"


def _execute(task_id: str, ctx: WorkerContext, watch: _Watch) -> None:
    with ctx.sessions() as session:
        task = store.get_task(session, task_id)
        assert task is not None
        parent_patch = store.get_patch(session, task.parent_id) if task.kind == "follow-up" and task.parent_id else None
        repo, ref, instruction, max_steps, setup_path = (
            task.repo,
            task.ref,
            task.instruction,
            task.max_steps,
            task.setup,
        )
        start_diff = parent_patch.diff if parent_patch else task.start_diff
    deadline = time.monotonic() + ctx.setup.lifetime
    workspace = ctx.workspaces / task_id
    sandbox: Sandbox | None = None
    base_sha: str | None = None
    mirror: Path | None = None
    emit = _event_sink(ctx.sessions, task_id)
    trajectory = Trajectory()
    try:
        if ctx.hooks is not None:
            ctx.hooks.started(task_id)
        emit("phase", {"phase": "clone", "repo": repo, "ref": ref})
        credentials = ctx.hooks.git_credentials(task_id, repo) if ctx.hooks is not None else None
        base_sha, mirror = clone_repository(repo, ref, workspace, checkout=ctx.checkout, credentials=credentials)
        if start_diff:
            apply_to_workspace(workspace, start_diff)
            emit("phase", {"phase": "start-diff", "files": len(changed_files(start_diff))})
        with ctx.sessions.begin() as session:
            store.get_task(session, task_id).base_sha = base_sha  # type: ignore[union-attr]
        emit("phase", {"phase": "setup", "base_sha": base_sha})
        environment = prepare_environment(
            task_id=task_id, repository=repo, workspace=workspace, setup_path=setup_path, backend=ctx.backend,
            cache=ctx.environments, policy=ctx.setup, emit=emit, on_sandbox=watch.attach,
        )  # fmt: skip
        _raise_if_cancelled(watch)
        sandbox = ctx.backend.start(
            SandboxSpec(
                task_id=task_id,
                workspace=workspace,
                image=environment.ref,
                network=ctx.agent_network,
                lifetime=max(deadline - time.monotonic(), 1.0),
            )
        )
        watch.attach(sandbox)
        enter_environment(sandbox, environment.ref)
        with ctx.sessions.begin() as session:
            store.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.running)
        emit("phase", {"phase": "agent", "environment": environment.ref})
        config = ctx.agent
        if max_steps:
            config = replace(config, budget=replace(config.budget, max_steps=max_steps))
        result = run_agent(
            instruction=instruction,
            model=_UsageRecorder(ctx.model_factory(task_id), ctx.sessions, task_id, watch.cancelled, trajectory),
            ctx=ToolContext(
                sandbox=sandbox, output_limit=config.tool_output_limit, command_timeout=config.command_timeout
            ),
            config=config,
            on_event=_timed(emit, ctx.sessions, task_id),
            should_stop=lambda: watch.cancelled.is_set() or _cancel_requested(ctx.sessions, task_id),
            trajectory=trajectory,
            environment_note=environment.note,
        )
        _store_patch(ctx, task_id, sandbox, base_sha, mirror, result.submission, trajectory, complete=True)
        outcome: tuple[TaskState, str | None] = (TaskState.succeeded, None)
    except (Cancelled, LimitsExceeded, TaskFailure, AgentError, SandboxError) as exc:
        cancelled = isinstance(exc, Cancelled) or watch.cancelled.is_set() or _cancel_requested(ctx.sessions, task_id)
        reason = "cancelled by user" if cancelled else _reason(exc)
        if cancelled or isinstance(exc, LimitsExceeded | SandboxDiskFullError):
            _store_partial(ctx, task_id, sandbox, base_sha, mirror, trajectory, reason)
        outcome = (TaskState.cancelled if cancelled else TaskState.failed, reason)
    except SoftTimeLimitExceeded:
        _store_partial(ctx, task_id, sandbox, base_sha, mirror, trajectory, "task time limit exceeded")
        outcome = (TaskState.failed, "task time limit exceeded")
    except Exception as exc:
        log.error("task %s crashed:\n%s", task_id, traceback.format_exc())
        outcome = (TaskState.failed, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if trajectory.messages:
            _store_trajectory(ctx.sessions, task_id, trajectory)
        if sandbox is not None:
            watch.sandbox = None
            try:
                sandbox.close()
            except SandboxError:
                log.exception("could not remove the sandbox of task %s", task_id)
        shutil.rmtree(workspace, ignore_errors=True)
    if ctx.hooks is not None:
        ctx.hooks.finished(task_id, outcome[0], outcome[1], mirror)
    # The final state last: when a task reads as ended, its sandbox is already gone (and its result published).
    _finish(ctx.sessions, task_id, *outcome)


def _reason(exc: Exception) -> str:
    return f"sandbox: {exc}" if isinstance(exc, SandboxError) else str(exc)


def _cancel_requested(sessions: sessionmaker[Session], task_id: str) -> bool:
    with sessions() as session:
        return store.cancel_requested(session, task_id)


def _raise_if_cancelled(watch: _Watch) -> None:
    if watch.cancelled.is_set():
        raise Cancelled("cancelled by user")


def _store_patch(
    ctx: WorkerContext,
    task_id: str,
    sandbox: Sandbox,
    base_sha: str,
    mirror: Path,
    submission: Submitted,
    trajectory: Trajectory,
    *,
    complete: bool,
) -> None:
    patch = extract_patch(sandbox, base_sha, mirror)
    files = changed_files(patch.diff)
    message = commit_message(
        title=submission.pr_title, summary=submission.summary, files=files, tests=tests_run(trajectory.messages)
    )
    diffstat, mbox = format_patch(mirror, base_sha, patch.diff, message, author=ctx.author[0], email=ctx.author[1])
    body = submission.pr_body.strip() or submission.summary.strip()
    with ctx.sessions.begin() as session:
        stored = store.store_patch(
            session, task_id, base_sha=base_sha, diff=patch.diff, title=submission.pr_title, body=body,
            files_changed=patch.files_changed, complete=complete, excluded=patch.excluded,
        )  # fmt: skip
        stored.diffstat, stored.commit_message, stored.mbox = diffstat, message, mbox
        store.append_event(
            session, task_id, "patch",
            {"files_changed": patch.files_changed, "bytes": len(patch.diff), "complete": complete,
             "excluded": patch.excluded, "empty": not patch.diff},
        )  # fmt: skip


def _store_partial(
    ctx: WorkerContext,
    task_id: str,
    sandbox: Sandbox | None,
    base_sha: str | None,
    mirror: Path | None,
    trajectory: Trajectory,
    reason: str,
) -> None:
    """Keep what the agent did before the run was cut short, marked incomplete."""
    if sandbox is None or base_sha is None or mirror is None:
        return
    try:
        partial = Submitted(summary=reason, pr_title=f"Incomplete: {reason}"[:200], pr_body=reason)
        _store_patch(ctx, task_id, sandbox, base_sha, mirror, partial, trajectory, complete=False)
    except (TaskFailure, SandboxError):
        log.exception("could not store the partial diff of task %s", task_id)


def _store_trajectory(sessions: sessionmaker[Session], task_id: str, trajectory: Trajectory) -> None:
    try:
        with sessions.begin() as session:
            store.store_trajectory(
                session,
                task_id,
                {"tools": trajectory.tools, "messages": trajectory.messages, "steps": trajectory.steps},
            )
    except Exception:  # the task's outcome matters more than its transcript
        log.exception("could not store the trajectory of task %s", task_id)


def _finish(sessions: sessionmaker[Session], task_id: str, state: TaskState, reason: str | None = None) -> None:
    with sessions.begin() as session:
        store.transition(
            session, task_id, from_states=[TaskState.preparing, TaskState.running], to_state=state, reason=reason
        )


def _event_sink(sessions: sessionmaker[Session], task_id: str) -> Callable[[str, dict[str, Any]], None]:
    def emit(type_: str, data: dict[str, Any]) -> None:
        with sessions.begin() as session:
            store.append_event(session, task_id, type_, data)
            if type_ == "setup" and data.get("duration"):
                store.add_sandbox_seconds(session, task_id, float(data["duration"]))

    return emit


def _timed(emit: Callable[[str, dict[str, Any]], None], sessions: sessionmaker[Session], task_id: str) -> Any:
    """The agent's event sink, also adding each tool's seconds to the task's sandbox time."""

    def sink(type_: str, data: dict[str, Any]) -> None:
        emit(type_, data)
        if type_ == "tool_result" and data.get("duration"):
            with sessions.begin() as session:
                store.add_sandbox_seconds(session, task_id, float(data["duration"]))

    return sink


class _UsageRecorder:
    """Adds each model call's token usage to the task row; keeps the stored trajectory current before model
    calls (readable while the task runs, kept if its worker dies); and lets a cancel end the task while a model
    call is still streaming: the call runs in a thread of its own, and the task stops waiting for it when the
    user cancels (the abandoned request ends at its own timeout; its answer is dropped)."""

    def __init__(
        self,
        model: ModelClient,
        sessions: sessionmaker[Session],
        task_id: str,
        cancelled: threading.Event,
        trajectory: Trajectory,
    ) -> None:
        self.model, self.sessions, self.task_id, self.cancelled = model, sessions, task_id, cancelled
        self.trajectory = trajectory
        self._stored_at: float | None = None

    def history_message(self, turn: AssistantTurn) -> dict[str, Any]:
        return self.model.history_message(turn)

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        if len(self.trajectory.messages) > 2 and (
            self._stored_at is None or time.monotonic() - self._stored_at >= TRAJECTORY_EVERY_SECONDS
        ):
            self._stored_at = time.monotonic()
            _store_trajectory(self.sessions, self.task_id, self.trajectory)
        result: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                result["turn"] = self.model.complete(messages, tools)
            except BaseException as exc:  # handed to the task's thread, which decides
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, name=f"model-{self.task_id}", daemon=True).start()
        while not done.wait(0.2):
            if self.cancelled.is_set():
                raise Cancelled("cancelled by user")
        if "error" in result:
            raise result["error"]
        turn: AssistantTurn = result["turn"]
        with self.sessions.begin() as session:
            store.add_usage(session, self.task_id, prompt=turn.usage.prompt_tokens,
                            cached=turn.usage.cached_tokens, completion=turn.usage.completion_tokens)  # fmt: skip
        return turn
