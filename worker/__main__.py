"""``python -m worker``: one Celery worker consuming the task queue, configured from OVERNIGHT_* settings."""

from __future__ import annotations

import logging
import os
import sys

from overnight.broker import resolve_broker_url
from overnight.github.config import ConfigError, refuse_unworkable
from overnight.queue import TaskQueue, create_celery
from overnight.settings import Settings
from sandbox.base import SandboxUnavailableError
from worker.celery_app import register_tasks
from worker.reconciler import start_reconciler
from worker.sandboxes import check_disk_enforcement, egress_proxy, start_reaper


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    try:
        refuse_unworkable(settings, "the worker")
    except ConfigError as exc:
        sys.exit(str(exc))
    try:
        check_disk_enforcement(settings)
    except SandboxUnavailableError as exc:
        sys.exit(str(exc))
    broker_url, description = resolve_broker_url(settings)
    logging.getLogger("overnight.worker").info(description)
    # Sandboxes a crashed worker left behind, their folders and its workspaces on this host: now, then periodically
    # (and its egress proxy's folder: squid itself died with it).
    environments = [settings.environments_dir / backend for backend in ("docker", "bwrap")]
    start_reaper(
        settings.worker.reap_seconds,
        (settings.data_dir / "control", settings.environments_dir, *environments, settings.workspaces_dir,
         egress_proxy(settings).config.state_root),
    )  # fmt: skip
    app = create_celery(broker_url, queue=settings.queue, task_time_limit=settings.worker.task_time_limit)
    start_reconciler(settings, TaskQueue(broker_url, queue=settings.queue))
    register_tasks(app)
    concurrency = (argv or sys.argv[1:] or ["1"])[0]
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--queues={settings.queue}",
            f"--hostname=overnight-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
