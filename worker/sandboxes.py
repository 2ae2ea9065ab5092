"""From settings to a sandbox backend: Docker when an engine answers (or when asked), else bubblewrap."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import docker
import docker.errors

from overnight.settings import SandboxSettings, Settings
from sandbox.base import SandboxBackend, SandboxUnavailableError
from sandbox.bwrap import BwrapConfig
from sandbox.disk import probe_kernel_disks
from sandbox.docker import DockerConfig
from sandbox.egress import EgressPolicy
from sandbox.proxy import EgressProxy, ProxyConfig
from sandbox.reaper import reap
from worker.environment import SetupPolicy

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
    sandbox = settings.sandbox
    choice = sandbox.backend
    if choice == "auto":
        available = docker_answers() if docker_available is None else docker_available
        choice = "docker" if available else "bwrap"
    common = {
        **sandbox.limits.model_dump(),
        "control_root": settings.data_dir / "control",
        "setup_egress": setup_egress(sandbox),
    }
    if choice == "docker":
        return DockerConfig(image=sandbox.image, environments=settings.environments_dir / "docker", **common)
    return BwrapConfig(
        rootfs=settings.sandbox_rootfs_for(sandbox.image), environments=settings.environments_dir / "bwrap", **common
    )


def setup_egress(sandbox: SandboxSettings) -> EgressPolicy:
    return EgressPolicy(
        allowed_networks=tuple(sandbox.setup_allowed_networks),
        proxy=sandbox.proxy,
        install=sandbox.setup_firewall == "install",
    )


def egress_proxy(settings: Settings) -> EgressProxy:
    """The worker process's egress proxy (squid starts when a sandbox first needs it): it reaches the internet as
    the host does (through OVERNIGHT_SANDBOX_PROXY when set) and never a private range but those allowed."""
    sandbox = settings.sandbox
    return EgressProxy(ProxyConfig(upstream=sandbox.proxy, allowed_networks=tuple(sandbox.egress_allowed_networks),
                                   lease_root=settings.data_dir / "control"))  # fmt: skip


def setup_policy(sandbox: SandboxSettings, *, lifetime: float) -> SetupPolicy:
    """How set-up sandboxes start; ``lifetime``: the task's time limit."""
    return SetupPolicy(
        image=sandbox.image,
        network=sandbox.setup_network,
        timeout=sandbox.setup_timeout,
        lifetime=lifetime,
        ca_bundle=sandbox.ca_bundle,
        proxy_env=sandbox.proxy_env(),
        repo_images=tuple(sandbox.repo_images),
        egress=sandbox.setup_egress,
        registries=tuple(sandbox.setup_registries),
    )


def check_disk_enforcement(settings: Settings) -> None:
    """Refuse a worker that cannot have the kernel-enforced disk limits it is set to (``sandbox.disk``), with
    the reason and the way out; say loudly what ``poll`` gives up."""
    if settings.sandbox.limits.disk_enforcement == "poll":
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
