"""The worker's side of the task queue: the task it consumes, registered on the application
``overnight.queue`` builds (the producer lives there, for the API and the worker alike)."""

from __future__ import annotations

from celery import Celery

from overnight.queue import RUN_TASK


def register_tasks(app: Celery) -> None:
    from worker.tasks import run_task_entry

    app.task(name=RUN_TASK, ignore_result=True, bind=True)(run_task_entry)
