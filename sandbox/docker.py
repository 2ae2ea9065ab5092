"""The Docker backend: starts and stops containers (``DockerBackend``) and talks to one (``DockerSandbox``)."""

from __future__ import annotations

import io
import os
import posixpath
import secrets
import socket
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from pydantic import BaseModel, ConfigDict, Field

from sandbox.base import CommandResult, SandboxError, SandboxFileError, SandboxSpec, SandboxUnavailableError
from sandbox.image import SANDBOX_UID

WORKDIR = "/workspace"
LABEL_PREFIX = "dev.overnight"
# `timeout` exits 124 when it stopped the command, 137 when it had to SIGKILL it.
TIMEOUT_EXIT_CODES = (124, 137)


class DockerConfig(BaseModel):
    """Settings of the Docker backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = "overnight-sandbox:bookworm-1"
    """Image every sandbox starts from."""
    memory: str = "2g"
    """Memory limit (swap included: the sandbox gets no swap)."""
    pids: int = Field(default=512, gt=16)
    """Most processes and threads the sandbox may hold at once."""
    cpus: float = Field(default=2.0, gt=0)
    command_timeout: float = Field(default=300, gt=0)
    """Seconds a command may run when the caller names no timeout."""

    def build(self) -> DockerBackend:
        return DockerBackend(self)


class DockerBackend:
    """Starts sandboxes as containers with the workspace bind-mounted and no network by default."""

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
        user, home = _container_user(spec.workspace)
        labels = {
            f"{LABEL_PREFIX}.task": spec.task_id,
            f"{LABEL_PREFIX}.worker": socket.gethostname(),
            f"{LABEL_PREFIX}.created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            self.client.images.get(self.config.image)  # `containers.run` would try to pull a missing image
            container = self.client.containers.run(
                self.config.image,
                command=["sleep", "infinity"],
                detach=True,
                name=f"overnight-{spec.task_id}-{secrets.token_hex(3)}",
                labels=labels,
                user=user,
                environment={
                    "HOME": home,
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "PAGER": "cat",
                    "GIT_PAGER": "cat",
                },
                working_dir=WORKDIR,
                volumes={str(spec.workspace): {"bind": WORKDIR, "mode": "rw"}},
                network_mode="bridge" if spec.network else "none",
                mem_limit=self.config.memory,
                memswap_limit=self.config.memory,
                pids_limit=self.config.pids,
                nano_cpus=int(self.config.cpus * 1e9),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise SandboxUnavailableError(
                f"sandbox image {self.config.image!r} not found: run `overnight image build`"
            ) from exc
        except docker.errors.DockerException as exc:
            raise SandboxUnavailableError(f"could not start the sandbox container: {exc}") from exc
        return DockerSandbox(container, default_timeout=self.config.command_timeout)


def _container_user(workspace: Path) -> tuple[str, str]:
    """The unprivileged user the container runs as, and its HOME.

    A root worker hands the workspace to the image's ``sandbox`` user; any other worker runs the
    container as itself so that the files it leaves behind stay its own.
    """
    if os.geteuid() == 0:
        for root, dirs, files_ in os.walk(workspace):
            for name in (*dirs, *files_):
                os.lchown(os.path.join(root, name), SANDBOX_UID, SANDBOX_UID)
        os.lchown(workspace, SANDBOX_UID, SANDBOX_UID)
        return f"{SANDBOX_UID}:{SANDBOX_UID}", "/home/sandbox"
    return f"{os.getuid()}:{os.getgid()}", "/tmp"


class DockerSandbox:
    """One running container; every call goes through ``docker exec``."""

    def __init__(self, container: Container, *, default_timeout: float) -> None:
        self.container = container
        self.default_timeout = default_timeout
        self._closed = False

    @property
    def workdir(self) -> str:
        return WORKDIR

    @property
    def id(self) -> str:
        return str(self.container.id)

    def run(
        self,
        command: str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        limit = timeout or self.default_timeout
        script = command
        if stdin is not None:
            stdin_path = f"/tmp/.overnight-stdin-{secrets.token_hex(4)}"
            self._put_file(stdin_path, stdin)
            script = f"{{ {command}\n}} < {stdin_path}; __rc=$?; rm -f {stdin_path}; exit $__rc"
        argv = ["timeout", "--kill-after=5", f"{limit:g}", "bash", "-c", script]
        started = time.monotonic()
        exit_code, output = self._exec(argv, workdir=cwd or WORKDIR, environment=env)
        duration = time.monotonic() - started
        stdout, stderr = output
        return CommandResult(
            exit_code=exit_code,
            stdout=(stdout or b"").decode("utf-8", errors="replace"),
            stderr=(stderr or b"").decode("utf-8", errors="replace"),
            timed_out=exit_code in TIMEOUT_EXIT_CODES and duration >= limit,
            duration=duration,
        )

    def read_file(self, path: str) -> bytes:
        exit_code, (stdout, stderr) = self._exec(["cat", "--", self._abs(path)])
        if exit_code != 0:
            raise SandboxFileError(_first_line(stderr) or f"cannot read {path}")
        return stdout or b""

    def write_file(self, path: str, content: bytes) -> None:
        self._put_file(self._abs(path), content)

    def list_dir(self, path: str) -> list[str]:
        exit_code, (stdout, stderr) = self._exec(["ls", "-1A", "--", self._abs(path)])
        if exit_code != 0:
            raise SandboxFileError(_first_line(stderr) or f"cannot list {path}")
        return (stdout or b"").decode("utf-8", errors="replace").splitlines()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise SandboxError(f"could not remove container {self.container.name}: {exc}") from exc

    def _abs(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(WORKDIR, path))

    def _exec(
        self, argv: list[str], *, workdir: str = WORKDIR, environment: dict[str, str] | None = None
    ) -> tuple[int, tuple[bytes | None, bytes | None]]:
        try:
            result: Any = self.container.exec_run(argv, workdir=workdir, environment=environment, demux=True)
        except docker.errors.DockerException as exc:
            raise SandboxError(f"docker exec failed: {exc}") from exc
        return int(result.exit_code), result.output

    def _put_file(self, path: str, content: bytes) -> None:
        """Write through the engine's archive API so that paths resolve inside the container, never on the host."""
        directory, name = posixpath.split(path)
        exit_code, (_, stderr) = self._exec(["mkdir", "-p", "--", directory])
        if exit_code != 0:
            raise SandboxFileError(_first_line(stderr) or f"cannot create {directory}")
        uid, _, gid = (self.container.attrs.get("Config", {}).get("User") or "0:0").partition(":")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.uid, info.gid = int(uid or 0), int(gid or uid or 0)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(content))
        try:
            if not self.container.put_archive(directory, buffer.getvalue()):
                raise SandboxFileError(f"cannot write {path}")
        except docker.errors.APIError as exc:
            raise SandboxFileError(f"cannot write {path}: {exc.explanation or exc}") from exc


def _first_line(data: bytes | None) -> str:
    text = (data or b"").decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else ""
