"""Removing sandboxes nobody will stop: their worker died (crash, kill -9) or they outlived their lifetime.

Docker containers carry labels saying which worker process started them and when they expire; bubblewrap
sandboxes die with their worker (``--die-with-parent``) and leave only empty cgroups behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

import docker
import docker.errors

from sandbox.cgroups import reap_empty_groups

log = logging.getLogger(__name__)
LABEL = "dev.overnight"
EXPIRY_GRACE_SECONDS = 60


def process_identity(pid: int | None = None) -> str:
    """``pid:start-time``: unlike a bare pid, it is never reused by a later process."""
    pid = pid or os.getpid()
    with open(f"/proc/{pid}/stat", "rb") as stat:
        start = stat.read().rsplit(b")", 1)[1].split()[19].decode()
    return f"{pid}:{start}"


def _alive(identity: str) -> bool:
    pid, _, _start = identity.partition(":")
    try:
        return process_identity(int(pid)) == identity
    except (OSError, ValueError, IndexError):
        return False


def orphaned(labels: dict[str, str], *, now: float | None = None) -> str | None:
    """Why a sandbox with these labels should go, or None if it may stay."""
    now = now or time.time()
    expires = labels.get(f"{LABEL}.expires")
    if expires and float(expires) > 0 and now > float(expires) + EXPIRY_GRACE_SECONDS:
        return "outlived its lifetime"
    worker = labels.get(f"{LABEL}.worker-pid")
    if labels.get(f"{LABEL}.worker") == socket.gethostname() and worker and not _alive(worker):
        return f"its worker process {worker.split(':')[0]} is gone"
    return None


def reap(client: docker.DockerClient | None = None) -> list[str]:
    """Remove orphaned sandbox containers and empty sandbox cgroups; return the containers' names."""
    removed = []
    if client is not None:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}.task"}):
            reason = orphaned(container.labels)
            if reason is None:
                continue
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
            log.warning("removed sandbox %s: %s", container.name, reason)
            removed.append(str(container.name))
    with contextlib.suppress(OSError):
        reap_empty_groups()
    return removed
