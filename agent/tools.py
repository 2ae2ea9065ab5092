"""The agent's tools: typed arguments (their JSON schema is generated from the pydantic model, as in
Mistral Vibe, so the model meets the names and shapes it was tuned on), executed in the sandbox.

A tool never crashes the loop: every failure is a ``ToolError`` whose text goes back to the model.
"""

from __future__ import annotations

import difflib
import json
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.base import AgentError, Submitted, ToolCall
from sandbox.base import Sandbox, SandboxError
from sandbox.output import truncate_middle

READ_MAX_BYTES = 64_000
SNIPPET_CONTEXT = 4


class ToolError(AgentError):
    """A tool refused or failed; the message is shown to the model as the tool result."""


@dataclass(kw_only=True)
class ToolContext:
    sandbox: Sandbox
    output_limit: int = 16_000
    command_timeout: float = 300


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BashArgs(_Args):
    command: str
    timeout: int | None = Field(default=None, gt=0, description="Override the default command timeout.")


class ReadFileArgs(_Args):
    file_path: str = Field(description="The path of the file to read (relative to the repository root).")
    offset: int | None = Field(
        default=None,
        ge=1,
        description="The line number to start reading from (1-indexed). Only provide if the file is too large "
        "to read at once.",
    )
    limit: int = Field(
        default=2000,
        gt=0,
        description="The number of lines to read. Lower it to read a smaller portion of a large file.",
    )


class EditArgs(_Args):
    file_path: str = Field(description="The path of the file to modify")
    old_string: str = Field(description="The text to replace")
    new_string: str = Field(description="The text to replace it with (must be different from old_string)")
    replace_all: bool = Field(default=False, description="Replace all occurrences of old_string (default false)")


class FinishArgs(_Args):
    summary: str = Field(description="What you changed and how you verified it (tests run and their result).")
    pr_title: str = Field(min_length=1, max_length=200, description="A one-line pull-request title.")
    pr_body: str = Field(description="The pull-request description in Markdown.")


@dataclass(frozen=True, kw_only=True)
class Tool:
    name: str
    description: str
    args: type[_Args]
    run: Callable[[Any, ToolContext], str]

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": _strip_titles(self.args.model_json_schema()),
            },
        }


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _strip_titles(value) for key, value in schema.items() if key != "title"}
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema


# --- paths -----------------------------------------------------------------------------------------


def resolve_path(ctx: ToolContext, file_path: str) -> str:
    """The absolute in-sandbox path of ``file_path``, refused unless it stays inside the workspace."""
    root = ctx.sandbox.workdir
    if not file_path.strip():
        raise ToolError("file_path is empty")
    if "\x00" in file_path:
        raise ToolError("file_path contains a NUL byte")
    candidate = posixpath.normpath(posixpath.join(root, file_path))
    if not _inside(candidate, root):
        raise ToolError(f"refused: {file_path} is outside the workspace {root}")
    result = ctx.sandbox.run(f"realpath -m -- {shlex.quote(candidate)}", timeout=10)
    real = result.stdout.strip()
    if result.exit_code != 0 or not _inside(real, root):
        raise ToolError(f"refused: {file_path} resolves (through a symlink) outside the workspace {root}")
    return candidate


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# --- tools -----------------------------------------------------------------------------------------


def run_bash(args: BashArgs, ctx: ToolContext) -> str:
    timeout = min(args.timeout or ctx.command_timeout, ctx.command_timeout * 4)
    result = ctx.sandbox.run(args.command, timeout=timeout)
    half = ctx.output_limit // 2
    parts = [f"returncode: {result.exit_code}"]
    if result.timed_out:
        parts.append(f"timed out: the command was killed after {timeout:g} seconds")
    parts.append("stdout:\n" + truncate_middle(result.stdout, half))
    parts.append("stderr:\n" + truncate_middle(result.stderr, half))
    return "\n".join(parts)


def read_file(args: ReadFileArgs, ctx: ToolContext) -> str:
    path = resolve_path(ctx, args.file_path)
    text = _read_text(ctx, path, args.file_path)
    lines = text.splitlines()
    start = (args.offset or 1) - 1
    if lines and start >= len(lines):
        raise ToolError(f"offset {args.offset} is past the end of {args.file_path} ({len(lines)} lines)")
    shown: list[str] = []
    size = 0
    for number, line in enumerate(lines[start : start + args.limit], start=start + 1):
        rendered = f"{number:6}\u2192{line}"
        size += len(rendered) + 1
        if size > READ_MAX_BYTES:
            break
        shown.append(rendered)
    end = start + len(shown)
    if end < len(lines):
        shown.append(f"[{args.file_path} has {len(lines)} lines; showing {start + 1}-{end}. Use offset to read on.]")
    return "\n".join(shown) if shown else f"[{args.file_path} is empty]"


def edit(args: EditArgs, ctx: ToolContext) -> str:
    if args.old_string == args.new_string:
        raise ToolError("old_string and new_string are the same: nothing to change")
    if not args.old_string:
        raise ToolError("old_string is empty; use write_file to create a file")
    path = resolve_path(ctx, args.file_path)
    text = _read_text(ctx, path, args.file_path)
    count = text.count(args.old_string)
    if count == 0:
        raise ToolError(f"old_string not found in {args.file_path}.{_nearest(text, args.old_string)}")
    if count > 1 and not args.replace_all:
        lines = _match_lines(text, args.old_string)
        raise ToolError(
            f"old_string occurs {count} times in {args.file_path} (lines {', '.join(map(str, lines))}); "
            "include more surrounding context to make it unique, or set replace_all"
        )
    updated = (
        text.replace(args.old_string, args.new_string)
        if args.replace_all
        else text.replace(args.old_string, args.new_string, 1)
    )
    _check_python(args.file_path, text, updated)
    ctx.sandbox.write_file(path, updated.encode("utf-8"))
    first = text[: text.index(args.old_string)].count("\n")
    return f"Edited {args.file_path} ({count if args.replace_all else 1} replacement).\n" + _snippet(
        updated, first, args.new_string.count("\n") + 1
    )


def finish(args: FinishArgs, ctx: ToolContext) -> str:
    raise Submitted(summary=args.summary, pr_title=args.pr_title.strip(), pr_body=args.pr_body)


def _read_text(ctx: ToolContext, path: str, shown_as: str) -> str:
    try:
        data = ctx.sandbox.read_file(path)
    except SandboxError as exc:
        raise ToolError(f"cannot read {shown_as}: {exc}") from exc
    if b"\x00" in data[:8192]:
        raise ToolError(f"{shown_as} looks like a binary file")
    return data.decode("utf-8", errors="replace")


def _nearest(text: str, needle: str) -> str:
    lines = text.splitlines()
    probe = next((line for line in needle.splitlines() if line.strip()), needle)
    matches = difflib.get_close_matches(probe, lines, n=3, cutoff=0.5)
    if not matches:
        return " No similar lines found; read the file again before editing."
    found = []
    for match in matches:
        number = lines.index(match) + 1
        found.append(f"{number:6}\u2192{match}")
    return " The closest lines are:\n" + "\n".join(found)


def _match_lines(text: str, needle: str) -> list[int]:
    lines, position = [], text.find(needle)
    while position != -1:
        lines.append(text[:position].count("\n") + 1)
        position = text.find(needle, position + 1)
    return lines


def _check_python(shown_as: str, before: str, after: str) -> None:
    """Refuse an edit that breaks a Python file that compiled before (compiling runs none of its code)."""
    if not shown_as.endswith(".py"):
        return
    try:
        compile(before, shown_as, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return
    try:
        compile(after, shown_as, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = exc.lineno or 1
        raise ToolError(
            f"edit NOT applied: {shown_as} would no longer compile: {exc.msg} at line {line}.\n"
            + _snippet(after, line - 1, 1)
        ) from exc


def _snippet(text: str, first_line: int, count: int) -> str:
    lines = text.splitlines()
    start = max(first_line - SNIPPET_CONTEXT, 0)
    end = min(first_line + count + SNIPPET_CONTEXT, len(lines))
    return "\n".join(f"{n:6}\u2192{lines[n - 1]}" for n in range(start + 1, end + 1))


TOOLS: tuple[Tool, ...] = (
    Tool(
        name="bash",
        description="Run a bash command in the repository (no network). Prefer read_file and edit for files.",
        args=BashArgs,
        run=run_bash,
    ),
    Tool(
        name="read_file",
        description="Read a text file with numbered lines.",
        args=ReadFileArgs,
        run=read_file,
    ),
    Tool(
        name="edit",
        description="Replace an exact string in a file. old_string must match exactly once unless replace_all.",
        args=EditArgs,
        run=edit,
    ),
    Tool(
        name="finish",
        description="End the task once the change is made and verified; give the pull-request title and body.",
        args=FinishArgs,
        run=finish,
    ),
)


class Toolbox:
    """The tools of one run, in a fixed order (a stable tool list keeps the prefix cache warm)."""

    def __init__(self, tools: tuple[Tool, ...] = TOOLS) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.schemas = [tool.schema() for tool in tools]

    def execute(self, call: ToolCall, ctx: ToolContext) -> str:
        tool = self.tools.get(call.name)
        if tool is None:
            raise ToolError(f"unknown tool {call.name!r}; available tools: {', '.join(self.tools)}")
        try:
            raw = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolError(f"arguments of {call.name} are not valid JSON: {exc}") from exc
        try:
            args = tool.args.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolError(f"invalid arguments for {call.name}: {problems}") from exc
        return tool.run(args, ctx)
