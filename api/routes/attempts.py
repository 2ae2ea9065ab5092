"""A task's best-of-N attempts: each one's state, patch size, test result, rank and why, and its cost."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

import store.bestof
import store.patches
import store.tasks
from api.attempt_models import AttemptList, AttemptPublic
from api.deps import CurrentUser, SessionDep, reject_unknown_query
from api.errors import APIError
from api.schemas import ErrorResponse
from store.bestof import RankEntry
from store.models import Task

router = APIRouter(prefix="/v1/tasks", tags=["attempts"], dependencies=[Depends(reject_unknown_query)])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
    404: {"model": ErrorResponse, "description": "No such task (or not yours), or a task that runs no attempts."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
}


@router.get("/{task_id}/attempts", response_model=AttemptList, responses=ERRORS)
def list_attempts(task_id: str, session: SessionDep, user: CurrentUser) -> AttemptList:
    """The attempts of a task filed with ``attempts`` > 1, by K: each one's state, its patch's size, the check of
    its patch (test command, passed, exit code, the end of the output), its rank and why, steps, tokens and
    sandbox seconds. Ranks appear once every attempt ended and the ranking is stored."""
    task = store.tasks.get_task(session, task_id, user=user)
    if task is None:
        raise APIError(404, "task_not_found", f"no task {task_id!r}")
    if not store.bestof.has_attempts(task):
        raise APIError(404, "no_attempts", f"task {task_id} runs no attempts (it was filed with attempts=1)")
    ranking = store.bestof.ranking_of(session, task_id)
    entries = {entry.attempt: entry for entry in ranking.entries} if ranking else {}
    best = ranking.best if ranking else None
    attempts = [_attempt(session, each, entries.get(each.attempt_index or 0), best)
                for each in store.bestof.attempts_of(session, task_id)]  # fmt: skip
    return AttemptList(task_id=task_id, state=task.state, ranked=ranking is not None, best=best,
                       checked=ranking.checked if ranking else None, attempts=attempts)  # fmt: skip


def _attempt(session: SessionDep, task: Task, entry: RankEntry | None, best: int | None) -> AttemptPublic:
    patch = store.patches.get_patch(session, task.id)
    index = task.attempt_index or 0
    return AttemptPublic(
        attempt=index, task_id=task.id, state=task.state, failure_reason=task.failure_reason,
        rank=entry.rank if entry else None, best=best == index, reason=entry.reason if entry else None,
        test_command=entry.test_command if entry else None, passed=entry.passed if entry else None,
        exit_code=entry.exit_code if entry else None, output_tail=entry.output_tail if entry else None,
        patch_bytes=len(patch.diff.encode()) if patch is not None else None,
        files_changed=patch.files_changed if patch is not None else None,
        steps=task.steps, prompt_tokens=task.prompt_tokens, cached_tokens=task.cached_tokens,
        completion_tokens=task.completion_tokens, sandbox_seconds=task.sandbox_seconds,
        started_at=task.started_at, finished_at=task.finished_at,
    )  # fmt: skip
