"""The task queue: the Celery application (built from settings, never at import time) and the producer that
hands task ids to the workers. The API, the reconciler and the admin commands send through it; the worker
(``worker.celery_app``) registers the task it consumes on the same application."""

from __future__ import annotations

from amqp.exceptions import ChannelError
from celery import Celery

RUN_TASK = "overnight.run_task"


def create_celery(broker_url: str, *, queue: str, task_time_limit: float = 7200) -> Celery:
    app = Celery("overnight", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        # The task body is idempotent (the database decides), so a message is acknowledged only once the task
        # ran, and given back when its worker dies; the broker must not redeliver it while it still runs.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Redis redelivers an unacknowledged message after this; it must outlast the longest task.
        broker_transport_options=(
            {"visibility_timeout": int(task_time_limit + 3600)} if broker_url.startswith(("redis", "rediss")) else {}
        ),
        task_soft_time_limit=task_time_limit,
        task_time_limit=task_time_limit + 120,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_routes={"overnight.*": {"queue": queue}},
    )
    return app


class TaskQueue:
    """Hands task ids to the workers through the broker (the API's and the reconciler's producer)."""

    def __init__(self, broker_url: str, *, queue: str) -> None:
        self.queue = queue
        self._celery: Celery = create_celery(broker_url, queue=queue)

    def ping(self) -> None:
        """Raises when the broker cannot be reached."""
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    def depth(self) -> int:
        """Messages waiting in the queue (not those a worker holds)."""
        with self._celery.connection_for_write() as connection, connection.channel() as channel:
            try:
                return int(channel.queue_declare(queue=self.queue, passive=True).message_count)
            except ChannelError:  # no such queue (yet, or any more): nothing waits
                return 0

    def enqueue(self, task_id: str, *, countdown: float | None = None) -> None:
        """Send ``task_id`` to the workers; raises on a broker that cannot be reached."""
        self._celery.send_task(
            RUN_TASK,
            args=[task_id],
            queue=self.queue,
            countdown=countdown,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
