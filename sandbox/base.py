"""The sandbox interface every backend implements, and the models that cross it.

As in SWE-ReX, *starting* a box (``SandboxBackend.start``) is split from *talking* to it
(``Sandbox``); the worker and the agent depend on these two Protocols only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

READ_CHUNK = 2**20
"""Bytes of a file one answer of the exec server carries at most: a read is streamed in pieces this size."""
READ_LIMIT = 16 * 2**20
"""Bytes ``read_file`` takes of a file when its caller names no limit (a larger file is refused)."""


class SandboxError(Exception):
    """Root of every sandbox failure."""


class SandboxUnavailableError(SandboxError, RuntimeError):
    """The backend cannot start a sandbox (engine down, image missing)."""


class SandboxFileError(SandboxError, OSError):
    """A file operation inside the sandbox failed (missing file, not a directory, ...)."""


class SandboxFileTooLargeError(SandboxFileError):
    """A file is larger than the caller may read of it; nothing past the limit crossed into the worker."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(f"{path} is {size} bytes, more than the {limit} that may be read")
        self.path, self.size, self.limit = path, size, limit


class SandboxDiskFullError(SandboxError, OSError):
    """The workspace grew past its disk limit; the sandbox refuses further commands."""


class SandboxExpiredError(SandboxError, TimeoutError):
    """The sandbox outlived its lifetime (the task's wall-clock limit)."""


class CommandResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    duration: float = Field(ge=0, description="Wall-clock seconds the command took.")


class FileLines(BaseModel):
    """A window of lines of a text file in a sandbox, read there: only the window crosses into the worker."""

    model_config = ConfigDict(frozen=True)

    content: bytes = Field(description="The lines (with their newlines), at most the bytes asked for.")
    first: int = Field(ge=1, description="Number of the first line in ``content``.")
    count: int = Field(ge=0, description="Lines in ``content`` (the last one may be cut, see ``cut``).")
    total: int | None = Field(description="Lines in the file; None when it goes on past what was scanned.")
    cut: bool = Field(default=False, description="The last line is longer than the bytes left and was cut.")
    binary: bool = Field(default=False, description="A NUL byte near the start: nothing was read.")
    size: int = Field(ge=0, description="The file's size in bytes.")


class SandboxLimits(BaseModel):
    """Limits every backend enforces, per sandbox."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    memory: str = "2g"
    """Memory limit (swap included: the sandbox gets no swap)."""
    pids: int = Field(default=512, gt=16)
    """Most processes and threads the sandbox may hold at once."""
    cpus: float = Field(default=2.0, gt=0)
    """CPUs the sandbox may use."""
    command_timeout: float = Field(default=300, gt=0)
    """Seconds a command may run when the caller names no timeout."""
    disk_limit: int = Field(default=10 * 2**30, ge=0)
    """Bytes the workspace (and a set-up's environment) may grow to; a command that fills it is killed and
    the sandbox refuses more."""
    disk_enforcement: Literal["kernel", "poll"] = "kernel"
    """kernel: the workspace and a set-up's environment are each a filesystem of their own as large as
    ``disk_limit`` (``sandbox.disk``; needs a root worker with loop devices). poll: the exec server measures
    them once a second, which a fast writer passes by gigabytes."""
    tmp_size: str = "1g"
    """Size of the /tmp tmpfs."""
    home_size: str = "1g"
    """Size of the home-directory tmpfs."""
    startup_timeout: float = Field(default=30, gt=0)
    """Seconds the sandbox's exec server may take to answer after start."""
    control_root: Path | None = None
    """Where the exec server's control folders are made (the system temp dir if empty). A worker that talks
    to a Docker engine outside its own container needs a folder the engine sees at the same path."""


class SandboxSpec(BaseModel):
    """What one sandbox is started for."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    workspace: Path = Field(description="Host folder mounted read-write as the sandbox's working directory.")
    network: bool = Field(default=False, description="Give the sandbox a network (off for the agent phase).")
    image: str | None = Field(default=None, description="Image (or environment snapshot) to start from.")
    lifetime: float | None = Field(default=None, gt=0, description="Seconds after which the sandbox refuses work.")
    env: dict[str, str] = Field(default_factory=dict, description="Variables every command of the sandbox sees.")
    ca_bundle: Path | None = Field(
        default=None, description="A PEM bundle mounted read-only and trusted by pip, npm, git, curl and Python."
    )
    egress: Path | None = Field(
        default=None,
        description="A host folder holding the egress proxy's Unix socket (sandbox.proxy), mounted at "
        "/overnight/egress: the exec server relays 127.0.0.1:3128 to it, and HTTP(S)_PROXY point there. The "
        "sandbox still has no network of its own (``network`` stays off).",
    )
    purpose: Literal["agent", "setup"] = Field(
        default="agent",
        description="agent: /opt/overnight read-only. setup: /opt/overnight writable, kept as the environment.",
    )

    @model_validator(mode="after")
    def _one_way_out(self) -> SandboxSpec:
        if self.network and self.egress is not None:
            raise ValueError("a sandbox reaches out either through its network or through the egress proxy, not both")
        return self


class Sandbox(Protocol):
    """A running sandbox: commands and files, always relative to its working directory."""

    @property
    def workdir(self) -> str:
        """Absolute path of the workspace as seen inside the sandbox."""
        ...

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
        """Run ``command`` with bash; never raises for a non-zero exit or a timeout.

        ``session``: start in the working directory and with the exported variables the previous session
        call ended with, as an interactive shell would. Output beyond ``output_limit`` characters per stream
        is cut from the middle, with a "[... N lines / M bytes omitted ...]" marker.
        """
        ...

    def read_file(self, path: str, *, limit: int = READ_LIMIT, truncate: bool = False) -> bytes:
        """A regular file, streamed in pieces; past ``limit`` bytes ``SandboxFileTooLargeError`` (nothing more
        is read), or with ``truncate`` its first ``limit`` bytes."""
        ...

    def read_lines(self, path: str, *, first: int, count: int, max_bytes: int) -> FileLines:
        """Lines ``first`` (1-indexed) to ``first + count - 1`` of a text file, at most ``max_bytes`` of them,
        picked inside the sandbox."""
        ...

    def write_file(self, path: str, content: bytes) -> None: ...

    def list_dir(self, path: str) -> list[str]: ...

    def interrupt(self) -> None:
        """Kill whatever command is running now (another thread may call this); the sandbox stays usable."""
        ...

    def close(self) -> None:
        """Stop and remove the sandbox; safe to call twice."""
        ...


class SandboxBackend(Protocol):
    """Starts sandboxes, and keeps set-up environments (see ``sandbox.environments``)."""

    name: str

    def create_workspace(self, path: Path) -> None:
        """Make ``path`` (absent or empty) a folder for a task's sandboxes to work in, kept within the disk
        limit by the kernel; ``sandbox.reaper.remove_owned`` (or ``sandbox.disk.remove_folder``) removes it."""
        ...

    def start(self, spec: SandboxSpec) -> Sandbox: ...

    def snapshot(self, sandbox: Sandbox, key: str) -> tuple[str, int]:
        """Freeze a set-up sandbox as environment ``key``: its reference for ``SandboxSpec.image``, its size."""
        ...

    def remove_environment(self, ref: str) -> None: ...
