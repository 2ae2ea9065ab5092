"""Ranking a task's attempts once they all ended (``store/bestof.py`` says how a task runs as N attempts).

The ranking runs on a worker as any task does — sent as the task's id, claimed (:func:`store.bestof.claim_ranking`:
only once every attempt ended, by one worker), its writes fenced by the claim's number, its heartbeat beaten by a
:class:`~worker.attempt.Watch` that also hears a cancel — so a worker lost mid-ranking is recovered by the
reconciler as any task's is, and a crash still ends the task with a reason.

Each attempt that ended with a patch is checked in a fresh sandbox (``worker/bestof_check.py``) by the test command
its agent ran last that passed (else the one another attempt's agent ran), and the attempts are ranked: a patch
that can be taken first, then tests passing (passed, not checked, failing), then the smaller patch, then the
lower number. The best one's patch becomes the task's own (so its diff, mbox, follow-ups and GitHub publishing
work as for any task); the task succeeds when an attempt left a patch, and fails with the attempts' reasons when
none did. A cancelled task is ranked without checks and ends cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal, cast

from sqlalchemy.orm import Session

import store.bestof
import store.patches
import store.tasks
from agent.base import Cancelled
from sandbox.base import Sandbox
from sandbox.reaper import mark_owned, remove_owned
from store.attempts import CANCELLED_BY_USER
from store.bestof import RankEntry, Ranking, size_text
from store.models import Task, TaskState
from worker import errors
from worker.attempt import Attempt, Superseded, Watch
from worker.bestof_check import (
    MAX_CHECKS_AT_ONCE,
    CheckResult,
    RunningChecks,
    check_patch,
    last_passing_test,
    stored_trajectory,
)
from worker.context import WorkerContext
from worker.repo import Commit, clone_repository, commit_patch, task_owner
from worker.stages import ClaimedTask

log = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class Candidate:
    """One attempt as it ended."""

    index: int
    task_id: str
    state: TaskState
    failure_reason: str | None
    base_sha: str | None
    diff: str | None
    """None: no patch stored."""
    files_changed: int | None
    own_test: str | None


def is_group(task_id: str, ctx: WorkerContext) -> bool:
    with ctx.sessions() as session:
        task = session.get(Task, task_id)
        return task is not None and store.bestof.has_attempts(task)


def group_to_rank(task_id: str, ctx: WorkerContext) -> str | None:
    """The group of attempt task ``task_id`` when its ranking is due now (this attempt was the last to end)."""
    with ctx.sessions() as session:
        group_id = store.bestof.group_of(session, task_id)
        return group_id if group_id is not None and store.bestof.ranking_due(session, group_id) else None


def rank_attempts(group_id: str, ctx: WorkerContext) -> Literal["ran", "busy", "skipped"]:
    """Claim the ranking of ``group_id`` and run it to the group's end: "ran", "busy" (its user is at the concurrency
    limit: send it again later), or "skipped" when it is not due."""
    with ctx.sessions.begin() as session:
        number = store.bestof.claim_ranking(session, group_id, worker=ctx.worker_name,
                                            max_active_per_user=ctx.max_active_per_user)  # fmt: skip
        row = session.get(Task, group_id) if isinstance(number, int) else None
        group = ClaimedTask.of(row) if row is not None else None
    if number == "busy":
        return "busy"
    if not isinstance(number, int) or group is None:
        return "skipped"
    attempt = Attempt(ctx.sessions, group_id, number, retry_seconds=ctx.database_retry_seconds)
    with Watch(attempt, ctx.heartbeat_seconds) as watch, ExitStack() as lease:
        try:
            state, reason, commit = _rank(ctx, attempt, watch, lease, group)
        except Superseded:
            log.warning("task %s: ranking %d was superseded; it writes nothing more", group_id, number)
            return "ran"
        except Exception as exc:  # every way out ends the task
            log.exception("task %s: ranking its attempts failed", group_id)
            state, reason, commit = TaskState.failed, f"ranking the attempts failed: {errors.failure_reason(exc)}", None
        _publish_and_finish(ctx, attempt, group_id, state, reason, commit)
    return "ran"


def _rank(
    ctx: WorkerContext, attempt: Attempt, watch: Watch, lease: ExitStack, group: ClaimedTask
) -> tuple[TaskState, str | None, Commit | None]:
    candidates = attempt.read(lambda session: _candidates(session, group.id))
    cancelled = watch.stop_reason(ask=True) == "cancelled"
    commands = _commands(candidates)
    jobs = (
        [] if cancelled else [c for c in candidates if c.index in commands and c.diff and _usable(c, cancelled=False)]
    )
    checks, stopped = _check_all(ctx, attempt, watch, group, jobs, commands)
    cancelled = cancelled or stopped
    ranking = build_ranking(candidates, checks, commands, cancelled=cancelled)
    best = next((c for c in candidates if c.index == ranking.best), None)
    commit = _commit(ctx, lease, group, best) if best is not None and ctx.hooks is not None else None
    attempt.write(lambda session: _store(session, group.id, ranking, best, commit))
    return (*_ending(candidates, ranking, cancelled=cancelled), commit)


def _check_all(
    ctx: WorkerContext, attempt: Attempt, watch: Watch, group: ClaimedTask, jobs: Sequence[Candidate],
    commands: dict[int, str],
) -> tuple[dict[int, CheckResult], bool]:  # fmt: skip
    """Each job's patch checked, up to MAX_CHECKS_AT_ONCE at once (a stop interrupts every check's command), and
    whether the user cancelled meanwhile. A superseded ranking raises once every check has let go."""
    checks: dict[int, CheckResult] = {}
    if not jobs:
        return checks, False
    running = RunningChecks()
    try:
        watch.attach(cast(Sandbox, running))  # the watch stops what it holds: every check's sandbox
    except Cancelled:
        return checks, True
    try:
        with ThreadPoolExecutor(max_workers=max(min(MAX_CHECKS_AT_ONCE, len(jobs)), 1)) as pool:
            futures = {c.index: pool.submit(check_patch, ctx, attempt, watch, running, group, index=c.index,
                                            base_sha=c.base_sha or "", diff=c.diff or "", command=commands[c.index])
                       for c in jobs}  # fmt: skip
    finally:
        watch.attach(None)
    cancelled, superseded = False, None
    for index, future in futures.items():
        exc = future.exception()
        if exc is None:
            checks[index] = future.result()
        elif isinstance(exc, Superseded):
            superseded = exc
        elif isinstance(exc, Cancelled) or watch.stop_reason(ask=True) == "cancelled":
            cancelled = True
        else:  # the check could not say; the ranking goes on without it
            log.warning("task %s: checking attempt %d failed: %s", group.id, index, exc)
            checks[index] = CheckResult(passed=None, note=f"check failed: {errors.failure_reason(exc)}")
    if superseded is not None:
        raise superseded
    if cancelled or watch.stop_reason(ask=True) == "cancelled":  # what an interrupted command said is no verdict
        return {}, True
    return checks, False


def _candidates(session: Session, group_id: str) -> list[Candidate]:
    found = []
    for task in store.bestof.attempts_of(session, group_id):
        patch = store.patches.get_patch(session, task.id)
        found.append(Candidate(
            index=task.attempt_index or 0, task_id=task.id, state=TaskState(task.state),
            failure_reason=task.failure_reason, base_sha=patch.base_sha if patch else task.base_sha,
            diff=patch.diff if patch else None, files_changed=patch.files_changed if patch else None,
            own_test=last_passing_test(stored_trajectory(session, task.id)),
        ))  # fmt: skip
    return found


def _commands(candidates: Sequence[Candidate]) -> dict[int, str]:
    """Each attempt's test command: its own agent's last passing one, else the first other attempt's."""
    fallback = next((c.own_test for c in candidates if c.own_test), None)
    return {c.index: command for c in candidates if (command := c.own_test or fallback)}


def _usable(candidate: Candidate, *, cancelled: bool) -> bool:
    """Whether its patch may become the task's: an attempt that succeeded with one (when cancelled: any patch)."""
    if candidate.diff is None:
        return False
    return cancelled or candidate.state is TaskState.succeeded


def build_ranking(
    candidates: Sequence[Candidate], checks: dict[int, CheckResult], commands: dict[int, str], *, cancelled: bool
) -> Ranking:
    entries = []
    for c in candidates:
        check = checks.get(c.index)
        entries.append(RankEntry(
            attempt=c.index, task_id=c.task_id, state=c.state.value, failure_reason=c.failure_reason,
            test_command=commands.get(c.index) if check is not None else None,
            passed=check.passed if check else None, exit_code=check.exit_code if check else None,
            output_tail=check.output_tail if check else None,
            patch_bytes=len(c.diff.encode()) if c.diff is not None else None, files_changed=c.files_changed,
            rank=0, reason=_reason(c, check, cancelled=cancelled),
        ))  # fmt: skip
    usable = {c.index for c in candidates if _usable(c, cancelled=cancelled)}
    ranked = store.bestof.rank(entries, usable=usable)
    best = ranked[0].attempt if ranked and ranked[0].attempt in usable else None
    return Ranking(best=best, checked=not cancelled, entries=ranked)


def _reason(c: Candidate, check: CheckResult | None, *, cancelled: bool) -> str:
    if c.diff is None:
        why = c.failure_reason or c.state.value
        return f"no patch: {why}" if c.state is not TaskState.succeeded else "no patch"
    size = size_text(len(c.diff.encode()))
    if not c.diff:
        return "no changes needed"
    if c.state is not TaskState.succeeded and not cancelled:
        return f"{c.state.value}: {c.failure_reason or 'no reason given'} (partial patch, {size}; not ranked)"
    if check is None:
        return f"not checked ({'cancelled' if cancelled else 'no test command'}); {size}"
    if check.passed is None:
        return f"{check.note or 'tests could not be run'}; {size}"
    return f"tests {'pass' if check.passed else 'fail'}; {size}"


def _commit(ctx: WorkerContext, lease: ExitStack, group: ClaimedTask, best: Candidate) -> Commit | None:
    """The best patch as one commit on its base, made from a fresh fetch (for the GitHub push); None on failure."""
    if not best.diff or best.base_sha is None:
        return None
    workspace = ctx.workspaces / f"{group.id}.rank"
    commit_into = ctx.workspaces / f"{group.id}.rank.commit"
    mark_owned(workspace)
    mark_owned(commit_into)
    lease.callback(remove_owned, commit_into)
    try:
        ctx.backend.create_workspace(workspace)
        with ctx.sessions() as session:
            owner = task_owner(session, group.user_id)
        credentials = ctx.hooks.git_credentials(group.id, group.repo) if ctx.hooks is not None else None
        _, mirror = clone_repository(group.repo, best.base_sha, workspace, checkout=ctx.checkout, owner=owner,
                                     credentials=credentials, lease=lease)  # fmt: skip
        with ctx.sessions() as session:
            patch = store.patches.get_patch(session, best.task_id)
            message = patch.commit_message if patch is not None else ""
        return commit_patch(mirror, best.base_sha, best.diff, message, into=commit_into, author=ctx.author[0],
                            email=ctx.author[1], memory=ctx.limits.git_memory)  # fmt: skip
    except Exception:  # publishing says so; the task keeps its ranking and patch
        log.exception("task %s: could not make the best attempt's commit", group.id)
        return None
    finally:
        remove_owned(workspace)


def _store(session: Session, group_id: str, ranking: Ranking, best: Candidate | None, commit: Commit | None) -> None:
    store.bestof.store_ranking(session, group_id, ranking, best.task_id if best is not None else None)
    if commit is not None:
        patch = store.patches.get_patch(session, group_id)
        if patch is not None:
            patch.diffstat, patch.mbox = commit.diffstat, commit.mbox


def _ending(candidates: Sequence[Candidate], ranking: Ranking, *, cancelled: bool) -> tuple[TaskState, str | None]:
    if cancelled:
        return TaskState.cancelled, CANCELLED_BY_USER
    if ranking.best is not None:
        return TaskState.succeeded, None
    if not candidates:
        return TaskState.failed, "no attempt ran"
    why = "; ".join(f"attempt {c.index} {c.state.value}" + (f" ({c.failure_reason})" if c.failure_reason else "")
                    for c in candidates)  # fmt: skip
    return TaskState.failed, f"no attempt left a patch: {why}"


def _publish_and_finish(
    ctx: WorkerContext, attempt: Attempt, group_id: str, state: TaskState, reason: str | None, commit: Commit | None
) -> None:
    """As a task's end (``worker/pipeline.py``): where it came from is told, then the final state is written."""
    try:
        attempt.write(lambda session: None)
        if ctx.hooks is not None:
            try:
                ctx.hooks.finished(group_id, state, reason, commit)
            except Exception:
                log.exception("publishing the result of task %s failed", group_id)
        attempt.write(lambda session: store.tasks.transition(
            session, group_id, from_states=[TaskState.running], to_state=state, reason=reason))  # fmt: skip
    except Superseded:
        log.warning("task %s: ranking %d was superseded; its end (%s) is not written", group_id, attempt.number, state)
    except Exception:  # the database stayed away: the reconciler takes the task up once its heartbeat is stale
        log.exception("could not write the end (%s: %s) of task %s", state, reason, group_id)
