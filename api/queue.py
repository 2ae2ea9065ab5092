"""Handing task ids to the workers through the Celery broker."""

from __future__ import annotations

from celery import Celery

from worker.celery_app import RUN_TASK, create_celery


class TaskQueue:
    def __init__(self, broker_url: str, *, queue: str) -> None:
        self.queue = queue
        self._celery: Celery = create_celery(broker_url, queue=queue)

    def enqueue(self, task_id: str) -> None:
        """Send ``task_id`` to the workers; raises on a broker that cannot be reached."""
        self._celery.send_task(
            RUN_TASK,
            args=[task_id],
            queue=self.queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
