"""The stages of a task's way up to its patch, in order (:data:`STAGES`): workspace, clone, start-diff,
set-up, sandbox, agent, patch. Each is a function of the attempt's :class:`AttemptRun`: what the attempt was
given and what the stages so far made of it. ``worker/pipeline.py`` runs them, asking the attempt's watch
before each, and ends the task whatever they raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy.orm import Session

import store.patches
import store.tasks
from agent.base import Submitted
from agent.loop import Trajectory, run_agent
from agent.tools import ToolContext
from overnight.access import Requester
from overnight.environments import DEFAULT_AGENT_NETWORK
from overnight.events import EventSink, PhaseEvent
from sandbox.base import Sandbox, SandboxSpec
from sandbox.proxy import EgressLease
from sandbox.reaper import mark_owned, remove_owned
from store.models import Task, TaskState
from worker.attempt import Attempt, Watch
from worker.context import WorkerContext
from worker.egress import BlockedReport, network_note, open_lease
from worker.environment import Environment, enter_environment, prepare_environment
from worker.images import agent_images
from worker.messages import TaskMailbox
from worker.patch import changed_files
from worker.records import UsageRecorder, store_patch
from worker.repo import Commit, apply_to_workspace, clone_repository, task_owner
from worker.task_environment import TaskEnvironment, task_environment


@dataclass(kw_only=True, frozen=True)
class ClaimedTask:
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
    attempt_of: str | None = None
    """A best-of-N attempt task's task (``store/bestof.py``): where the task came from (GitHub) is that one's."""
    attempt_index: int | None = None

    @classmethod
    def of(cls, row: Task) -> ClaimedTask:
        follows = row.parent_id if row.kind in ("follow-up", "attempt") else None  # an attempt: of a follow-up
        return cls(id=row.id, repo=row.repo, ref=row.ref, instruction=row.instruction, max_steps=row.max_steps,
                   setup=row.setup, start_diff=row.start_diff, follows=follows, user_id=row.user_id,
                   attempt_of=row.attempt_of, attempt_index=row.attempt_index)  # fmt: skip


@dataclass(kw_only=True)
class AttemptRun:
    """One attempt on its way through the stages: what it was given, and what it holds (all of it let go
    whatever happens)."""

    ctx: WorkerContext
    attempt: Attempt
    watch: Watch
    lease: ExitStack
    """Keeps the mirror from being pruned until the result is published."""
    task: ClaimedTask
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
    task_env: TaskEnvironment | None = None
    """The environment its repository matches (docs/environments.md)."""
    environment: Environment | None = None
    egress: EgressLease | None = None
    """The agent's way out through the egress proxy (its network policy is an allowlist or full)."""
    sandbox: Sandbox | None = None
    trajectory: Trajectory = field(default_factory=Trajectory)
    submission: Submitted | None = None
    commit: Commit | None = None


def _prepare_workspace(run: AttemptRun) -> None:
    """The workspace's own disk (made before the clone: the kernel keeps all of it within the limit) and the
    commit's folder, owned by this process (if it dies, a live worker's reaper removes them); whose task it is
    and what it starts from."""
    mark_owned(run.workspace)
    mark_owned(run.commit_into)
    run.lease.callback(remove_owned, run.commit_into)
    run.ctx.backend.create_workspace(run.workspace)
    run.owner, run.start_diff, run.start_from = run.attempt.read(lambda session: _starting_point(session, run.task))
    if run.ctx.hooks is not None and (run.task.attempt_index or 1) == 1:  # of a task's attempts, the first tells
        run.ctx.hooks.started(run.task.attempt_of or run.task.id)


def _starting_point(session: Session, task: ClaimedTask) -> tuple[Requester | None, str | None, str]:
    parent = store.patches.get_patch(session, task.follows) if task.follows else None
    owner = task_owner(session, task.user_id)
    if parent is not None:
        return owner, parent.diff, "the previous task's patch"
    return owner, task.start_diff, "the uploaded local changes"


def _clone(run: AttemptRun) -> None:
    ctx, task = run.ctx, run.task
    run.emit(PhaseEvent(phase="clone", repo=task.repo, ref=task.ref))
    credentials = ctx.hooks.git_credentials(task.attempt_of or task.id, task.repo) if ctx.hooks is not None else None
    run.base_sha, run.mirror = clone_repository(
        task.repo, task.ref, run.workspace, checkout=ctx.checkout, owner=run.owner, credentials=credentials,
        lease=run.lease,
    )  # fmt: skip


def _apply_start_diff(run: AttemptRun) -> None:
    """The uploaded local changes, or the parent's patch of a follow-up, before any untrusted code ran."""
    if run.start_diff:
        apply_to_workspace(run.workspace, run.start_diff, what=run.start_from, memory=run.ctx.limits.git_memory)
        run.emit(PhaseEvent(phase="start-diff", files=len(changed_files(run.start_diff))))


def _set_up(run: AttemptRun) -> None:
    """The set-up script (or the automatic set-up), or its snapshot: where the agent's sandbox starts."""
    ctx, task, base_sha = run.ctx, run.task, run.base_sha
    assert base_sha is not None
    run.attempt.write(lambda session: store.tasks.set_base_sha(session, task.id, base_sha))
    run.emit(PhaseEvent(phase="setup", base_sha=base_sha))
    run.task_env = run.attempt.read(lambda session: task_environment(
        session, task.id, owner=run.owner, access=ctx.checkout.access, open_box=ctx.secrets.box))  # fmt: skip
    run.environment = prepare_environment(
        task_id=task.id, repository=task.repo, workspace=run.workspace, setup_path=task.setup,
        backend=ctx.backend, cache=ctx.environments, policy=ctx.setup, emit=run.emit, on_sandbox=run.watch.attach,
        owner=None if task.user_id is None else str(task.user_id), git_memory=ctx.limits.git_memory,
        task_env=run.task_env, egress=ctx.egress,
    )  # fmt: skip


def _start_sandbox(run: AttemptRun) -> None:
    """The agent's sandbox, from the set-up's environment, reaching out only through the egress proxy when its
    network policy is not ``none``; the task is running from here."""
    assert run.environment is not None
    policy = run.task_env.agent_network if run.task_env else DEFAULT_AGENT_NETWORK
    run.egress = open_lease(run.ctx.egress, run.task.id, policy, run.lease, phase="agent")
    run.sandbox = sandbox = run.ctx.backend.start(
        SandboxSpec(
            task_id=run.task.id,
            workspace=run.workspace,
            image=run.environment.ref,
            network=run.ctx.agent_network and run.egress is None,
            egress=run.egress.folder if run.egress else None,
            ca_bundle=run.ctx.setup.ca_bundle if run.egress else None,  # a TLS-intercepting way out needs its CA
            lifetime=max(run.deadline - time.monotonic(), 1.0),
            env=run.task_env.variables if run.task_env else {},  # its variables; never its secrets
        )
    )
    run.watch.attach(sandbox)
    enter_environment(sandbox, run.environment.ref)
    run.attempt.write(lambda session: store.tasks.transition(session, run.task.id, from_states=[TaskState.preparing],
                                                       to_state=TaskState.running))  # fmt: skip


def _run_agent(run: AttemptRun) -> None:
    assert run.sandbox is not None and run.environment is not None
    run.emit(PhaseEvent(phase="agent", environment=run.environment.ref))
    config = run.ctx.agent
    if run.task.max_steps:
        config = replace(config, budget=replace(config.budget, max_steps=run.task.max_steps))
    # With the egress proxy, what it refused is told after each tool result (its step), and at the end.
    report = BlockedReport(run.egress, run.emit, phase="agent") if run.egress else None
    policy = run.task_env.agent_network if run.task_env else DEFAULT_AGENT_NETWORK
    try:
        result = run_agent(
            instruction=run.task.instruction,
            model=UsageRecorder(run.ctx.model_factory(run.task.id), run.attempt, run.watch, run.trajectory),
            ctx=ToolContext(
                sandbox=run.sandbox, output_limit=config.tool_output_limit, command_timeout=config.command_timeout
            ),
            config=config,
            on_event=report or run.emit,
            should_stop=run.watch.should_stop,
            trajectory=run.trajectory,
            environment_note="\n\n".join(note for note in (run.environment.note, network_note(policy)) if note) or None,
            mailbox=TaskMailbox(run.attempt),
            images=agent_images(run.attempt, run.task.id, run.emit),
        )
    finally:
        if report is not None:
            report.flush()
    run.submission = result.submission


def _store_patch(run: AttemptRun) -> None:
    assert run.submission is not None
    keep_patch(run, run.submission, complete=True)


STAGES: tuple[Callable[[AttemptRun], None], ...] = (
    _prepare_workspace, _clone, _apply_start_diff, _set_up, _start_sandbox, _run_agent, _store_patch,
)  # fmt: skip
"""The task's way up to its patch; the watch is asked before each (publish and finish always follow)."""


def keep_patch(run: AttemptRun, submission: Submitted, *, complete: bool) -> None:
    assert run.sandbox is not None and run.base_sha is not None and run.mirror is not None
    run.commit = store_patch(
        run.attempt, run.sandbox, submission, run.trajectory, base_sha=run.base_sha, mirror=run.mirror,
        commit_into=run.commit_into, complete=complete, author=run.ctx.author, limits=run.ctx.limits,
    )  # fmt: skip
