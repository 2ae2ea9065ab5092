"""Tasks: create, list, show, cancel, events, patch."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse

from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import APIError
from api.schemas import (
    ErrorResponse,
    EventList,
    EventPublic,
    PatchPublic,
    TaskCreate,
    TaskList,
    TaskPublic,
    TrajectoryPublic,
)
from migrations import store
from migrations.models import Task, TaskState
from overnight.repourl import InvalidRepoError, validate_ref, validate_repo_url

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
PatchFormat = Literal["diff", "json"]
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def _task_or_404(session: SessionDep, task_id: str) -> Task:
    task = store.get_task(session, task_id)
    if task is None:
        raise APIError(404, "task_not_found", f"no task {task_id!r}")
    return task


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    responses={**ERRORS, 503: {"model": ErrorResponse}},
)
def create_task(body: TaskCreate, session: SessionDep, settings: SettingsDep, queue: QueueDep) -> TaskPublic:
    try:
        repo = validate_repo_url(body.repo, allow_local=settings.allow_local_repos)
        ref = validate_ref(body.ref) if body.ref else None
    except InvalidRepoError as exc:
        field = "ref" if str(exc).startswith("ref") else "repo"
        raise APIError(422, "invalid_repo", str(exc), [{"field": field, "message": str(exc)}]) from exc
    task = store.create_task(
        session, repo=repo, ref=ref, instruction=body.instruction, max_steps=body.max_steps, setup=body.setup
    )
    session.commit()
    try:
        queue.enqueue(task.id)
    except Exception as exc:  # any broker failure: the task must not stay queued with no message
        log.exception("could not enqueue task %s", task.id)
        store.transition(
            session,
            task.id,
            from_states=[TaskState.queued],
            to_state=TaskState.failed,
            reason=f"could not enqueue the task: broker unreachable ({type(exc).__name__})",
        )
        session.commit()
        raise APIError(503, "broker_unavailable", "the task queue is unreachable; the task was not started") from exc
    return TaskPublic.model_validate(task)


@router.get("", response_model=TaskList)
def list_tasks(
    session: SessionDep,
    state: Annotated[TaskState | None, Query(description="Only tasks in this state.")] = None,
    repo: Annotated[str | None, Query(max_length=2048, description="Only tasks of this repository.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> TaskList:
    tasks = store.list_tasks(session, limit=limit, state=state.value if state else None, repo=repo)
    return TaskList(tasks=[TaskPublic.model_validate(task) for task in tasks])


@router.get("/{task_id}", response_model=TaskPublic, responses=ERRORS)
def show_task(task_id: str, session: SessionDep) -> TaskPublic:
    return TaskPublic.model_validate(_task_or_404(session, task_id))


@router.post("/{task_id}/cancel", response_model=TaskPublic, responses=ERRORS)
def cancel_task(task_id: str, session: SessionDep) -> TaskPublic:
    _task_or_404(session, task_id)
    store.request_cancel(session, task_id)
    session.commit()
    return TaskPublic.model_validate(_task_or_404(session, task_id))


@router.get("/{task_id}/events", response_model=EventList, responses=ERRORS)
def task_events(
    task_id: str,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, description="Only events with a larger sequence number.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> EventList:
    _task_or_404(session, task_id)
    events = store.list_events(session, task_id, after=after, limit=limit)
    return EventList(events=[EventPublic.model_validate(event) for event in events])


@router.get(
    "/{task_id}/patch",
    responses={
        **ERRORS,
        409: {"model": ErrorResponse},
        200: {
            "content": {"text/x-diff": {}, "application/json": {"schema": PatchPublic.model_json_schema()}},
            "description": "format=diff: the unified diff (git apply takes it); format=json: the patch and more.",
        },
    },
)
def task_patch(
    task_id: str,
    session: SessionDep,
    format: Annotated[PatchFormat, Query(description="diff (default) or json.")] = "diff",
) -> Response:
    task = _task_or_404(session, task_id)
    patch = store.get_patch(session, task_id)
    if patch is None:
        if not TaskState(task.state).is_final:
            raise APIError(409, "task_not_finished", f"task {task_id} is {task.state}; it has no patch yet")
        raise APIError(404, "patch_not_found", f"task {task_id} ended {task.state} without a patch")
    if format == "json":
        return JSONResponse(PatchPublic.model_validate(patch).model_dump(mode="json"))
    return Response(
        content=patch.diff,
        media_type="text/x-diff",
        headers={
            "X-Overnight-Base-Sha": patch.base_sha,
            "X-Overnight-Patch-Complete": "true" if patch.complete else "false",
            "Content-Disposition": f'inline; filename="overnight-{task_id}.diff"',
        },
    )


@router.get("/{task_id}/trajectory", response_model=TrajectoryPublic, responses=ERRORS)
def task_trajectory(task_id: str, session: SessionDep) -> TrajectoryPublic:
    """The full agent transcript: tools, messages as sent to the model (compaction marked), per-step usage."""
    _task_or_404(session, task_id)
    trajectory = store.get_trajectory(session, task_id)
    if trajectory is None:
        raise APIError(404, "trajectory_not_found", f"task {task_id} has no trajectory yet")
    return TrajectoryPublic(task_id=task_id, **trajectory.data)
