"""What an attempt writes about its task while it runs: events, model usage, the trajectory, the patch. All of
it goes through the attempt's fenced writes (``worker/attempt.py``): refused once the attempt is superseded,
retried while the database is unreachable."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import store.events
import store.patches
import store.tasks
from agent.base import AssistantTurn, ModelClient, Submitted
from agent.loop import Trajectory
from overnight.events import EventSink, PatchEvent, SetupEvent, TaskEvent, ToolResultEvent
from sandbox.base import Sandbox
from worker.attempt import Attempt, Superseded, Watch
from worker.hostgit import DataLimits
from worker.patch import changed_files, commit_message, extract_patch, tests_run
from worker.repo import Commit, commit_patch

log = logging.getLogger(__name__)
TRAJECTORY_EVERY_SECONDS = 10.0
"""While a task runs, its transcript is stored before the second model call, then at most this often."""


def store_patch(
    attempt: Attempt,
    sandbox: Sandbox,
    submission: Submitted,
    trajectory: Trajectory,
    *,
    base_sha: str,
    mirror: Path,
    commit_into: Path,
    complete: bool,
    author: tuple[str, str],
    limits: DataLimits = DataLimits(),
) -> Commit | None:
    """The sandbox's changes as the task's patch: the diff, its one commit on the base (made in
    ``commit_into`` from the pristine mirror, which checks that it applies), the commit's message, diffstat and
    ``git am`` form; ``complete=False`` marks a run cut short. The commit is returned for the GitHub push
    (None for an empty diff)."""
    task_id = attempt.task_id
    patch = extract_patch(sandbox, base_sha, max_bytes=limits.max_patch_bytes)
    files = changed_files(patch.diff)
    message = commit_message(
        title=submission.pr_title, summary=submission.summary, files=files, tests=tests_run(trajectory)
    )
    commit = commit_patch(mirror, base_sha, patch.diff, message, into=commit_into, author=author[0],
                          email=author[1], memory=limits.git_memory)  # fmt: skip
    diffstat, mbox = (commit.diffstat, commit.mbox) if commit is not None else ("", "")
    body = submission.pr_body.strip() or submission.summary.strip()

    def save(session: Session) -> None:
        stored = store.patches.store_patch(
            session, task_id, base_sha=base_sha, diff=patch.diff, title=submission.pr_title, body=body,
            files_changed=patch.files_changed, complete=complete, excluded=patch.excluded,
        )  # fmt: skip
        stored.diffstat, stored.commit_message, stored.mbox = diffstat, message, mbox
        store.events.append_event(session, task_id, PatchEvent(
            files_changed=patch.files_changed, bytes=len(patch.diff), complete=complete, excluded=patch.excluded,
            empty=not patch.diff,
        ))  # fmt: skip

    attempt.write(save)
    return commit


def store_trajectory(attempt: Attempt, trajectory: Trajectory) -> None:
    data = {"tools": trajectory.tools, "messages": trajectory.messages, "steps": trajectory.steps,
            "tool_results": trajectory.tool_results}  # fmt: skip
    try:
        attempt.write(lambda session: store.patches.store_trajectory(session, attempt.task_id, data))
    except Superseded:
        raise
    except Exception:  # the task's outcome matters more than its transcript
        log.exception("could not store the trajectory of task %s", attempt.task_id)


def event_sink(attempt: Attempt) -> EventSink:
    """Appends the task's events (fenced); a set-up's or a tool's seconds also count as sandbox time."""

    def emit(event: TaskEvent) -> None:
        def append(session: Session) -> None:
            store.events.append_event(session, attempt.task_id, event)
            if isinstance(event, SetupEvent | ToolResultEvent) and event.duration:
                store.tasks.add_sandbox_seconds(session, attempt.task_id, event.duration)

        attempt.write(append)

    return emit


class UsageRecorder:
    """Adds each model call's token usage to the task row; keeps the stored trajectory current before model
    calls (readable while the task runs, kept if its worker dies); and lets a cancel end the task while a model
    call is still streaming: the call runs in a thread of its own, and the task stops waiting for it when the
    user cancels (the abandoned request ends at its own timeout; its answer is dropped)."""

    def __init__(self, model: ModelClient, attempt: Attempt, watch: Watch, trajectory: Trajectory) -> None:
        self.model, self.attempt, self.watch, self.trajectory = model, attempt, watch, trajectory
        self._stored_at: float | None = None

    def history_message(self, turn: AssistantTurn) -> dict[str, Any]:
        return self.model.history_message(turn)

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        if len(self.trajectory.messages) > 2 and (
            self._stored_at is None or time.monotonic() - self._stored_at >= TRAJECTORY_EVERY_SECONDS
        ):
            self._stored_at = time.monotonic()
            store_trajectory(self.attempt, self.trajectory)
        result: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                result["turn"] = self.model.complete(messages, tools)
            except BaseException as exc:  # handed to the task's thread, which decides
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, name=f"model-{self.attempt.task_id}", daemon=True).start()
        while not done.wait(0.2):
            self.watch.check()
        if "error" in result:
            raise result["error"]
        turn: AssistantTurn = result["turn"]
        usage, task_id = turn.usage, self.attempt.task_id
        self.attempt.write(lambda session: store.tasks.add_usage(session, task_id, prompt=usage.prompt_tokens,
                           cached=usage.cached_tokens, completion=usage.completion_tokens))  # fmt: skip
        return turn
