"""Shell tools: bash (a command in the sandbox) and grep (ripgrep over the workspace)."""

from __future__ import annotations

import shlex

from pydantic import Field

from agent.tools.base import ToolArgs, ToolContext, ToolError, ToolResult, relative, resolve_path
from sandbox.output import truncate_middle

GREP_DEFAULT_MATCHES = 100
GREP_MAX_BYTES = 64_000
GREP_HINT_ROOM = 100
BASH_ROOM = 300
"""Characters of a bash result kept for its headers and the omission markers of stdout and stderr."""


class BashArgs(ToolArgs):
    command: str
    timeout: int | None = Field(default=None, gt=0, description="Override the default command timeout.")


class GrepArgs(ToolArgs):
    pattern: str = Field(description="A regular expression (ripgrep syntax).")
    path: str = Field(default=".", description="File or folder to search, relative to the repository root.")
    max_matches: int | None = Field(default=None, gt=0, description="Override the default maximum number of matches.")
    use_default_ignore: bool = Field(default=True, description="Whether to respect .gitignore and .ignore files.")


def run_bash(args: BashArgs, ctx: ToolContext) -> ToolResult:
    if not args.command.strip():
        raise ToolError("command is empty")
    timeout = ctx.command_limit(args.timeout)
    result = ctx.sandbox.run(args.command, timeout=timeout, session=True, output_limit=ctx.output_limit)
    # stdout and stderr share what the loop shows of a tool result; either may use what the other leaves.
    room = max(ctx.output_limit - BASH_ROOM, 2)
    stderr_limit = max(room - len(result.stdout), room // 2)
    stdout_limit = room - min(len(result.stderr), stderr_limit)
    parts = [f"returncode: {result.exit_code}"]
    if result.timed_out:
        parts.append(f"timed out: the command was killed after {timeout:g} seconds")
    parts.append("stdout:\n" + truncate_middle(result.stdout, stdout_limit))
    parts.append("stderr:\n" + truncate_middle(result.stderr, stderr_limit))
    return ToolResult(output="\n".join(parts), exit_code=result.exit_code, timed_out=result.timed_out)


def grep(args: GrepArgs, ctx: ToolContext) -> ToolResult:
    if not args.pattern:
        raise ToolError("pattern is empty")
    target = resolve_path(ctx, args.path)
    limit = args.max_matches or GREP_DEFAULT_MATCHES
    flags = ["--line-number", "--no-heading", "--color=never", "--glob=!.git", "--max-columns=400"]
    if not args.use_default_ignore:
        flags += ["--no-ignore", "--hidden"]
    command = f"rg {' '.join(flags)} -e {shlex.quote(args.pattern)} -- {shlex.quote(relative(ctx, target))}"
    result = ctx.sandbox.run(command, timeout=min(ctx.command_timeout, 120))
    if result.exit_code == 1:
        return ToolResult(output=f"No matches for {args.pattern!r} in {args.path}.")
    if result.exit_code != 0:
        message = result.stderr.strip()[:600] or f"exit code {result.exit_code}"
        raise ToolError(f"grep failed: {message}")
    lines = result.stdout.splitlines()
    shown, size = [], 0
    budget = min(GREP_MAX_BYTES, ctx.output_limit - GREP_HINT_ROOM)  # what the loop shows of a result
    for line in lines[:limit]:
        size += len(line) + 1
        if size > budget:
            break
        shown.append(line)
    if len(shown) < len(lines):
        shown.append(f"[{len(lines)} matches; showing the first {len(shown)}. Narrow the pattern or path.]")
    return ToolResult(output="\n".join(shown))
