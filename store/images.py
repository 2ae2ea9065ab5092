"""The queries about a task's images: storing those the API accepted, noting the addresses of a GitHub issue's
images for the worker to fetch, recording each fetch's outcome, and reading them back in order."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from overnight.images import TaskImageData
from store.models import TaskImage


def add_images(session: Session, task_id: str, images: Sequence[TaskImageData]) -> list[TaskImage]:
    """Images that arrived with the task (uploads, fetched URLs), after those it already has."""
    start = _next_position(session, task_id)
    rows = [
        TaskImage(
            task_id=task_id,
            position=start + index,
            source=image.source,
            url=image.url,
            media_type=image.media_type,
            sha256=image.sha256,
            size=len(image.data),
            data=image.data,
        )
        for index, image in enumerate(images)
    ]
    session.add_all(rows)
    session.flush()
    return rows


def add_pending(session: Session, task_id: str, urls: Sequence[str], *, source: str = "github") -> list[TaskImage]:
    """Addresses of images to fetch later (a GitHub issue's: the worker has the token they need)."""
    start = _next_position(session, task_id)
    rows = [TaskImage(task_id=task_id, position=start + index, source=source, url=url[:2048], size=0)
            for index, url in enumerate(urls)]  # fmt: skip
    session.add_all(rows)
    session.flush()
    return rows


def list_images(session: Session, task_id: str) -> Sequence[TaskImage]:
    """The task's images in the order the model sees them, fetched or not."""
    return session.scalars(select(TaskImage).where(TaskImage.task_id == task_id).order_by(TaskImage.position)).all()


def pending(session: Session, task_id: str) -> Sequence[TaskImage]:
    """Images whose fetch has not been tried yet (neither data nor an error)."""
    query = select(TaskImage).where(
        TaskImage.task_id == task_id, TaskImage.data.is_(None), TaskImage.error.is_(None), TaskImage.url.is_not(None)
    )
    return session.scalars(query.order_by(TaskImage.position)).all()


def record_fetched(session: Session, image_id: int, image: TaskImageData) -> None:
    row = session.get(TaskImage, image_id)
    if row is not None:
        row.media_type, row.sha256, row.size, row.data = image.media_type, image.sha256, len(image.data), image.data


def record_failed(session: Session, image_id: int, error: str) -> None:
    row = session.get(TaskImage, image_id)
    if row is not None:
        row.error = error[:1000]


def _next_position(session: Session, task_id: str) -> int:
    last = session.scalar(select(func.max(TaskImage.position)).where(TaskImage.task_id == task_id))
    return 0 if last is None else last + 1


def copy_images(session: Session, from_task: str, to_task: str) -> int:
    """A retry's images: those of the task it repeats that were had (a failed fetch is not tried again)."""
    rows = [row for row in list_images(session, from_task) if row.data is not None]
    for position, row in enumerate(rows):
        session.add(TaskImage(task_id=to_task, position=position, source=row.source, url=row.url,
                              media_type=row.media_type, sha256=row.sha256, size=row.size, data=row.data))  # fmt: skip
    session.flush()
    return len(rows)
