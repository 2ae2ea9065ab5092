"""Talking to a running sandbox through its exec server: the ``Sandbox`` interface over a Unix socket.

Backends (Docker, bubblewrap) only start and stop the box; this runtime is the same for all of them.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sandbox.base import (
    CommandResult,
    SandboxDiskFullError,
    SandboxError,
    SandboxExpiredError,
    SandboxFileError,
    SandboxSpec,
    SandboxUnavailableError,
)
from sandbox.image import SANDBOX_UID
from sandbox.protocol import (
    ErrorAnswer,
    InterruptRequest,
    ListDirRequest,
    PingRequest,
    ReadFileRequest,
    RunAnswer,
    RunRequest,
    WriteFileRequest,
)

WORKDIR = "/workspace"
CONTROL_DIR = "/overnight"
"""Where the exec server and its socket are mounted inside a sandbox."""
CA_PATH = "/etc/ssl/certs/ca-certificates.crt"
"""Where a sandbox's CA bundle is: a bundle given for a set-up phase is mounted over it."""
BASE_ENV = {
    "PATH": "/opt/overnight/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/sandbox",
    "LANG": "C.UTF-8",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    # Keep caches and bytecode out of the workspace, and so out of the patch.
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTEST_ADDOPTS": "-p no:cacheprovider",
}
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CURL_CA_BUNDLE")
HOME_SEED = "/opt/overnight/home"


def disk_paths_option(purpose: str, home: str) -> str:
    """The exec server's ``--disk-path`` arguments: the workspace, and for a set-up (whose root is writable
    and whose environment is kept) also the environment, the home directory and /tmp — so a set-up script
    that fills the disk fails its task, not the host."""
    paths = [WORKDIR] + (["/opt/overnight", home, "/tmp"] if purpose == "setup" else [])
    return "".join(f" --disk-path {path}" for path in paths)


"""An environment's home-directory contents, copied into the tmpfs home when a sandbox starts."""
EXECSERVER = Path(__file__).with_name("execserver.py")
DEFAULT_OUTPUT_LIMIT = 1_000_000
SOCKET_MARGIN = 30.0


class SocketRuntime:
    """``Sandbox`` over the exec server's socket; ``on_close`` stops the box (container or process)."""

    def __init__(
        self,
        socket_path: Path,
        *,
        default_timeout: float,
        on_close: Callable[[], None],
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.socket_path = socket_path
        self.default_timeout = default_timeout
        self.output_limit = output_limit
        self._on_close = on_close
        self._closed = False

    @property
    def workdir(self) -> str:
        return WORKDIR

    def wait_ready(self, timeout: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket_path.exists():
                try:
                    self._call(PingRequest(), timeout=5)
                    return
                except SandboxError:
                    pass
            if not alive():
                raise SandboxUnavailableError("the sandbox exited before its exec server started")
            time.sleep(0.005)
        raise SandboxUnavailableError(f"the sandbox's exec server did not start within {timeout:g} s")

    def run(
        self,
        command: str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        session: bool = False,
        output_limit: int | None = None,
    ) -> CommandResult:
        limit = timeout or self.default_timeout
        request = RunRequest(
            command=command,
            cwd=cwd,
            env=env,
            timeout=limit,
            stdin=base64.b64encode(stdin).decode() if stdin is not None else None,
            output_limit=output_limit or self.output_limit,
            session=session,
        )
        answer = RunAnswer.model_validate(self._call(request, timeout=limit + SOCKET_MARGIN))
        if answer.disk_exceeded:
            raise SandboxDiskFullError("the workspace exceeded its disk limit; the command was killed")
        return CommandResult(
            exit_code=answer.exit_code,
            stdout=answer.stdout,
            stderr=answer.stderr,
            timed_out=answer.timed_out,
            duration=answer.duration,
        )

    def read_file(self, path: str) -> bytes:
        answer = self._call(ReadFileRequest(path=self._abs(path)))
        return base64.b64decode(answer["content"])

    def write_file(self, path: str, content: bytes) -> None:
        self._call(WriteFileRequest(path=self._abs(path), content=base64.b64encode(content).decode()))

    def list_dir(self, path: str) -> list[str]:
        return list(self._call(ListDirRequest(path=self._abs(path)))["entries"])

    def interrupt(self) -> None:
        """Kill the commands running now; the sandbox stays usable."""
        self._call(InterruptRequest(), timeout=10)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()

    def _abs(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(WORKDIR, path))

    def _call(self, request: BaseModel, *, timeout: float = 60.0) -> dict[str, Any]:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(request.model_dump_json().encode() + b"\n")
                with sock.makefile("rb") as reader:
                    line = reader.readline()
        except (OSError, TimeoutError) as exc:
            raise SandboxError(f"the sandbox's exec server did not answer: {exc}") from exc
        if not line:
            raise SandboxError("the sandbox's exec server closed the connection (was the sandbox killed?)")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SandboxError(f"the exec server sent something that is not JSON: {line[:200]!r}") from exc
        if isinstance(answer, dict) and "error" in answer:
            try:
                error = ErrorAnswer.model_validate(answer)
            except ValidationError as exc:
                raise SandboxError(f"malformed error from the exec server: {answer}") from exc
            if error.error == "disk":
                raise SandboxDiskFullError(error.message)
            if error.error == "expired":
                raise SandboxExpiredError(error.message)
            if error.error == "os":
                raise SandboxFileError(error.message)
            raise SandboxError(f"{error.error}: {error.message}")
        if not isinstance(answer, dict):
            raise SandboxError(f"unexpected answer from the exec server: {answer!r}")
        return answer


def sandbox_ids(workspace: Path) -> tuple[int, int]:
    """The unprivileged uid/gid the sandbox runs as.

    A root worker hands the workspace to the image's ``sandbox`` user; any other worker runs the sandbox as
    itself, so that the files it leaves behind stay its own.
    """
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    for root, dirs, files in os.walk(workspace):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), SANDBOX_UID, SANDBOX_UID)
    os.lchown(workspace, SANDBOX_UID, SANDBOX_UID)
    return SANDBOX_UID, SANDBOX_UID


def sandbox_environment(spec: SandboxSpec) -> dict[str, str]:
    """The variables every command of the sandbox sees."""
    env = dict(BASE_ENV)
    if spec.ca_bundle is not None:
        env.update(dict.fromkeys(CA_ENV, CA_PATH))
    env.update(spec.env)
    return env
