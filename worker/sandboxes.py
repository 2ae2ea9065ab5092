"""From settings to a sandbox backend: Docker when an engine answers (or when asked), else bubblewrap."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import docker
import docker.errors

from overnight.settings import Settings
from sandbox.base import SandboxBackend, SandboxUnavailableError
from sandbox.bwrap import BwrapConfig
from sandbox.disk import probe_kernel_disks
from sandbox.docker import DockerConfig
from sandbox.egress import EgressPolicy
from sandbox.reaper import reap

log = logging.getLogger(__name__)


def docker_answers() -> bool:
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except docker.errors.DockerException:
        return False
    return True


def sandbox_config(settings: Settings, *, docker_available: bool | None = None) -> DockerConfig | BwrapConfig:
    choice = settings.sandbox_backend
    if choice == "auto":
        available = docker_answers() if docker_available is None else docker_available
        choice = "docker" if available else "bwrap"
    common = {
        "memory": settings.sandbox_memory,
        "pids": settings.sandbox_pids,
        "cpus": settings.sandbox_cpus,
        "command_timeout": settings.sandbox_command_timeout,
        "disk_limit": settings.sandbox_disk_limit,
        "disk_enforcement": settings.sandbox_disk_enforcement,
        "tmp_size": settings.sandbox_tmp_size,
        "home_size": settings.sandbox_home_size,
        "control_root": settings.data_dir / "control",
        "setup_egress": setup_egress(settings),
    }
    if choice == "docker":
        return DockerConfig(
            image=settings.sandbox_image,
            environments=settings.environments_dir / "docker",
            **common,  # type: ignore[arg-type]
        )
    return BwrapConfig(
        rootfs=settings.sandbox_rootfs_for(settings.sandbox_image),
        environments=settings.environments_dir / "bwrap",
        **common,  # type: ignore[arg-type]
    )


def setup_egress(settings: Settings) -> EgressPolicy:
    return EgressPolicy(
        allowed_networks=tuple(settings.sandbox_setup_allowed_networks),
        proxy=settings.sandbox_proxy,
        install=settings.sandbox_setup_firewall == "install",
    )


def check_disk_enforcement(settings: Settings) -> None:
    """Refuse a worker that cannot have the kernel-enforced disk limits it is set to (``sandbox.disk``), with
    the reason and the way out; say loudly what ``poll`` gives up."""
    if settings.sandbox_disk_enforcement == "poll":
        log.warning(
            "OVERNIGHT_SANDBOX_DISK_ENFORCEMENT=poll: the disk limit is a once-a-second measurement that a fast "
            "writer passes by gigabytes; a task can fill this host's disk"
        )
        return
    settings.workspaces_dir.mkdir(parents=True, exist_ok=True)
    reason = probe_kernel_disks(settings.workspaces_dir)
    if reason is not None:
        raise SandboxUnavailableError(
            f"kernel-enforced disk limits are not possible here: {reason.rstrip('.')}. Run the worker as root on a "
            "host with loop devices, or set OVERNIGHT_SANDBOX_DISK_ENFORCEMENT=poll to accept a limit a fast writer "
            "passes"
        )


def sandbox_backend(settings: Settings, *, docker_available: bool | None = None) -> SandboxBackend:
    return sandbox_config(settings, docker_available=docker_available).build()


REAP_INTERVAL_SECONDS = 60.0


def start_reaper(interval: float = REAP_INTERVAL_SECONDS, folders: tuple[Path, ...] = ()) -> threading.Thread:
    """Reap orphaned sandboxes (and, under ``folders``, their host folders) now, then every ``interval``
    seconds in a daemon thread."""

    def loop() -> None:
        while True:
            client = None
            try:
                client = docker.from_env(timeout=10) if docker_answers() else None
                removed = reap(client, folders)
                if removed:
                    log.warning("reaped %d orphaned sandbox(es): %s", len(removed), ", ".join(removed))
            except Exception:  # the reaper must outlive any one failure
                log.exception("sandbox reaper failed")
            finally:
                if client is not None:
                    client.close()
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="overnight-reaper", daemon=True)
    thread.start()
    return thread
