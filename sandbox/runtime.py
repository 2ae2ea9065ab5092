"""Talking to a running sandbox through its exec server: the ``Sandbox`` interface over a Unix socket.

Backends (Docker, bubblewrap) only start and stop the box; this runtime is the same for all of them.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sandbox.base import (
    READ_CHUNK,
    READ_LIMIT,
    CommandResult,
    FileLines,
    SandboxDiskFullError,
    SandboxError,
    SandboxExpiredError,
    SandboxFileError,
    SandboxFileTooLargeError,
    SandboxLimits,
    SandboxSpec,
    SandboxUnavailableError,
)
from sandbox.image import SANDBOX_UID, SERVER_UID
from sandbox.protocol import (
    ErrorAnswer,
    InterruptRequest,
    ListDirRequest,
    PingRequest,
    ReadFileAnswer,
    ReadFileRequest,
    ReadLinesAnswer,
    ReadLinesRequest,
    RunAnswer,
    RunRequest,
    WriteFileRequest,
)
from sandbox.reaper import owned_tempdir
from sandbox.relay import LOOPBACK_PORT, SOCKET_NAME
from sandbox.seccomp import write_filter
from sandbox.spawnhelper import spawn_helper

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
EGRESS_DIR = "/overnight/egress"
"""Where a sandbox's egress folder (``SandboxSpec.egress``: the proxy's Unix socket) is mounted."""
EGRESS_PROXY = f"http://127.0.0.1:{LOOPBACK_PORT}"
EGRESS_ENV = {"HTTP_PROXY": EGRESS_PROXY, "HTTPS_PROXY": EGRESS_PROXY, "NO_PROXY": "localhost,127.0.0.1,::1"}
"""What points a sandbox's commands at the egress proxy (lower-case names too)."""


def disk_paths_option(purpose: str, limits: SandboxLimits) -> str:
    """The exec server's ``--disk-path`` arguments: the workspace, and for a set-up (whose environment is
    kept) also the environment — so a set-up script that fills them fails its task, not the host. With
    kernel enforcement, each is a disk the kernel keeps within the limit (``sandbox.disk``): full means over.
    (/tmp and the home are size-limited tmpfs: the kernel refuses a write past them.)"""
    paths = [WORKDIR] + (["/opt/overnight"] if purpose == "setup" else [])
    kernel = " --disk-kernel" if limits.disk_enforcement == "kernel" else ""
    return "".join(f" --disk-path {path}" for path in paths) + kernel


def egress_option(spec: SandboxSpec) -> str:
    """The exec server's ``--egress``: with an egress folder, it serves 127.0.0.1:3128 to the proxy's socket."""
    return f" --egress {EGRESS_DIR}/{SOCKET_NAME}" if spec.egress is not None else ""


"""An environment's home-directory contents, copied into the tmpfs home when a sandbox starts."""
EXECSERVER_FILES = ("execserver.py", "execsupport.py", "relay.py")
"""The exec server, copied into every sandbox's control folder (standard library only)."""
DEFAULT_OUTPUT_LIMIT = 1_000_000
SOCKET_MARGIN = 30.0
ANSWER_LIMIT = 32 * 2**20
"""Bytes of one answer the worker reads at most (two streams of a full output limit, JSON-escaped, fit)."""


class SocketRuntime:
    """``Sandbox`` over the exec server's socket; ``on_close`` stops the box (container or process)."""

    def __init__(
        self,
        socket_path: Path,
        *,
        default_timeout: float,
        on_close: Callable[[], None],
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        socket_owner: int = SERVER_UID,
    ) -> None:
        self.socket_path = socket_path
        self.socket_owner = socket_owner
        self._folder: int | None = None
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
            if self.socket_path.exists() or self.socket_path.is_symlink():
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

    def read_file(self, path: str, *, limit: int = READ_LIMIT, truncate: bool = False) -> bytes:
        """Streamed in pieces of READ_CHUNK bytes: the worker holds at most ``limit`` bytes of the file."""
        path, data = self._abs(path), bytearray()
        while True:
            want = min(READ_CHUNK, limit - len(data) + (0 if truncate else 1))
            if want <= 0:
                return bytes(data)
            request = ReadFileRequest(path=path, offset=len(data), length=want)
            answer = ReadFileAnswer.model_validate(self._call(request))
            if not truncate and answer.size > limit:
                raise SandboxFileTooLargeError(path, answer.size, limit)
            chunk = _decoded(answer.content, want)
            data += chunk
            if not truncate and len(data) > limit:  # it grew while being read
                raise SandboxFileTooLargeError(path, len(data), limit)
            if not chunk or len(data) >= answer.size:
                return bytes(data)

    def read_lines(self, path: str, *, first: int, count: int, max_bytes: int) -> FileLines:
        request = ReadLinesRequest(path=self._abs(path), first=first, count=count, max_bytes=min(max_bytes, READ_CHUNK))
        answer = ReadLinesAnswer.model_validate(self._call(request))
        content = _decoded(answer.content, request.max_bytes)
        return FileLines(**answer.model_dump(exclude={"content"}), content=content)

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
            if self._folder is not None:
                os.close(self._folder)
                self._folder = None
            self._on_close()

    def _check_socket(self) -> str:
        """Only the socket the exec server made: no symlink (to a host path the sandbox names), no socket of
        another owner (a command's). The folder it is in is the server's, which commands cannot write.

        Returns the address to connect to: through the folder's descriptor, so that it stays short (a Unix
        socket's path may not pass 107 bytes, and a data dir can be deep) and cannot be swapped for a link."""
        try:
            if self._folder is None:
                flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                self._folder = os.open(self.socket_path.parent, flags)
            info = os.lstat(self.socket_path.name, dir_fd=self._folder)
        except OSError as exc:
            raise SandboxError(f"the sandbox's exec server is not there: {exc}") from exc
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != self.socket_owner:
            raise SandboxError(
                f"refusing {self.socket_path}: not a socket owned by uid {self.socket_owner} "
                f"(mode {stat.filemode(info.st_mode)}, uid {info.st_uid})"
            )
        return f"/proc/self/fd/{self._folder}/{self.socket_path.name}"

    def _abs(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(WORKDIR, path))

    def _call(self, request: BaseModel, *, timeout: float = 60.0) -> dict[str, Any]:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        address = self._check_socket()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                sock.sendall(request.model_dump_json().encode() + b"\n")
                with sock.makefile("rb") as reader:
                    line = reader.readline(ANSWER_LIMIT + 1)
        except (OSError, TimeoutError) as exc:
            raise SandboxError(f"the sandbox's exec server did not answer: {exc}") from exc
        if not line:
            raise SandboxError("the sandbox's exec server closed the connection (was the sandbox killed?)")
        if len(line) > ANSWER_LIMIT and not line.endswith(b"\n"):
            raise SandboxError(f"the exec server's answer is larger than {ANSWER_LIMIT} bytes; it was not read")
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


def _decoded(content: str, most: int) -> bytes:
    """A read answer's bytes, refused when there are more than were asked for."""
    if len(content) > (most + 2) // 3 * 4 + 4:
        raise SandboxError(f"the exec server sent more than the {most} bytes asked for")
    try:
        data = base64.b64decode(content, validate=True)
    except ValueError as exc:
        raise SandboxError("the exec server sent a read answer that is not base64") from exc
    if len(data) > most:
        raise SandboxError(f"the exec server sent more than the {most} bytes asked for")
    return data


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
    if spec.egress is not None:
        env.update({**EGRESS_ENV, **{name.lower(): value for name, value in EGRESS_ENV.items()}})
    env.update(spec.env)
    return env


def control_folder(root: Path | None) -> Path:
    """A new control folder (under ``root``, else the system temp dir) for one sandbox: the exec server, its
    seccomp filter, and later its socket, in a folder only the server's uid may write."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    control = owned_tempdir("overnight-ctl-", root)
    for name in EXECSERVER_FILES:
        shutil.copy(Path(__file__).with_name(name), control / name)
    helper = spawn_helper()
    if helper is not None:
        shutil.copy(helper, control / helper.name)
    write_filter(control)
    os.chown(control, SERVER_UID, SERVER_UID)
    os.chmod(control, 0o755)
    return control
