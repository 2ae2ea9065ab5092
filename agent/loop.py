"""The agent loop: build request → call model → run tool calls → append messages → check budgets.

History is append-only and the system prompt and tool list never change within a run, so every
request extends the previous one and vLLM's prefix cache stays warm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.base import AssistantTurn, Cancelled, LimitsExceeded, ModelClient, Submitted, ToolCall
from agent.prompts import SYSTEM_PROMPT, first_user_message
from agent.tools import Toolbox, ToolContext, ToolError
from sandbox.base import SandboxError
from sandbox.output import truncate_middle

EventSink = Callable[[str, dict[str, Any]], None]
MAX_TURNS_WITHOUT_TOOLS = 3
EVENT_TEXT_LIMIT = 4_000


@dataclass(kw_only=True)
class AgentConfig:
    max_steps: int = 100
    tool_output_limit: int = 16_000
    command_timeout: float = 300


@dataclass(kw_only=True)
class AgentResult:
    submission: Submitted
    steps: int
    messages: list[dict[str, Any]] = field(default_factory=list)


def run_agent(
    *,
    instruction: str,
    model: ModelClient,
    ctx: ToolContext,
    config: AgentConfig,
    on_event: EventSink,
    should_stop: Callable[[], bool] = lambda: False,
    repo_instructions: str | None = None,
    toolbox: Toolbox | None = None,
) -> AgentResult:
    """Drive the model until it calls ``finish``; raise ``LimitsExceeded`` or ``Cancelled`` otherwise."""
    toolbox = toolbox or Toolbox()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": first_user_message(instruction, repo_instructions)},
    ]
    turns_without_tools = 0
    for step in range(1, config.max_steps + 1):
        if should_stop():
            raise Cancelled("cancelled by user")
        turn = model.complete(messages, toolbox.schemas)
        messages.append(turn.to_message())
        _record_turn(on_event, step, turn)
        if not turn.tool_calls:
            turns_without_tools += 1
            if turns_without_tools >= MAX_TURNS_WITHOUT_TOOLS:
                raise LimitsExceeded(f"the model answered {turns_without_tools} times without calling a tool")
            messages.append({"role": "user", "content": NO_TOOL_CALL_REMINDER})
            continue
        turns_without_tools = 0
        for call in turn.tool_calls:
            try:
                output = _run_tool(toolbox, call, ctx, on_event, step)
            except Submitted as submitted:
                on_event("finish", {"step": step, "pr_title": submitted.pr_title, "summary": submitted.summary})
                return AgentResult(submission=submitted, steps=step, messages=messages)
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": output})
    raise LimitsExceeded(f"step budget exhausted ({config.max_steps} steps) before the model called finish")


def _run_tool(toolbox: Toolbox, call: ToolCall, ctx: ToolContext, on_event: EventSink, step: int) -> str:
    on_event("tool_call", {"step": step, "id": call.id, "name": call.name, "arguments": call.arguments})
    error = False
    try:
        output = toolbox.execute(call, ctx)
    except ToolError as exc:
        output, error = f"<tool_error>{call.name}: {exc}</tool_error>", True
    except SandboxError as exc:
        output, error = f"<tool_error>{call.name}: sandbox error: {exc}</tool_error>", True
    output = truncate_middle(output, ctx.output_limit)
    on_event(
        "tool_result",
        {
            "step": step,
            "id": call.id,
            "name": call.name,
            "error": error,
            "output": truncate_middle(output, EVENT_TEXT_LIMIT),
        },
    )
    return output


def _record_turn(on_event: EventSink, step: int, turn: AssistantTurn) -> None:
    data: dict[str, Any] = {
        "step": step,
        "finish_reason": turn.finish_reason,
        "usage": turn.usage.model_dump(),
    }
    if turn.content:
        data["content"] = truncate_middle(turn.content, EVENT_TEXT_LIMIT)
    if turn.reasoning:
        data["reasoning"] = truncate_middle(turn.reasoning, EVENT_TEXT_LIMIT)
    on_event("model_response", data)


NO_TOOL_CALL_REMINDER = (
    "You answered without calling a tool. Nobody is reading along: keep working with the tools, "
    "and call `finish` when the change is made and verified."
)
