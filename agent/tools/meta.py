"""Tools about the work itself: todo (the model's own plan) and finish (ends the task)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.base import Submitted
from agent.tools.base import ToolArgs, ToolContext, ToolError, ToolResult


class TodoItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    content: str
    status: Literal["pending", "in_progress", "completed", "cancelled"] = "pending"
    priority: Literal["low", "medium", "high"] = "medium"


class TodoArgs(ToolArgs):
    action: Literal["read", "write"] = Field(description="Either 'read' or 'write'")
    todos: list[TodoItem] | None = Field(default=None, description="Complete list of todos when writing.")


class FinishArgs(ToolArgs):
    summary: str = Field(description="What you changed and how you verified it (tests run and their result).")
    pr_title: str = Field(min_length=1, max_length=200, description="A one-line pull-request title.")
    pr_body: str = Field(description="The pull-request description in Markdown.")


def todo(args: TodoArgs, ctx: ToolContext) -> ToolResult:
    if args.action == "write":
        if args.todos is None:
            raise ToolError("todos is required when action is 'write'")
        ids = [item.id for item in args.todos]
        if len(set(ids)) != len(ids):
            raise ToolError("todo ids must be unique")
        ctx.todos = [item.model_dump() for item in args.todos]
    if not ctx.todos:
        return ToolResult(output="The todo list is empty.")
    marks = {"pending": "[ ]", "in_progress": "[~]", "completed": "[x]", "cancelled": "[-]"}
    lines = (f"{marks[t['status']]} {t['id']}: {t['content']} ({t['priority']})" for t in ctx.todos)
    return ToolResult(output="\n".join(lines))


def finish(args: FinishArgs, ctx: ToolContext) -> ToolResult:
    raise Submitted(summary=args.summary, pr_title=args.pr_title.strip(), pr_body=args.pr_body)
