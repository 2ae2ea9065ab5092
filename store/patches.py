"""What a task leaves behind: its patch and the agent's trajectory."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from store.models import Patch, Trajectory, utcnow


def store_patch(
    session: Session,
    task_id: str,
    *,
    base_sha: str,
    diff: str,
    title: str,
    body: str,
    files_changed: int,
    complete: bool = True,
    excluded: list[str] | None = None,
) -> Patch:
    patch = session.get(Patch, task_id)
    if patch is None:
        patch = Patch(task_id=task_id)
        session.add(patch)
    patch.base_sha = base_sha
    patch.diff = diff
    patch.title = title
    patch.body = body
    patch.files_changed = files_changed
    patch.complete = complete
    patch.excluded = excluded or []
    patch.created_at = utcnow()
    session.flush()
    return patch


def get_patch(session: Session, task_id: str) -> Patch | None:
    return session.get(Patch, task_id)


def store_trajectory(session: Session, task_id: str, data: dict[str, Any]) -> Trajectory:
    trajectory = session.get(Trajectory, task_id)
    if trajectory is None:
        trajectory = Trajectory(task_id=task_id)
        session.add(trajectory)
    trajectory.data = data
    trajectory.updated_at = utcnow()
    session.flush()
    return trajectory


def get_trajectory(session: Session, task_id: str) -> Trajectory | None:
    return session.get(Trajectory, task_id)
