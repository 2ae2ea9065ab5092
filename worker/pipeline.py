"""One task, start to end: clone → set-up → start sandbox → run_agent → extract_patch → store_patch.

Every way out leaves the task in a final state with a one-line reason, and the sandbox removed.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agent.base import AgentError, AssistantTurn, Cancelled, LimitsExceeded, ModelClient, Submitted
from agent.loop import AgentConfig, Trajectory, run_agent
from agent.tools import ToolContext
from migrations import store
from migrations.models import TaskState
from sandbox.base import Sandbox, SandboxBackend, SandboxDiskFullError, SandboxError, SandboxSpec
from sandbox.environments import EnvironmentCache
from worker.environment import SetupPolicy, enter_environment, prepare_environment
from worker.patch import extract_patch
from worker.repo import TaskFailure, clone_repository

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class WorkerContext:
    sessions: sessionmaker[Session]
    backend: SandboxBackend
    model_factory: Callable[[str], ModelClient]
    """Builds the model client of one task (the task id becomes its cache-affinity key)."""
    workspaces: Path
    allow_local_repos: bool
    agent: AgentConfig
    environments: EnvironmentCache
    setup: SetupPolicy
    agent_network: bool = False


def run_task(task_id: str, ctx: WorkerContext) -> None:
    """Run task ``task_id`` if it is still queued; a task in any other state is left alone (idempotent)."""
    with ctx.sessions.begin() as session:
        task = store.get_task(session, task_id)
        if task is None:
            log.warning("task %s does not exist; dropping the message", task_id)
            return
        if not store.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running):
            log.info("task %s is %s, not queued; nothing to do", task_id, task.state)
            return
        repo, ref, instruction, max_steps, setup_path = (
            task.repo,
            task.ref,
            task.instruction,
            task.max_steps,
            task.setup,
        )
    deadline = time.monotonic() + ctx.setup.lifetime

    workspace = ctx.workspaces / task_id
    pristine = ctx.workspaces / f"{task_id}.pristine.git"
    sandbox: Sandbox | None = None
    base_sha: str | None = None
    emit = _event_sink(ctx.sessions, task_id)
    trajectory = Trajectory()
    try:
        emit("phase", {"phase": "clone", "repo": repo, "ref": ref})
        base_sha = clone_repository(repo, ref, workspace, pristine=pristine, allow_local=ctx.allow_local_repos)
        with ctx.sessions.begin() as session:
            store.get_task(session, task_id).base_sha = base_sha  # type: ignore[union-attr]
        emit("phase", {"phase": "setup", "base_sha": base_sha})
        environment = prepare_environment(
            task_id=task_id, repository=repo, workspace=workspace, setup_path=setup_path, backend=ctx.backend,
            cache=ctx.environments, policy=ctx.setup, emit=emit,
        )  # fmt: skip
        emit("phase", {"phase": "sandbox", "environment": environment.ref})
        sandbox = ctx.backend.start(
            SandboxSpec(
                task_id=task_id,
                workspace=workspace,
                image=environment.ref,
                network=ctx.agent_network,
                lifetime=max(deadline - time.monotonic(), 1.0),
            )
        )
        enter_environment(sandbox, environment.ref)
        emit("phase", {"phase": "agent"})
        config = ctx.agent
        if max_steps:
            config = replace(config, budget=replace(config.budget, max_steps=max_steps))
        result = run_agent(
            instruction=instruction,
            model=_UsageRecorder(ctx.model_factory(task_id), ctx.sessions, task_id),
            ctx=ToolContext(
                sandbox=sandbox, output_limit=config.tool_output_limit, command_timeout=config.command_timeout
            ),
            config=config,
            on_event=emit,
            should_stop=lambda: _cancel_requested(ctx.sessions, task_id),
            trajectory=trajectory,
            environment_note=environment.note,
        )
        _store_patch(ctx.sessions, task_id, sandbox, base_sha, pristine, result.submission, complete=True)
        _finish(ctx.sessions, task_id, TaskState.succeeded)
    except Cancelled as exc:
        _store_partial(ctx.sessions, task_id, sandbox, base_sha, pristine, str(exc))
        _finish(ctx.sessions, task_id, TaskState.cancelled, str(exc))
    except LimitsExceeded as exc:
        _store_partial(ctx.sessions, task_id, sandbox, base_sha, pristine, str(exc))
        _finish(ctx.sessions, task_id, TaskState.failed, str(exc))
    except (TaskFailure, AgentError) as exc:
        _finish(ctx.sessions, task_id, TaskState.failed, str(exc))
    except SandboxDiskFullError as exc:
        _store_partial(ctx.sessions, task_id, None, base_sha, pristine, str(exc))
        _finish(ctx.sessions, task_id, TaskState.failed, f"sandbox: {exc}")
    except SandboxError as exc:
        _finish(ctx.sessions, task_id, TaskState.failed, f"sandbox: {exc}")
    except Exception as exc:
        log.error("task %s crashed:\n%s", task_id, traceback.format_exc())
        _finish(ctx.sessions, task_id, TaskState.failed, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if trajectory.messages:
            _store_trajectory(ctx.sessions, task_id, trajectory)
        if sandbox is not None:
            try:
                sandbox.close()
            except SandboxError:
                log.exception("could not remove the sandbox of task %s", task_id)
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(pristine, ignore_errors=True)


def _store_patch(
    sessions: sessionmaker[Session],
    task_id: str,
    sandbox: Sandbox,
    base_sha: str,
    pristine: Path,
    submission: Submitted,
    *,
    complete: bool,
) -> None:
    patch = extract_patch(sandbox, base_sha, pristine)
    body = submission.pr_body.strip() or submission.summary.strip()
    with sessions.begin() as session:
        store.store_patch(
            session,
            task_id,
            base_sha=base_sha,
            diff=patch.diff,
            title=submission.pr_title,
            body=body,
            files_changed=patch.files_changed,
            complete=complete,
            excluded=patch.excluded,
        )
        store.append_event(
            session,
            task_id,
            "patch",
            {
                "files_changed": patch.files_changed,
                "bytes": len(patch.diff),
                "complete": complete,
                "excluded": patch.excluded,
            },
        )


def _store_partial(
    sessions: sessionmaker[Session],
    task_id: str,
    sandbox: Sandbox | None,
    base_sha: str | None,
    pristine: Path,
    reason: str,
) -> None:
    """Keep what the agent did before the run was cut short, marked incomplete."""
    if sandbox is None or base_sha is None:
        return
    try:
        partial = Submitted(summary=reason, pr_title=f"Incomplete: {reason}"[:200], pr_body=reason)
        _store_patch(sessions, task_id, sandbox, base_sha, pristine, partial, complete=False)
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
        store.transition(session, task_id, from_states=[TaskState.running], to_state=state, reason=reason)


def _cancel_requested(sessions: sessionmaker[Session], task_id: str) -> bool:
    with sessions() as session:
        return store.cancel_requested(session, task_id)


def _event_sink(sessions: sessionmaker[Session], task_id: str) -> Callable[[str, dict[str, Any]], None]:
    def emit(type_: str, data: dict[str, Any]) -> None:
        with sessions.begin() as session:
            store.append_event(session, task_id, type_, data)

    return emit


class _UsageRecorder:
    """Adds each model call's token usage to the task row."""

    def __init__(self, model: ModelClient, sessions: sessionmaker[Session], task_id: str) -> None:
        self.model, self.sessions, self.task_id = model, sessions, task_id

    def history_message(self, turn: AssistantTurn) -> dict[str, Any]:
        return self.model.history_message(turn)

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        turn = self.model.complete(messages, tools)
        with self.sessions.begin() as session:
            store.add_usage(
                session,
                self.task_id,
                prompt=turn.usage.prompt_tokens,
                cached=turn.usage.cached_tokens,
                completion=turn.usage.completion_tokens,
            )
        return turn
