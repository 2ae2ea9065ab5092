"""The Celery application: built from settings, never at import time."""

from __future__ import annotations

from celery import Celery

RUN_TASK = "overnight.run_task"


def create_celery(broker_url: str, *, queue: str) -> Celery:
    app = Celery("overnight", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_routes={"overnight.*": {"queue": queue}},
    )
    return app


def register_tasks(app: Celery) -> None:
    from worker.tasks import run_task_entry

    app.task(name=RUN_TASK, ignore_result=True)(run_task_entry)
