"""Removing sandboxes nobody will stop: their worker died (crash, kill -9) or they outlived their lifetime.

Docker containers carry labels saying which worker process started them and when they expire; bubblewrap
sandboxes die with their worker (``--die-with-parent``) and leave only empty cgroups behind. The folders a
sandbox uses on the host (its exec server's control folder, a bubblewrap set-up's staging environment) and
each task's workspace have a sidecar ``NAME.owner`` naming the worker process; once that process is gone,
they go too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import docker
import docker.errors

from sandbox.cgroups import reap_empty_groups
from sandbox.disk import remove_folder

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


OWNER_SUFFIX = ".owner"


def owned_tempdir(prefix: str, parent: Path | None) -> Path:
    """A new folder like ``mkdtemp``, with a sidecar file naming this process as its owner."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    mark_owned(path)
    return path


def mark_owned(path: Path) -> None:
    """Name this process as the owner of ``path`` (a folder it is about to make, such as a task's workspace):
    if the process dies, the reaper removes the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then renamed: a reaper that found the sidecar empty, half-way through its writing, took
    # its owner for dead and removed a live task's workspace.
    partial = path.with_name(f".{path.name}{OWNER_SUFFIX}.{os.getpid()}.partial")
    partial.write_text(process_identity())
    os.replace(partial, path.with_name(path.name + OWNER_SUFFIX))


def disown(path: Path) -> None:
    """The folder stays (a snapshot kept it); only its owner sidecar goes."""
    path.with_name(path.name + OWNER_SUFFIX).unlink(missing_ok=True)


def remove_owned(path: Path) -> None:
    """The folder and all in it (its disks unmounted and deleted first), then its owner sidecar."""
    remove_folder(path)
    disown(path)


def reap_folders(roots: Iterable[Path]) -> list[Path]:
    """Remove the folders under ``roots`` whose owner process is gone; return them."""
    removed = []
    for root in roots:
        for owner in root.glob(f"*{OWNER_SUFFIX}") if root.is_dir() else ():
            with contextlib.suppress(OSError):
                identity = owner.read_text().strip()
                if not identity or _alive(identity):  # empty: not one this reaper can judge
                    continue
                folder = owner.with_name(owner.name.removesuffix(OWNER_SUFFIX))
                remove_owned(folder)
                log.warning("removed %s: its worker process is gone", folder)
                removed.append(folder)
    return removed


def reap(client: docker.DockerClient | None = None, folders: Iterable[Path] = ()) -> list[str]:
    """Remove orphaned sandbox containers, empty sandbox cgroups and the host folders of dead workers'
    sandboxes (under ``folders``); return what went."""
    removed: list[str] = [str(path) for path in reap_folders(folders)]
    if client is not None:
        # ignore_removed: a sandbox its worker removes between the listing and the look at it is no failure
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}.task"}, ignore_removed=True):
            reason = orphaned(container.labels)
            if reason is None:
                continue
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
            log.warning("removed sandbox %s: %s", container.name, reason)
            removed.append(str(container.name))
    with contextlib.suppress(OSError):
        reap_empty_groups(_alive)
    return removed
