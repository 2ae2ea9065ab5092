"""The agent's tools, with Mistral Vibe's names and argument schemas (the harness Medium 3.5 was tuned
with) plus ``finish``. Each tool's JSON schema is generated from the pydantic model of its arguments, and
the same model parses the model's arguments back; each returns a ``ToolResult``: the text the model sees and,
as data, how a command ended. A tool never crashes the loop: every failure is a ``ToolError`` whose text goes
back to the model."""

from __future__ import annotations

import json

from pydantic import ValidationError

from agent.base import ToolCall
from agent.tools.base import Tool, ToolContext, ToolError, ToolResult, resolve_path
from agent.tools.files import EditArgs, ReadFileArgs, WriteFileArgs, edit, read_file, write_file
from agent.tools.meta import FinishArgs, TodoArgs, finish, todo
from agent.tools.shell import BashArgs, GrepArgs, grep, run_bash

__all__ = ["TOOLS", "Tool", "ToolContext", "ToolError", "ToolResult", "Toolbox", "resolve_path"]

TOOLS: tuple[Tool, ...] = (
    Tool(
        name="bash",
        description="Run a bash command in the repository (no network). The working directory and exported "
        "variables carry over between calls. Prefer read_file, grep and edit for files.",
        args=BashArgs,
        run=run_bash,
    ),
    Tool(name="read_file", description="Read a text file with numbered lines.", args=ReadFileArgs, run=read_file),
    Tool(
        name="write_file",
        description="Create a new file with the given content (fails if the file exists; use edit to change one).",
        args=WriteFileArgs,
        run=write_file,
    ),
    Tool(
        name="edit",
        description="Replace an exact string in a file. old_string must match exactly once unless replace_all.",
        args=EditArgs,
        run=edit,
    ),
    Tool(name="grep", description="Search file contents with ripgrep; prints path:line:text.", args=GrepArgs, run=grep),
    Tool(
        name="todo",
        description="Read or replace your todo list, to plan multi-step work and track progress.",
        args=TodoArgs,
        run=todo,
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

    def execute(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        if call.problem:  # a name or arguments the client had to replace (agent/leaks.py)
            raise ToolError(f"{call.problem}. Call one of {', '.join(self.tools)} with a JSON object of arguments.")
        tool = self.tools.get(call.name)
        if tool is None:
            raise ToolError(f"unknown tool {call.name!r}; available tools: {', '.join(self.tools)}")
        try:
            raw = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolError(f"arguments of {call.name} are not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ToolError(f"arguments of {call.name} must be a JSON object")
        try:
            args = tool.args.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolError(f"invalid arguments for {call.name}: {problems}") from exc
        return tool.run(args, ctx)
