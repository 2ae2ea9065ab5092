"""The worker's side of a task's images: fetching those a GitHub issue showed (the webhook noted their addresses;
the installation token they need is only here), and handing the task's images to the agent with one ``images``
event that names each by its SHA-256.

A fetch that fails is recorded with its reason and reported in that event; the task goes on without the image.
Follow-ups and retries carry no images of their own: the model of a follow-up is not sent its parent's again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

import store.images
import store.tasks
from overnight.events import EventSink, ImageFailure, ImageNote, ImagesEvent
from overnight.github.images import image_url_allowed, token_wanted
from overnight.imagefetch import FetchPolicy, fetch_image
from overnight.images import ImageRefused, ImageSettings, TaskImageData
from worker.attempt import Attempt

log = logging.getLogger(__name__)


def fetch_issue_images(
    sessions: sessionmaker[Session],
    task_id: str,
    *,
    token: Callable[[], str],
    api_url: str,
    limits: ImageSettings,
    repo: str | None = None,
) -> list[str]:
    """Fetch the task's images not tried yet from GitHub's hosts, with the token (only to the hosts that need
    it; raw files only of ``repo``); record each outcome. Returns why each that failed did (empty: all were
    fetched, or there were none)."""
    with sessions() as session:
        waiting = [(row.id, row.url or "") for row in store.images.pending(session, task_id)]
    if not waiting:
        return []
    try:
        secret = token()
    except Exception as exc:  # the task goes on without its images; why is recorded with each
        outcomes: list[tuple[int, TaskImageData | str]] = [
            (image_id, f"no GitHub token: {exc}") for image_id, _ in waiting
        ]
    else:
        wants = token_wanted(api_url)
        policy = FetchPolicy(
            max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, timeout=limits.fetch_timeout,
            allowed_networks=limits.fetch_allowed_networks,
            url_allowed=image_url_allowed(api_url, repo),
            headers=lambda url: {"Authorization": f"token {secret}"} if wants(url) else {},
        )  # fmt: skip
        outcomes = [(image_id, _fetch(url, policy, number)) for number, (image_id, url) in enumerate(waiting, 1)]
    with sessions.begin() as session:
        for image_id, outcome in outcomes:
            if isinstance(outcome, str):
                log.warning("task %s: an image of its GitHub issue could not be fetched: %s", task_id, outcome)
                store.images.record_failed(session, image_id, outcome)
            else:
                store.images.record_fetched(session, image_id, outcome)
    return [outcome for _, outcome in outcomes if isinstance(outcome, str)]


def _fetch(url: str, policy: FetchPolicy, number: int) -> TaskImageData | str:
    try:
        return fetch_image(url, policy, what=f"image {number} of the issue", source="github")
    except ImageRefused as exc:
        return str(exc)


def agent_images(attempt: Attempt, task_id: str, emit: EventSink) -> list[TaskImageData]:
    """The task's images for the model, in order; an ``images`` event when it has any (or failed to get any).
    An attempt task is given the images of the task it is an attempt of. Follow-ups are not given their parent's
    images (a retry was given copies of its original's)."""

    def read(session: Session) -> tuple[list[TaskImageData], list[ImageFailure]]:
        images, failed = [], []
        row_of_task = store.tasks.get_task(session, task_id)
        owner = (row_of_task.attempt_of if row_of_task is not None else None) or task_id  # attempts: the task's
        for row in store.images.list_images(session, owner):
            if row.data is not None and row.media_type is not None:
                images.append(TaskImageData(media_type=row.media_type, data=row.data, source=row.source,  # type: ignore[arg-type]
                                            url=row.url))  # fmt: skip
            else:  # a failed fetch, or one never tried (the task started without its GitHub hooks)
                failed.append(ImageFailure(url=row.url or "", reason=row.error or "not fetched"))
        return images, failed

    images, failed = attempt.read(read)
    if images or failed:
        notes = [ImageNote(sha256=image.sha256, media_type=image.media_type, size=len(image.data), source=image.source)
                 for image in images]  # fmt: skip
        emit(ImagesEvent(images=notes, failed=failed))
    return images
