"""The requests the host sends to the exec server inside a sandbox, and its answers (one JSON line each)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PingRequest(_Request):
    type: Literal["ping"] = "ping"


class RunRequest(_Request):
    type: Literal["run"] = "run"
    command: str
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout: float = Field(gt=0)
    stdin: str | None = Field(default=None, description="Base64 of the bytes fed to the command's stdin.")
    output_limit: int = Field(gt=0, description="Characters of each stream kept (head and tail).")
    session: bool = Field(default=False, description="Keep cwd and exported variables from the previous call.")


class ReadFileRequest(_Request):
    type: Literal["read_file"] = "read_file"
    path: str
    offset: int = Field(default=0, ge=0)
    length: int = Field(gt=0, description="Bytes to read at most (the server answers with at most its own cap).")


class ReadLinesRequest(_Request):
    type: Literal["read_lines"] = "read_lines"
    path: str
    first: int = Field(ge=1, description="First line (1-indexed).")
    count: int = Field(gt=0, description="Lines to return at most.")
    max_bytes: int = Field(gt=0, description="Bytes of lines to return at most; a longer line is cut.")


class WriteFileRequest(_Request):
    type: Literal["write_file"] = "write_file"
    path: str
    content: str = Field(description="Base64 of the file's bytes.")


class InterruptRequest(_Request):
    type: Literal["interrupt"] = "interrupt"


class ListDirRequest(_Request):
    type: Literal["list_dir"] = "list_dir"
    path: str


Request = Annotated[
    PingRequest
    | RunRequest
    | ReadFileRequest
    | ReadLinesRequest
    | WriteFileRequest
    | ListDirRequest
    | InterruptRequest,
    Field(discriminator="type"),
]


class RunAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    disk_exceeded: bool = False
    duration: float = 0.0


class ReadFileAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str = Field(description="Base64 of the bytes read.")
    size: int = Field(ge=0, description="The file's size when it was opened.")


class ReadLinesAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str = Field(description="Base64 of the lines read.")
    first: int = Field(ge=1)
    count: int = Field(ge=0)
    total: int | None = None
    cut: bool = False
    binary: bool = False
    size: int = Field(ge=0)


class ErrorAnswer(BaseModel):
    error: str
    message: str
