"""Tasks: create, list, show, cancel, retry, follow-up, events (JSON or SSE), patch, trajectory."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import store.attempts
import store.bestof
import store.events
import store.images
import store.network
import store.patches
import store.tasks
import store.users
from api.deps import CurrentUser, QueueDep, SessionDep, SettingsDep, reject_unknown_query
from api.errors import APIError
from api.events import event_public, event_stream
from api.images import MULTIPART_TASK, ImageUploadRoute, task_images
from api.queueing import enqueue_or_fail
from api.schemas import (
    ErrorResponse,
    EventList,
    FollowUpCreate,
    PatchPublic,
    TaskCreate,
    TaskList,
    TaskPublic,
    TrajectoryPublic,
)
from overnight.access import AccessDenied, RepoAccess, Requester
from overnight.events import RetryEvent
from overnight.queue import TaskQueue
from overnight.repourl import InvalidRepoError, validate_ref, validate_repo_url
from overnight.settings import Settings
from store.models import Task, TaskState, User

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/tasks", tags=["tasks"], dependencies=[Depends(reject_unknown_query)], route_class=ImageUploadRoute
)
PatchFormat = Literal["diff", "mbox", "json"]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A body that is not JSON."},
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
    404: {"model": ErrorResponse, "description": "No such task (or not yours)."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorResponse, "description": "Not in that state."}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorResponse, "description": "Broker down."}}
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "A repository you may not use (OVERNIGHT_REPO_ACCESS, local paths)."}
}
LIMITED: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "A body over the endpoint's limit (OVERNIGHT_API_MAX_*_BYTES)."},
    429: {"model": ErrorResponse, "description": "Too many unfinished tasks (OVERNIGHT_MAX_QUEUED_TASKS_PER_USER)."},
}


def _task_or_404(session: SessionDep, task_id: str, user: User) -> Task:
    task = store.tasks.get_task(session, task_id, user=user)
    if task is None:
        raise APIError(404, "task_not_found", f"no task {task_id!r}")
    return task


def _check_quota(session: Session, settings: Settings, user_id: int | None, adding: int = 1) -> None:
    """429 when the task's owner already has as many unfinished tasks as allowed, ``adding`` counted (a task's N
    attempts count N; the count holds their row lock until the caller's commit, so two creates cannot both pass)."""
    if user_id is None:
        return
    unfinished = store.users.unfinished_tasks_locked(session, user_id)
    if unfinished + adding > settings.api.max_queued_tasks_per_user:
        session.rollback()
        raise APIError(429, "too_many_tasks", f"you have {unfinished} unfinished tasks (queued, preparing or "
                       f"running), the most one user may have; wait for some to end or cancel some")  # fmt: skip


def _check_access(settings: Settings, user: User, repo: str) -> None:
    """403 before anything is stored or cloned when ``user`` may not name ``repo`` (the worker checks again)."""
    try:
        RepoAccess.from_settings(settings).check(repo, Requester(name=user.name, is_admin=user.is_admin))
    except AccessDenied as exc:
        raise APIError(403, "repository_forbidden", str(exc)) from exc


def _enqueue(session: SessionDep, queue: TaskQueue, task: Task) -> TaskPublic:
    """Send the task, or its attempt tasks (a task with attempts runs none of its own; when one cannot be sent,
    the others fail with it, and the task with them once ranked)."""
    attempts = store.bestof.attempts_of(session, task.id)
    for each in attempts or [task]:
        if not enqueue_or_fail(session, queue, each.id):
            store.bestof.fail_unsent(session, task.id, reason=each.failure_reason)
            raise APIError(503, "broker_unavailable", "the task queue is unreachable; the task was not started")
    return TaskPublic.model_validate(store.tasks.get_task(session, task.id))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    responses={
        **ERRORS,
        **FORBIDDEN,
        **LIMITED,
        **UNAVAILABLE,
        200: {"model": TaskPublic, "description": "Idempotency-Key seen before: the task made then."},
    },
    openapi_extra=MULTIPART_TASK,
)
def create_task(
    body: TaskCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    user: CurrentUser,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=128, description="Repeat a create safely: the same key returns the task made first."),
    ] = None,
) -> TaskPublic:
    try:
        repo = validate_repo_url(body.repo, allow_local=settings.allow_local_repos)
        ref = validate_ref(body.ref) if body.ref else None
    except InvalidRepoError as exc:
        field = "ref" if str(exc).startswith("ref") else "repo"
        raise APIError(422, "invalid_repo", str(exc), [{"field": field, "message": str(exc)}]) from exc
    _check_access(settings, user, repo)
    start_diff = None
    if body.local_changes is not None:
        if not ref:
            raise APIError(422, "invalid_local_changes", "local_changes need a ref: the commit they apply to",
                           [{"field": "ref", "message": "required with local_changes"}])  # fmt: skip
        try:
            start_diff = body.local_changes.diff()
        except ValueError as exc:
            details = [{"field": "local_changes", "message": str(exc)}]
            raise APIError(422, "invalid_local_changes", str(exc), details) from exc
    if idempotency_key and (earlier := store.tasks.task_by_idempotency_key(session, user.id, idempotency_key)):
        response.status_code = status.HTTP_200_OK
        return TaskPublic.model_validate(earlier)
    images = task_images(request, body.image_urls, settings.images)  # uploaded, or fetched now (before any lock)
    _check_quota(session, settings, user.id, body.attempts)
    try:
        task = store.tasks.create_task(
            session, repo=repo, ref=ref, instruction=body.instruction, max_steps=body.max_steps, setup=body.setup,
            user_id=user.id, idempotency_key=idempotency_key, start_diff=start_diff,
        )  # fmt: skip
        if body.attempts > 1:
            store.bestof.add_attempts(session, task, body.attempts)
        store.images.add_images(session, task.id, images)
        session.commit()
    except IntegrityError:  # the same key, created concurrently
        session.rollback()
        earlier = store.tasks.task_by_idempotency_key(session, user.id, idempotency_key or "")
        if earlier is None:
            raise
        response.status_code = status.HTTP_200_OK
        return TaskPublic.model_validate(earlier)
    return _enqueue(session, queue, task)


@router.get("", response_model=TaskList, responses=ERRORS)
def list_tasks(
    session: SessionDep,
    user: CurrentUser,
    state: Annotated[TaskState | None, Query(description="Only tasks in this state.")] = None,
    repo: Annotated[str | None, Query(max_length=2048, description="Only tasks of this repository.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page.")] = None,
    attempts: Annotated[bool, Query(description="Also list the attempt tasks of tasks with attempts.")] = False,
) -> TaskList:
    try:
        tasks, next_cursor = store.tasks.list_tasks(
            session,
            limit=limit,
            state=state.value if state else None,
            repo=repo,
            user=user,
            cursor=cursor,
            include_attempts=attempts,
        )
    except ValueError as exc:
        raise APIError(422, "invalid_cursor", "cursor is not one this API returned") from exc
    usage = store.bestof.usage_with_attempts(session, [task.id for task in tasks if task.attempts > 1])
    public = [_counted(TaskPublic.model_validate(task), usage.get(task.id)) for task in tasks]
    return TaskList(tasks=public, next_cursor=next_cursor)


@router.get("/{task_id}", response_model=TaskPublic, responses=ERRORS)
def show_task(task_id: str, session: SessionDep, user: CurrentUser) -> TaskPublic:
    task = TaskPublic.model_validate(_task_or_404(session, task_id, user))
    usage = store.bestof.usage_with_attempts(session, [task_id]).get(task_id) if task.attempts > 1 else None
    return _counted(task, usage).model_copy(update={"network_blocked": store.network.blocked_summary(session, task_id)})


@router.post("/{task_id}/cancel", response_model=TaskPublic, responses=ERRORS)
def cancel_task(task_id: str, session: SessionDep, user: CurrentUser, queue: QueueDep) -> TaskPublic:
    """Cancel: a queued task ends at once; a preparing or running one within seconds (its running command is
    killed), keeping its partial diff. A task with attempts cancels every attempt, then ends cancelled."""
    if store.bestof.has_attempts(_task_or_404(session, task_id, user)):
        store.bestof.cancel_group(session, task_id)
        if store.bestof.ranking_due(session, task_id):  # its attempts all ended now: end it (else the reconciler)
            _send_quietly(session, queue, task_id)
    else:
        store.tasks.request_cancel(session, task_id)
    session.commit()
    return TaskPublic.model_validate(_task_or_404(session, task_id, user))


@router.post(
    "/{task_id}/retry",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    responses={**ERRORS, **FORBIDDEN, **CONFLICT, **LIMITED, **UNAVAILABLE},
)
def retry_task(
    task_id: str, session: SessionDep, settings: SettingsDep, user: CurrentUser, queue: QueueDep
) -> TaskPublic:
    """File a new attempt of an ended task: the same repository, ref, instruction and set-up."""
    original = _task_or_404(session, task_id, user)
    if not TaskState(original.state).is_final:
        raise APIError(409, "task_not_finished", f"task {task_id} is {original.state}; only an ended task is retried")
    if original.attempt_of is not None:
        raise APIError(409, "task_is_an_attempt", f"task {task_id} is attempt {original.attempt_index} of task "
                       f"{original.attempt_of}; retry that task")  # fmt: skip
    _check_access(settings, user, original.repo)
    _check_quota(session, settings, original.user_id, original.attempts)
    task = store.tasks.create_task(
        session, repo=original.repo, ref=original.ref, instruction=original.instruction,
        max_steps=original.max_steps, setup=original.setup, user_id=original.user_id,
        parent_id=original.parent_id, kind=original.kind, start_diff=original.start_diff,
    )  # fmt: skip
    if original.attempts > 1:
        store.bestof.add_attempts(session, task, original.attempts)
    store.events.append_event(session, task.id, RetryEvent(retry_of=original.id))
    store.images.copy_images(session, original.id, task.id)  # the same task again: its images too
    session.commit()
    return _enqueue(session, queue, task)


@router.post(
    "/{task_id}/follow-up",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    responses={**ERRORS, **FORBIDDEN, **CONFLICT, **LIMITED, **UNAVAILABLE},
)
def follow_up(
    task_id: str, body: FollowUpCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser, queue: QueueDep
) -> TaskPublic:
    """A new task that starts from this task's patch applied to its base ("now also fix X"). Its own patch
    is cumulative: it applies to the same base commit."""
    parent = _task_or_404(session, task_id, user)
    patch = store.patches.get_patch(session, task_id)
    if not TaskState(parent.state).is_final or patch is None or parent.base_sha is None:
        raise APIError(409, "no_patch_to_follow", f"task {task_id} has no stored patch to build on")
    _check_access(settings, user, parent.repo)
    _check_quota(session, settings, parent.user_id)
    task = store.tasks.create_task(
        session, repo=parent.repo, ref=parent.base_sha, instruction=body.instruction, max_steps=body.max_steps,
        setup=parent.setup, user_id=parent.user_id, parent_id=parent.id, kind="follow-up",
    )  # fmt: skip
    session.commit()
    return _enqueue(session, queue, task)


@router.get(
    "/{task_id}/events",
    response_model=EventList,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE on request."}},
)
def task_events(
    task_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    after: Annotated[int, Query(ge=0, description="Only events with a larger sequence number.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    last_event_id: Annotated[
        str | None, Header(pattern=r"^[0-9]{1,18}$", description="SSE resume point (sent by EventSource).")
    ] = None,
) -> Any:
    """The task's events in order. With ``Accept: text/event-stream``: Server-Sent Events (id = sequence
    number, event = type), resumable with ``Last-Event-ID``, ending after the final state; a keep-alive comment
    goes out every OVERNIGHT_SSE_PING_SECONDS."""
    _task_or_404(session, task_id, user)
    if "text/event-stream" in request.headers.get("accept", ""):
        resume = max(after, int(last_event_id or 0))
        ping_seconds = settings.api.sse_ping_seconds
        return event_stream(request.app.state.sessions, task_id, after=resume, ping_seconds=ping_seconds)
    events = store.events.list_events(session, task_id, after=after, limit=limit)
    return EventList(events=[event_public(row) for row in events])


@router.get(
    "/{task_id}/patch",
    responses={
        **ERRORS,
        **CONFLICT,
        200: {
            "content": {
                "text/x-diff": {},
                "application/mbox": {},
                "application/json": {"schema": PatchPublic.model_json_schema(mode="serialization")},
            },
            "description": "diff: `git apply` takes it; mbox: `git am` takes it; json: the patch and its metadata.",
        },
    },
)
def task_patch(
    task_id: str,
    session: SessionDep,
    user: CurrentUser,
    format: Annotated[PatchFormat, Query(description="diff (default), mbox or json.")] = "diff",
    attempt: Annotated[int | None, Query(ge=1, le=8, description="K: the patch of attempt K instead.")] = None,
) -> Response:
    task = _task_or_404(session, task_id, user)
    if attempt is not None:
        task = store.bestof.attempt_task(session, task_id, attempt) or _no_attempt(task, attempt)
        task_id = task.id
    patch = store.patches.get_patch(session, task_id)
    if patch is None:
        if not TaskState(task.state).is_final:
            raise APIError(409, "task_not_finished", f"task {task_id} is {task.state}; it has no patch yet")
        raise APIError(404, "patch_not_found", f"task {task_id} ended {task.state} without a patch")
    if format == "json":
        return JSONResponse(PatchPublic.model_validate(patch).model_dump(mode="json"))
    headers = {
        "X-Overnight-Base-Sha": patch.base_sha,
        "X-Overnight-Patch-Complete": "true" if patch.complete else "false",
        "Content-Disposition": f'inline; filename="overnight-{task_id}.{"mbox" if format == "mbox" else "diff"}"',
    }
    if format == "mbox":
        return Response(content=patch.mbox, media_type="application/mbox", headers=headers)
    return Response(content=patch.diff, media_type="text/x-diff", headers=headers)


def _counted(task: TaskPublic, usage: dict[str, float] | None) -> TaskPublic:
    """A task with attempts shows their steps and tokens (``store.bestof.usage_with_attempts``)."""
    if not usage:
        return task
    return task.model_copy(
        update={name: int(value) for name, value in usage.items() if name in TaskPublic.model_fields}
    )


def _send_quietly(session: Session, queue: TaskQueue, task_id: str) -> None:
    try:
        queue.enqueue(task_id)
    except Exception:  # the reconciler sends it
        log.warning("could not send task %s to be ranked; the reconciler will", task_id)
        return
    store.attempts.mark_enqueued(session, task_id)


def _no_attempt(task: Task, attempt: int) -> Task:
    raise APIError(404, "attempt_not_found", f"task {task.id} has no attempt {attempt} (it runs {task.attempts})")


@router.get("/{task_id}/trajectory", response_model=TrajectoryPublic, responses=ERRORS)
def task_trajectory(task_id: str, session: SessionDep, user: CurrentUser) -> TrajectoryPublic:
    """The full agent transcript: tools, messages as sent to the model (compaction marked), per-step usage."""
    _task_or_404(session, task_id, user)
    trajectory = store.patches.get_trajectory(session, task_id)
    if trajectory is None:
        raise APIError(404, "trajectory_not_found", f"task {task_id} has no trajectory yet")
    return TrajectoryPublic(task_id=task_id, **trajectory.data)
