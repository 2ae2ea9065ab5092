"""What the pages read beyond the API's own queries: a page of the task list with each row's patch figures and
GitHub link (three queries a page, whatever its length), and the repositories a user's tasks name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import store.tasks
from store.models import GitHubLink, Patch, Task, TaskEvent, User

INSERTIONS = re.compile(r"(\d+) insertions?\(\+\)")
DELETIONS = re.compile(r"(\d+) deletions?\(-\)")


@dataclass(frozen=True, kw_only=True)
class PatchFigures:
    files: int
    added: int | None
    """Lines added, from git's diffstat (None when the patch has no diffstat)."""
    removed: int | None
    complete: bool

    @property
    def empty(self) -> bool:
        return self.files == 0


@dataclass(frozen=True, kw_only=True)
class GitHubFigures:
    repo: str
    number: int
    pr_url: str | None
    pr_number: int | None
    publish_state: str
    publish_error: str | None


@dataclass(frozen=True, kw_only=True)
class TaskRow:
    task: Task
    patch: PatchFigures | None
    github: GitHubFigures | None


def diffstat_lines(diffstat: str) -> tuple[int | None, int | None]:
    """(added, removed) from the summary line of ``git diff --stat``; (None, None) without one."""
    if "changed" not in diffstat:
        return None, None
    added, removed = INSERTIONS.search(diffstat), DELETIONS.search(diffstat)
    return int(added.group(1)) if added else 0, int(removed.group(1)) if removed else 0


def patch_figures(session: Session, task_ids: Sequence[str]) -> dict[str, PatchFigures]:
    if not task_ids:
        return {}
    rows = session.execute(
        select(Patch.task_id, Patch.files_changed, Patch.diffstat, Patch.complete).where(Patch.task_id.in_(task_ids))
    ).all()
    figures = {}
    for task_id, files, diffstat, complete in rows:
        added, removed = diffstat_lines(diffstat or "")
        figures[task_id] = PatchFigures(files=files, added=added, removed=removed, complete=complete)
    return figures


def github_figures(session: Session, task_ids: Sequence[str]) -> dict[str, GitHubFigures]:
    if not task_ids:
        return {}
    links = session.scalars(select(GitHubLink).where(GitHubLink.task_id.in_(task_ids))).all()
    return {
        link.task_id: GitHubFigures(repo=link.repo, number=link.number, pr_url=link.pr_url, pr_number=link.pr_number,
                                    publish_state=link.publish_state, publish_error=link.publish_error)
        for link in links
    }  # fmt: skip


def task_rows(
    session: Session,
    user: User,
    *,
    state: str | None = None,
    repo: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[TaskRow], str | None]:
    """A page of the tasks ``user`` may see (their own; an admin all), newest first, as the API lists them.
    Raises ValueError on a cursor the app did not make."""
    tasks, next_cursor = store.tasks.list_tasks(session, limit=limit, state=state, repo=repo, user=user,
                                                cursor=cursor)  # fmt: skip
    ids = [task.id for task in tasks]
    patches, links = patch_figures(session, ids), github_figures(session, ids)
    rows = [TaskRow(task=task, patch=patches.get(task.id), github=links.get(task.id)) for task in tasks]
    return rows, next_cursor


def recent_repositories(session: Session, user: User, limit: int = 50) -> list[str]:
    """The repositories of the user's tasks (all tasks for an admin), most recently used first."""
    newest = func.max(Task.created_at)
    query = select(Task.repo).group_by(Task.repo).order_by(newest.desc()).limit(limit)
    if not user.is_admin:
        query = query.where(Task.user_id == user.id)
    return list(session.scalars(query).all())


def owner_name(session: Session, task: Task) -> str | None:
    if task.user_id is None:
        return None
    return session.scalar(select(User.name).where(User.id == task.user_id))


def retry_of(session: Session, task_id: str) -> str | None:
    """The ended task this one retries, from its ``retry`` event."""
    data = session.scalar(
        select(TaskEvent.data).where(TaskEvent.task_id == task_id, TaskEvent.type == "retry").limit(1)
    )
    return str(data["retry_of"]) if isinstance(data, dict) and data.get("retry_of") else None
