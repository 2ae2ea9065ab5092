"""Checking one attempt's patch for the ranking (``worker/bestof.py``): in a fresh sandbox from the same environment
as the attempt's — its base commit, the task's start (uploaded changes or a parent's patch), the set-up's snapshot
(found by its cache key, so the set-up does not run again) — the patch is applied and the test command run.

Everything here is the attempt's own doing, hence hostile: the patch is applied inside the sandbox, the command
runs there with the agent's limits and no network, and only its exit code and the end of its output come back.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import cast

from sqlalchemy.orm import Session

import store.tasks
from agent.loop import Trajectory
from overnight.events import EventSink, SetupEvent, TaskEvent, ToolResultEvent
from sandbox.base import Sandbox, SandboxSpec
from sandbox.output import truncate_middle
from sandbox.reaper import mark_owned, remove_owned
from store.bestof import OUTPUT_TAIL
from store.models import Trajectory as TrajectoryRow
from worker.attempt import Attempt, Watch
from worker.context import WorkerContext
from worker.environment import enter_environment
from worker.patch import tests_run
from worker.stages import AttemptRun, ClaimedTask, _apply_start_diff, _clone, _set_up, _starting_point  # its stages

START_DIFF = "/tmp/overnight-start.diff"
ATTEMPT_DIFF = "/tmp/overnight-attempt.diff"
APPLY = f"""set -e
cd /workspace
G="/usr/bin/git -c core.fsmonitor=false -c core.hooksPath=/dev/null"
if [ -s {START_DIFF} ]; then $G apply -R --binary --whitespace=nowarn {START_DIFF}; fi
if [ -s {ATTEMPT_DIFF} ]; then $G apply --binary --whitespace=nowarn {ATTEMPT_DIFF}; fi
"""


MAX_CHECKS_AT_ONCE = 4
"""Checks of one ranking running at once (each a sandbox of its own)."""


class RunningChecks:
    """The sandboxes of the checks running at once, held by the ranking's watch as its one sandbox: a stop (cancel,
    superseded) interrupts the command of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sandboxes: list[Sandbox] = []

    def interrupt(self) -> None:
        with self._lock:
            running = list(self._sandboxes)
        for sandbox in running:
            sandbox.interrupt()

    def swap(self, old: Sandbox | None, new: Sandbox | None) -> None:
        with self._lock:
            if old is not None and old in self._sandboxes:
                self._sandboxes.remove(old)
            if new is not None:
                self._sandboxes.append(new)


class CheckWatch:
    """One check's side of the ranking's watch: what the stages ask of a watch (``check``, ``attach``)."""

    def __init__(self, watch: Watch, running: RunningChecks) -> None:
        self.watch, self.running = watch, running
        self.sandbox: Sandbox | None = None

    def check(self) -> None:
        self.watch.check()

    def attach(self, sandbox: Sandbox | None) -> None:
        self.running.swap(self.sandbox, sandbox)
        self.sandbox = sandbox
        if sandbox is not None:
            self.watch.check()


@dataclass(kw_only=True, frozen=True)
class CheckResult:
    passed: bool | None
    """None: the check could not say (the patch did not apply to a fresh checkout, the command timed out)."""
    exit_code: int | None = None
    output_tail: str | None = None
    note: str | None = None
    """Why the check could not say, for the ranking's reason."""


def last_passing_test(data: dict[str, object] | None) -> str | None:
    """The last test command the agent ran that passed (exit code 0), from its stored trajectory."""
    if not data:
        return None
    trajectory = Trajectory(
        messages=list(data.get("messages") or []),  # type: ignore[call-overload]
        tool_results=list(data.get("tool_results") or []),  # type: ignore[call-overload]
    )
    try:
        passing = [command for command, code in tests_run(trajectory) if code == 0]
    except (KeyError, TypeError, json.JSONDecodeError):  # a trajectory of another shape tells nothing
        return None
    return passing[-1].strip() if passing else None


def stored_trajectory(session: Session, task_id: str) -> dict[str, object] | None:
    row = session.get(TrajectoryRow, task_id)
    return row.data if row is not None else None


def _seconds_only(attempt: Attempt) -> EventSink:
    """The set-up's events stay out of the task's stream (the attempts' streams have them); their seconds count."""

    def emit(event: TaskEvent) -> None:
        if isinstance(event, SetupEvent | ToolResultEvent) and event.duration:
            seconds = event.duration
            attempt.write(lambda session: store.tasks.add_sandbox_seconds(session, attempt.task_id, seconds))

    return emit


def check_patch(
    ctx: WorkerContext, attempt: Attempt, watch: Watch, running: RunningChecks, group: ClaimedTask, *, index: int,
    base_sha: str, diff: str, command: str,
) -> CheckResult:  # fmt: skip
    """Attempt ``index``'s ``diff`` on ``base_sha`` in a fresh sandbox, then ``command``; the sandbox and its
    workspace are gone when this returns, whatever happened. Checks may run at once (``running``)."""
    workspace = ctx.workspaces / f"{group.id}.{attempt.number}.check{index}"
    own = CheckWatch(watch, running)
    with ExitStack() as lease:
        run = AttemptRun(
            ctx=ctx, attempt=attempt, watch=cast(Watch, own), lease=lease, task=replace(group, ref=base_sha),
            emit=_seconds_only(attempt), workspace=workspace, commit_into=workspace.with_name(workspace.name + ".c"),
            deadline=time.monotonic() + ctx.setup.lifetime,
        )  # fmt: skip
        try:
            return _run_check(run, diff, command)
        finally:
            if run.sandbox is not None:
                own.attach(None)
                run.sandbox.close()
            remove_owned(workspace)


def _run_check(run: AttemptRun, diff: str, command: str) -> CheckResult:
    ctx, watch = run.ctx, run.watch
    mark_owned(run.workspace)
    ctx.backend.create_workspace(run.workspace)
    run.owner, run.start_diff, run.start_from = run.attempt.read(lambda session: _starting_point(session, run.task))
    for stage in (_clone, _apply_start_diff, _set_up):
        watch.check()
        stage(run)
    assert run.environment is not None
    run.sandbox = sandbox = ctx.backend.start(
        SandboxSpec(
            task_id=run.task.id,
            workspace=run.workspace,
            image=run.environment.ref,
            network=False,
            lifetime=max(run.deadline - time.monotonic(), 1.0),
            env=run.task_env.variables if run.task_env else {},
        )
    )
    watch.attach(sandbox)
    enter_environment(sandbox, run.environment.ref)
    for path, text in ((START_DIFF, run.start_diff or ""), (ATTEMPT_DIFF, diff)):  # as the command's user
        sandbox.run(f"cat > {path}", stdin=text.encode(), timeout=60)
    applied = sandbox.run(APPLY, timeout=120)
    if applied.exit_code != 0:
        last = (applied.stderr.strip().splitlines() or [f"exit code {applied.exit_code}"])[-1]
        return CheckResult(passed=None, note=f"the patch does not apply to a fresh checkout: {last[:200]}")
    watch.check()
    result = sandbox.run(command, timeout=ctx.agent.command_timeout, session=True, output_limit=OUTPUT_TAIL * 4)
    seconds = result.duration
    run.attempt.write(lambda session: store.tasks.add_sandbox_seconds(session, run.task.id, seconds))
    output = truncate_middle((result.stdout + result.stderr)[-OUTPUT_TAIL * 2 :], OUTPUT_TAIL)
    if result.timed_out:
        return CheckResult(passed=None, exit_code=result.exit_code, output_tail=output,
                           note=f"the test command timed out after {ctx.agent.command_timeout:g} s")  # fmt: skip
    return CheckResult(passed=result.exit_code == 0, exit_code=result.exit_code, output_tail=output)
