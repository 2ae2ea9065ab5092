"""Messages to a task while it runs: send one (steer or queue), list them with their delivery state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status

import store.messages
import store.tasks
from api.deps import CurrentUser, SessionDep, reject_unknown_query
from api.errors import APIError
from api.schemas import ErrorResponse, MessageCreate, MessageList, MessagePublic
from store.messages import TaskEnded

router = APIRouter(prefix="/v1/tasks", tags=["messages"], dependencies=[Depends(reject_unknown_query)])
MAX_PENDING_MESSAGES = 20
"""Messages one task may hold undelivered; more get 429 until some are delivered."""
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A body that is not JSON."},
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
    404: {"model": ErrorResponse, "description": "No such task (or not yours)."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
}
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The task has ended: messages reach only a task not yet ended."},
    413: {"model": ErrorResponse, "description": "A body over OVERNIGHT_API_MAX_BODY_BYTES."},
    429: {"model": ErrorResponse, "description": f"{MAX_PENDING_MESSAGES} messages already wait for this task."},
}


def _check_visible(session: SessionDep, task_id: str, user: CurrentUser) -> None:
    if store.tasks.get_task(session, task_id, user=user) is None:
        raise APIError(404, "task_not_found", f"no task {task_id!r}")


@router.post(
    "/{task_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessagePublic,
    responses={**ERRORS, **REFUSED},
)
def send_message(task_id: str, body: MessageCreate, session: SessionDep, user: CurrentUser) -> MessagePublic:
    """Talk to a task that has not ended. A steer is given to the model at its next tool boundary, after the
    tool results of the step under way; a queued message when the model would finish, and the run goes on
    with it in the same sandbox and history (the budgets still apply). A message the task ends without
    delivering is marked dropped, with the reason; the list below shows which."""
    _check_visible(session, task_id, user)
    if (task := store.tasks.get_task(session, task_id)) is not None and task.attempts > 1:
        raise APIError(409, "task_has_attempts", f"task {task_id} runs as {task.attempts} attempts, each with its own "
                       f"agent: send it to one of them (GET /v1/tasks/{task_id}/attempts lists them)")  # fmt: skip
    try:
        message = store.messages.add_message(
            session, task_id, mode=body.mode, text=body.text, author=user.name, user_id=user.id
        )
    except TaskEnded as exc:
        session.rollback()
        raise APIError(409, "task_ended", f"task {task_id} has ended ({exc.state}); messages reach only a "
                       "queued, preparing or running task (a follow-up starts from its patch)") from exc  # fmt: skip
    if store.messages.pending_count(session, task_id) > MAX_PENDING_MESSAGES:
        session.rollback()
        raise APIError(429, "too_many_messages", f"{MAX_PENDING_MESSAGES} messages already wait for task "
                       f"{task_id}; send more once some were delivered")  # fmt: skip
    session.commit()
    return MessagePublic.model_validate(message)


@router.get("/{task_id}/messages", response_model=MessageList, responses=ERRORS)
def list_messages(task_id: str, session: SessionDep, user: CurrentUser) -> MessageList:
    """The messages sent to the task, oldest first, each pending, delivered (at a step) or dropped (why)."""
    _check_visible(session, task_id, user)
    messages = store.messages.list_messages(session, task_id)
    return MessageList(messages=[MessagePublic.model_validate(message) for message in messages])
