"""What every tool shares: typed arguments, the context a call runs in, its result, errors, and path
confinement."""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from agent.base import AgentError
from sandbox.base import Sandbox, SandboxError

AGENTS_FILE = "AGENTS.md"
INSTRUCTIONS_LIMIT = 16_000


class ToolError(AgentError):
    """A tool refused or failed; the message is shown to the model as the tool result."""


@dataclass(kw_only=True)
class ToolContext:
    """One run's tool state: the sandbox, limits, the todo list, and which AGENTS.md files were shown."""

    sandbox: Sandbox
    output_limit: int = 16_000
    command_timeout: float = 300
    todos: list[dict[str, Any]] = field(default_factory=list)
    instructions_shown: set[str] = field(default_factory=set)
    """Folders (relative to the workspace) whose AGENTS.md the model has already been given."""
    deadline: float | None = None
    """time.monotonic() by which the run's wall-time budget ends; commands get no more than what is left."""

    def command_limit(self, requested: float | None) -> float:
        limit = min(requested or self.command_timeout, self.command_timeout * 4)
        if self.deadline is not None:
            limit = min(limit, max(self.deadline - time.monotonic(), 1.0))
        return limit


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolResult(BaseModel):
    """What a tool call gave back: the text the model is shown and, as data, how a command ended (what the
    worker reads, e.g. whether the tests the agent ran passed; never parsed back out of the text)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str
    """The text the model is shown."""
    exit_code: int | None = None
    """The exit code of the model's command (bash); None for a tool that runs none, or a call that failed."""
    timed_out: bool = False
    """The command was killed at its time limit."""
    error: bool = False
    """The call was refused or failed; ``output`` says why."""


@dataclass(frozen=True, kw_only=True)
class Tool:
    name: str
    description: str
    args: type[ToolArgs]
    run: Callable[[Any, ToolContext], ToolResult]

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": strip_titles(self.args.model_json_schema()),
            },
        }


def strip_titles(schema: Any) -> Any:
    """Pydantic's schema without its ``title`` keys (as Vibe sends it); property names are kept."""
    if isinstance(schema, dict):
        return {
            key: strip_titles(value) for key, value in schema.items() if not (key == "title" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [strip_titles(item) for item in schema]
    return schema


def resolve_path(ctx: ToolContext, file_path: str) -> str:
    """The absolute in-sandbox path of ``file_path``, refused unless it stays inside the workspace.

    Checked twice: lexically (``..``, absolute paths elsewhere) and after symlinks are resolved *inside*
    the sandbox, so a link to /etc/shadow is refused whatever the file tools would follow.
    """
    root = ctx.sandbox.workdir
    if not file_path.strip():
        raise ToolError("file_path is empty")
    if "\x00" in file_path:
        raise ToolError("file_path contains a NUL byte")
    candidate = posixpath.normpath(posixpath.join(root, file_path))
    if not inside(candidate, root):
        raise ToolError(f"refused: {file_path} is outside the workspace {root}")
    result = ctx.sandbox.run(f"realpath -m -- {shlex.quote(candidate)}", timeout=10)
    real = result.stdout.strip()
    if result.exit_code != 0 or not inside(real, root):
        raise ToolError(f"refused: {file_path} resolves (through a symlink) outside the workspace {root}")
    return candidate


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def relative(ctx: ToolContext, path: str) -> str:
    return posixpath.relpath(path, ctx.sandbox.workdir)


def instructions_along(ctx: ToolContext, path: str) -> str:
    """AGENTS.md files in the folders from the workspace root down to ``path`` not yet shown to the model.

    The root's file goes into the first user message; deeper ones arrive with the first tool result that
    touches their folder, so the history stays append-only.
    """
    folder = posixpath.dirname(relative(ctx, path))
    parts = [] if folder in ("", ".") else folder.split("/")
    found = []
    for depth in range(len(parts) + 1):
        current = "/".join(parts[:depth]) or "."
        if current in ctx.instructions_shown:
            continue
        ctx.instructions_shown.add(current)
        text = read_instructions(ctx, current)
        if text:
            found.append(f"<instructions from {posixpath.join(current, AGENTS_FILE)}>\n{text}\n</instructions>")
    return "\n\n".join(found)


def read_instructions(ctx: ToolContext, folder: str) -> str | None:
    """The AGENTS.md of ``folder`` (relative), if it exists and stays inside the workspace."""
    path = posixpath.normpath(posixpath.join(ctx.sandbox.workdir, folder, AGENTS_FILE))
    check = ctx.sandbox.run(f"test -f {shlex.quote(path)} && realpath -- {shlex.quote(path)}", timeout=10)
    if check.exit_code != 0 or not inside(check.stdout.strip(), ctx.sandbox.workdir):
        return None
    try:
        data = ctx.sandbox.read_file(path, limit=INSTRUCTIONS_LIMIT * 4, truncate=True)
    except SandboxError:  # vanished or unreadable: simply no instructions
        return None
    text = data.decode("utf-8", errors="replace").strip()
    return text[:INSTRUCTIONS_LIMIT] if text else None
