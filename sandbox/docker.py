"""The Docker backend: starts and stops containers; the exec server inside answers for them.

Agent-phase containers: unprivileged user, read-only root filesystem, size-limited tmpfs for /tmp and the
home directory, all capabilities dropped, ``no-new-privileges``, the default seccomp profile, memory
without swap, pids and CPU limits, no network, and no host mount but the workspace and the exec server's
control folder. Set-up containers differ only where set-up needs it: their /opt/overnight is a host folder
they write (a disk of its own, ``sandbox.disk``), kept as the environment agents then mount read-only, and,
when asked, a network. Nothing is ever written to a container's own layer (never limited, never kept).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from sandbox.base import Sandbox, SandboxError, SandboxLimits, SandboxSpec, SandboxUnavailableError
from sandbox.disk import check_workspace, keep_environment, make_limited_folder, remove_folder
from sandbox.egress import EgressPolicy, docker_setup_network
from sandbox.image import SANDBOX_HOME, SERVER_UID
from sandbox.reaper import owned_tempdir, process_identity, remove_owned
from sandbox.runtime import (
    CA_PATH,
    CONTROL_DIR,
    EGRESS_DIR,
    HOME_SEED,
    WORKDIR,
    SocketRuntime,
    control_folder,
    disk_paths_option,
    egress_option,
    sandbox_environment,
    sandbox_ids,
)

LABEL = "dev.overnight"
ENV_OPT = "/opt/overnight"
CAPS = "-all,+setuid,+setgid,+kill"


class DockerConfig(SandboxLimits):
    """Settings of the Docker backend."""

    image: str = "overnight-sandbox:bookworm-2"
    """Image every sandbox starts from, unless the task or an environment snapshot names another."""
    setup_egress: EgressPolicy = EgressPolicy()
    """What a sandbox with a network may reach (``sandbox.egress``)."""
    environments: Path = Path("/var/tmp/overnight-environments/docker")
    """Where set-up environments are kept: each a folder with its /opt/overnight and the name of its image."""
    shm_size: str = "64m"
    """Size of the /dev/shm tmpfs."""

    def build(self) -> DockerBackend:
        return DockerBackend(self)


class DockerSandbox(SocketRuntime):
    """A running container, spoken to through its exec server."""

    container: Container
    environment: Path | None = None
    """The staging folder a set-up sandbox writes its /opt/overnight into (a disk of its own)."""


class DockerBackend:
    name = "docker"

    def __init__(self, config: DockerConfig, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env()
                self._client.ping()
            except docker.errors.DockerException as exc:
                self._client = None
                raise SandboxUnavailableError(f"Docker engine not reachable: {exc}") from exc
        return self._client

    def start(self, spec: SandboxSpec) -> DockerSandbox:
        image, environment = self._image(spec)
        self._check_image(image)
        uid, gid = sandbox_ids(spec.workspace)
        # A network only on the set-up bridge, behind its firewall (made before anything needs cleaning up).
        network = (
            {"network": docker_setup_network(self.client, self.config.setup_egress)}
            if spec.network
            else {"network_mode": "none"}
        )
        check_workspace(spec.workspace, self.config)
        control = control_folder(self.config.control_root)
        staging = self._staging(image, uid, gid) if spec.purpose == "setup" else None
        options = self._container_options(spec, uid, gid, _mounts(spec, control, environment, staging))
        try:
            container = self.client.containers.run(image, **options, **network)
        except docker.errors.DockerException as exc:
            remove_owned(control)
            if staging is not None:
                remove_owned(staging)
            raise SandboxUnavailableError(f"could not start the sandbox container: {exc}") from exc
        return self._connect(container, control, staging)

    def _check_image(self, image: str) -> None:
        try:
            self.client.images.get(image)  # `containers.run` would try to pull a missing image
        except docker.errors.ImageNotFound as exc:
            hint = "run `overnight image build`" if image == self.config.image else "it is not on this worker"
            raise SandboxUnavailableError(f"sandbox image {image!r} not found: {hint}") from exc

    def _container_options(self, spec: SandboxSpec, uid: int, gid: int, mounts: list[Mount]) -> dict[str, Any]:
        """What ``containers.run`` gets besides the image and the network: the exec server as the command,
        the limits, the mounts, and no privilege it does not need."""
        setup = spec.purpose == "setup"
        # The container starts as root only for setpriv, which becomes SERVER_UID keeping the three
        # capabilities the server needs to start commands as their own uid and to kill them; the server
        # clears them from what commands inherit before anything else runs.
        server = (
            f"exec setpriv --reuid {SERVER_UID} --regid {SERVER_UID} --clear-groups --inh-caps={CAPS}"
            f" --ambient-caps={CAPS} python3 {CONTROL_DIR}/execserver.py --socket {CONTROL_DIR}/exec.sock"
            f" --workdir {WORKDIR} --disk-limit {self.config.disk_limit}"
            f"{disk_paths_option(spec.purpose, self.config)} --lifetime {spec.lifetime or 0:g}"
            f" --command-uid {uid} --command-gid {gid} --seccomp {CONTROL_DIR}/seccomp.bpf --home {SANDBOX_HOME}"
            + ("" if setup else f" --seed-home {HOME_SEED}")
            + egress_option(spec)
        )
        return {
            "command": ["sh", "-c", server],
            "detach": True,
            "name": f"overnight-{spec.task_id}-{spec.purpose}-{os.urandom(3).hex()}",
            "labels": sandbox_labels(spec),
            "user": "0:0",
            "environment": sandbox_environment(spec),
            "working_dir": WORKDIR,
            "mounts": mounts,
            "mem_limit": self.config.memory,
            "memswap_limit": self.config.memory,
            "pids_limit": self.config.pids,
            "nano_cpus": int(self.config.cpus * 1e9),
            "cap_drop": ["ALL"],
            "cap_add": ["SETUID", "SETGID", "KILL"],
            "security_opt": ["no-new-privileges"],
            "init": False,  # the exec server reaps as pid 1 (docker-init would run as root)
            # Set-up too: a read-only root, so nothing lands in the container's own (unlimited) layer.
            "read_only": True,
            "shm_size": self.config.shm_size,
            "tmpfs": {
                "/tmp": f"size={self.config.tmp_size},mode=1777",
                SANDBOX_HOME: f"size={self.config.home_size},mode=0700,uid={uid},gid={gid}",
            },
        }

    def _connect(self, container: Container, control: Path, staging: Path | None) -> DockerSandbox:
        """The sandbox for a started container, once its exec server answers; closing it removes the
        container, its control folder and a set-up's environment that was never snapshotted."""

        def stop() -> None:
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                raise SandboxError(f"could not remove container {container.name}: {exc}") from exc
            finally:
                remove_owned(control)
                if sandbox.environment is not None:  # a set-up that was never snapshotted
                    remove_owned(sandbox.environment)

        sandbox = DockerSandbox(control / "exec.sock", default_timeout=self.config.command_timeout, on_close=stop)
        sandbox.container = container
        sandbox.environment = staging
        try:
            sandbox.wait_ready(self.config.startup_timeout, alive=lambda: _running(container))
        except SandboxError as exc:
            logs = container.logs(tail=5).decode("utf-8", errors="replace").strip()
            sandbox.close()
            raise SandboxUnavailableError(f"{exc}{': ' + logs if logs else ''}") from exc
        return sandbox

    def create_workspace(self, path: Path) -> None:
        make_limited_folder(path, self.config)

    def _image(self, spec: SandboxSpec) -> tuple[str, Path | None]:
        """The image to run, and the environment folder when ``spec.image`` names one (its image is in it)."""
        if not spec.image or not spec.image.startswith("/"):
            return spec.image or self.config.image, None
        folder = Path(spec.image)
        try:
            if folder.parent != self.config.environments:
                raise FileNotFoundError(spec.image)
            return (folder / "image").read_text().strip(), folder
        except OSError as exc:
            raise SandboxUnavailableError(f"environment {spec.image} is not there (evicted?): {exc}") from exc

    def _staging(self, image: str, uid: int, gid: int) -> Path:
        """A set-up's environment folder: its /opt/overnight (a disk of its own) and the image it runs on."""
        self.config.environments.mkdir(parents=True, exist_ok=True)
        staging = owned_tempdir("staging-", self.config.environments)
        try:
            make_limited_folder(staging / "opt", self.config, owner=(uid, gid))
            (staging / "image").write_text(image)
        except BaseException:
            remove_owned(staging)
            raise
        return staging

    def snapshot(self, sandbox: Sandbox, key: str) -> tuple[str, int]:
        """Keep a copy of the set-up's environment folder as environment ``key`` (agents mount its
        /opt/overnight read-only on the image it was set up on): the container's own layer is never kept."""
        if not isinstance(sandbox, DockerSandbox) or sandbox.environment is None:
            raise SandboxError("only a Docker set-up sandbox can be snapshotted")
        final = self.config.environments / key
        size = keep_environment(sandbox.environment, final)
        remove_owned(sandbox.environment)
        sandbox.environment = None
        return str(final), size

    def remove_environment(self, ref: str) -> None:
        if ref.startswith("/"):
            if Path(ref).parent == self.config.environments:
                remove_folder(Path(ref))
            return
        try:  # an image snapshot of an older version (docker commit)
            self.client.images.remove(ref, force=True)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            raise SandboxError(f"could not remove environment image {ref}: {exc}") from exc


def _running(container: Container) -> bool:
    try:
        container.reload()
    except docker.errors.NotFound:
        return False
    return container.status in ("created", "running")


def _mounts(spec: SandboxSpec, control: Path, environment: Path | None, staging: Path | None) -> list[Mount]:
    """The workspace, the control folder, the CA bundle, and a set-up's environment (written) or the one an
    agent starts from (read-only)."""
    # Mounts, not `volumes=`: the SDK would also declare volumes in the container's config.
    mounts = [
        Mount(WORKDIR, str(spec.workspace), type="bind"),
        Mount(CONTROL_DIR, str(control), type="bind"),
    ]
    if spec.egress is not None:  # the egress proxy's socket: the only way out
        mounts.append(Mount(EGRESS_DIR, str(spec.egress), type="bind"))
    if spec.ca_bundle is not None:
        mounts.append(Mount(CA_PATH, str(spec.ca_bundle.resolve()), type="bind", read_only=True))
    if staging is not None:  # a set-up writes its environment...
        mounts.append(Mount(ENV_OPT, str(staging / "opt"), type="bind"))
    elif environment is not None:  # ...that agents started from it read
        mounts.append(Mount(ENV_OPT, str(environment / "opt"), type="bind", read_only=True))
    return mounts


def sandbox_labels(spec: SandboxSpec) -> dict[str, str]:
    """Labels the reaper reads: whose sandbox it is, which worker process started it, when it expires."""
    now = time.time()
    labels = {
        f"{LABEL}.task": spec.task_id,
        f"{LABEL}.purpose": spec.purpose,
        f"{LABEL}.worker": socket.gethostname(),
        f"{LABEL}.worker-pid": process_identity(),
        f"{LABEL}.created": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
    }
    # Always set: an environment snapshot carries its set-up container's labels, and these must overwrite them.
    labels[f"{LABEL}.expires"] = str(int(now + spec.lifetime)) if spec.lifetime else "0"
    return labels
