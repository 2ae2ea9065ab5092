"""The pages: the task list, the new-task form and a task's page (and the fragments that refresh them).

They read with the same queries as the API and see what the API lets the same user see: their own tasks, an
admin all; any other task is "not found", by list and by address alike. Every change (create, cancel, retry,
follow-up) goes through the API itself, from the pages' scripts, with the session cookie and its CSRF token.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

import store.events
import store.network
import store.tasks
from api.events import event_public
from store.models import Task
from web import present, queries
from web.attempts import attempts_context
from web.pages import WebSessionDep, WebStateDep, render
from web.session import WebSession

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
FIRST_EVENTS = 2000
"""Events put in the task page itself; the event stream sends the rest."""


def list_url(**params: str) -> str:
    kept = {name: value for name, value in params.items() if value}
    return "/" + (f"?{urlencode(kept)}" if kept else "")


@router.get("/", response_class=HTMLResponse)
def task_list(
    request: Request,
    web: WebSessionDep,
    app: WebStateDep,
    state: str = "",
    repo: str = "",
    cursor: str = "",
    partial: str = "",
) -> HTMLResponse:
    message = None
    if state and state not in present.STATES:
        message, state = f"There is no state {state!r}; showing every state.", ""
    with app.sessions() as session:
        try:
            rows, next_cursor = queries.task_rows(session, web.user, state=state or None, repo=repo or None,
                                                  cursor=cursor or None, limit=PAGE_SIZE)  # fmt: skip
        except ValueError:
            message, cursor = "That page link is not valid (any more); showing the newest tasks.", ""
            rows, next_cursor = queries.task_rows(session, web.user, state=state or None, repo=repo or None,
                                                  limit=PAGE_SIZE)  # fmt: skip
        context: dict[str, Any] = {"rows": rows, "seconds": present.task_seconds}
        if partial == "rows":
            return render(request, "_rows.html", context, web=web)
        context |= {
            "states": present.STATES, "state": state, "repo": repo, "cursor": cursor, "message": message,
            "repositories": queries.recent_repositories(session, web.user),
            "first_url": list_url(state=state, repo=repo),
            "next_url": list_url(state=state, repo=repo, cursor=next_cursor) if next_cursor else None,
            "refresh_url": list_url(state=state, repo=repo, cursor=cursor, partial="rows"),
        }  # fmt: skip
        return render(request, "tasks.html", context, web=web)


@router.get("/tasks/new", response_class=HTMLResponse)
def new_task(request: Request, web: WebSessionDep, app: WebStateDep, repo: str = "", ref: str = "") -> HTMLResponse:
    with app.sessions() as session:
        repositories = queries.recent_repositories(session, web.user)
    context = {"repo": repo, "ref": ref, "repositories": repositories, "idempotency_key": secrets.token_urlsafe(16)}
    return render(request, "new_task.html", context, web=web)


def summary_context(session: Session, task: Task, web: WebSession, app: WebStateDep) -> dict[str, Any]:
    return {
        "task": task,
        "final": present.is_final(task.state),
        "patch": queries.patch_figures(session, [task.id]).get(task.id),
        "github": queries.github_figures(session, [task.id]).get(task.id),
        "retry_of": queries.retry_of(session, task.id),
        "blocked": store.network.blocked_summary(session, task.id),
        "owner": queries.owner_name(session, task) if web.user.is_admin else None,
        "seconds": present.task_seconds(task),
        "cost": app.config.cost(prompt=task.prompt_tokens, cached=task.cached_tokens,
                                completion=task.completion_tokens),
    }  # fmt: skip


def not_found(request: Request, web: WebSession, task_id: str) -> HTMLResponse:
    return render(request, "not_found.html", {"task_id": task_id}, web=web, status_code=404)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: str, web: WebSessionDep, app: WebStateDep) -> HTMLResponse:
    with app.sessions() as session:
        task = store.tasks.get_task(session, task_id, user=web.user)
        if task is None:
            return not_found(request, web, task_id)
        # The typed records the API itself sends (an unreadable row: as stored, with its ``error``).
        rows = store.events.list_events(session, task_id, limit=FIRST_EVENTS)
        events = [event_public(row).model_dump(mode="json") for row in rows]
        context = {**summary_context(session, task, web, app), **attempts_context(session, task), "events": events}
        return render(request, "task.html", context, web=web)


@router.get("/tasks/{task_id}/summary", response_class=HTMLResponse)
def task_summary(request: Request, task_id: str, web: WebSessionDep, app: WebStateDep) -> HTMLResponse:
    """The task page's header, re-read while the task runs (its state in a header for the script)."""
    with app.sessions() as session:
        task = store.tasks.get_task(session, task_id, user=web.user)
        if task is None:
            return not_found(request, web, task_id)
        context = summary_context(session, task, web, app)
        return render(request, "_summary.html", context, web=web, headers={"X-Overnight-State": task.state})


@router.get("/tasks/{task_id}/attempts", response_class=HTMLResponse)
def task_attempts(
    request: Request, task_id: str, web: WebSessionDep, app: WebStateDep, selected: int | None = None
) -> HTMLResponse:
    """A best-of-N task's attempt tabs, re-read while they run (``selected``: the tab the page has open); the
    header says when nothing will change any more (every attempt ended and the ranking is written)."""
    with app.sessions() as session:
        task = store.tasks.get_task(session, task_id, user=web.user)
        if task is None:
            return not_found(request, web, task_id)
        context = attempts_context(session, task, selected)
        settled = present.is_final(task.state) and all(view.final for view in context["attempts"])
        headers = {"X-Overnight-Settled": "true" if settled else "false"}
        return render(request, "_attempts.html", context, web=web, headers=headers)
