"""The agent loop: check budgets → call model → run tool calls → append messages → repeat.

History is append-only and the system prompt and tool list never change within a run, so every request
extends the previous one and vLLM's prefix cache stays warm. The one exception is compaction near the
context limit, the only place where history is rewritten (recorded as an event). What the user sends while
the run goes on comes through the ``Mailbox`` it is handed, appended like everything else (``agent/messages.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.base import AssistantTurn, Cancelled, LimitsExceeded, Mailbox, ModelClient, NoMail, Submitted, ToolCall
from agent.budget import AgentConfig, Spend
from agent.leaks import TOOL_CALLS_TOKEN
from agent.messages import after_finish, steers, task_content, text_length, without_image_data
from agent.prompts import (
    COMPACTION_PROMPT,
    FINISH_DEFERRED,
    NO_TOOL_CALL_REMINDER,
    SYSTEM_PROMPT,
    UNPARSED_TOOL_CALL,
    first_user_message,
)
from agent.tools import Toolbox, ToolContext, ToolError, ToolResult
from agent.tools.base import read_instructions
from overnight.events import (
    CompactionEvent,
    EventSink,
    FinishEvent,
    FormatErrorEvent,
    ModelResponseEvent,
    TokenUsage,
    ToolCallEvent,
    ToolResultEvent,
)
from overnight.images import TaskImageData
from sandbox.base import SandboxError
from sandbox.output import truncate_middle

log = logging.getLogger(__name__)

MAX_TURNS_WITHOUT_TOOLS = 3
EVENT_TEXT_LIMIT = 4_000
CHARS_PER_TOKEN = 4


@dataclass(kw_only=True)
class Trajectory:
    """Everything the run said and saw, in order; never rewritten (compaction is an entry in it)."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    """Per tool call, in order: its id and tool, and how it ended as data (``ToolResult`` without its text)."""


@dataclass(kw_only=True)
class AgentResult:
    submission: Submitted
    steps: int


def run_agent(
    *,
    instruction: str,
    model: ModelClient,
    ctx: ToolContext,
    config: AgentConfig,
    on_event: EventSink,
    should_stop: Callable[[], bool] = lambda: False,
    trajectory: Trajectory | None = None,
    toolbox: Toolbox | None = None,
    environment_note: str | None = None,
    mailbox: Mailbox | None = None,
    images: Sequence[TaskImageData] = (),
) -> AgentResult:
    """Drive the model until it calls ``finish`` with nothing the user sent still unseen (``mailbox``: steers
    at each tool boundary, queued messages when it would finish); raise ``LimitsExceeded`` or ``Cancelled``.
    ``images`` go with the task's first message (and its restatement after a compaction)."""
    toolbox, mailbox = toolbox or Toolbox(), mailbox or NoMail()
    trajectory = trajectory if trajectory is not None else Trajectory()
    trajectory.tools = toolbox.schemas
    spend = Spend(budget=config.budget)
    ctx.instructions_shown.add(".")
    task_message = first_user_message(instruction, read_instructions(ctx, "."), environment_note)
    history = _History(trajectory=trajectory, images=list(images))
    history.append({"role": "system", "content": SYSTEM_PROMPT})
    history.append({"role": "user", "content": task_content(task_message, images)})
    turns_without_tools = 0
    while True:
        if should_stop():
            raise Cancelled("cancelled by user")
        spend.check_before_step()
        if history.context_tokens() >= config.compact_threshold:
            _compact(model, history, toolbox, task_message, spend, on_event, config.max_compactions)
        history.extend(steers(mailbox, spend.steps + 1))
        spend.steps += 1
        step = spend.steps
        started = time.monotonic()
        turn = model.complete(history.messages, toolbox.schemas)
        spend.add(turn.usage)
        history.add_turn(model.history_message(turn), turn)
        _record_turn(on_event, trajectory, step, turn, time.monotonic() - started)
        spend.check_after_call()
        if not turn.tool_calls:
            turns_without_tools += 1
            history.append(_reminder(on_event, step, turn, turns_without_tools))
            continue
        turns_without_tools, waiting = 0, []
        for call in turn.tool_calls:
            ctx.deadline = time.monotonic() + spend.remaining_seconds()
            try:
                output = _run_tool(toolbox, call, ctx, on_event, step, trajectory)
            except Submitted as submitted:
                on_event(FinishEvent(step=step, pr_title=submitted.pr_title, summary=submitted.summary))
                waiting = after_finish(mailbox, spend)  # what the user sent meanwhile turns it into more work
                if not waiting:
                    return AgentResult(submission=submitted, steps=step)
                output = FINISH_DEFERRED
            history.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": output})
        history.extend(waiting)


@dataclass(kw_only=True)
class _History:
    """The messages the model is sent, each also added to the trajectory, and how many tokens they hold: the
    last call's context plus what was appended since (estimated from its length)."""

    trajectory: Trajectory
    images: list[TaskImageData] = field(default_factory=list)
    """The task's images: they go with its first message, and with its restatement after a compaction."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    last_context: int = 0
    pending_chars: int = 0
    compactions: int = 0

    def append(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.trajectory.messages.append(without_image_data(message))
        self.pending_chars += text_length(message)

    def extend(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.append(message)

    def add_turn(self, message: dict[str, Any], turn: AssistantTurn) -> None:
        """The model's own answer: the context is now what its call reported."""
        self.last_context, self.pending_chars = turn.usage.prompt_tokens + turn.usage.completion_tokens, 0
        self.messages.append(message)
        self.trajectory.messages.append(message)

    def context_tokens(self) -> int:
        return self.last_context + self.pending_chars // CHARS_PER_TOKEN

    def replace(self, messages: list[dict[str, Any]]) -> None:
        """Compaction: the only rewrite of the history (the trajectory keeps everything, and the summary)."""
        self.messages[:] = messages
        self.trajectory.messages.append({**without_image_data(messages[-1]), "overnight_compaction": True})
        self.compactions += 1
        self.last_context, self.pending_chars = 0, sum(text_length(m) for m in messages)


def _reminder(on_event: EventSink, step: int, turn: AssistantTurn, turns_without_tools: int) -> dict[str, Any]:
    """What a model that answered without calling a tool is told (a tool call written as text is a format
    error); after ``MAX_TURNS_WITHOUT_TOOLS`` such answers in a row the run ends."""
    if turns_without_tools >= MAX_TURNS_WITHOUT_TOOLS:
        raise LimitsExceeded(f"the model answered {turns_without_tools} times in a row without calling a tool")
    leaked = TOOL_CALLS_TOKEN in (turn.content or "")
    if leaked:
        on_event(FormatErrorEvent(step=step, content=truncate_middle(turn.content or "", 1000)))
    return {"role": "user", "content": UNPARSED_TOOL_CALL if leaked else NO_TOOL_CALL_REMINDER}


def _compact(
    model: ModelClient,
    history: _History,
    toolbox: Toolbox,
    task_message: str,
    spend: Spend,
    on_event: EventSink,
    max_compactions: int,
) -> None:
    """Ask the model for a summary of the work so far; it replaces every turn after the task."""
    context_tokens = history.context_tokens()
    if history.compactions >= max_compactions:
        raise LimitsExceeded(
            f"context budget exhausted ({context_tokens} tokens) after {history.compactions} compaction(s)"
        )
    request = [*history.messages, {"role": "user", "content": COMPACTION_PROMPT}]
    turn = model.complete(request, toolbox.schemas)
    spend.add(turn.usage)
    summary = (turn.content or turn.reasoning or "").strip() or "(the model gave no summary)"
    on_event(CompactionEvent(context_tokens=context_tokens, summary=truncate_middle(summary, EVENT_TEXT_LIMIT)))
    history.replace(
        [
            history.messages[0],
            {
                "role": "user",
                "content": task_content(
                    f"{task_message}\n\n<compaction_summary>\nThe conversation so far was compacted. Summary "
                    f"of your progress:\n{summary}\n</compaction_summary>\nContinue the task from here.",
                    history.images,
                ),
            },
        ]
    )


def _run_tool(
    toolbox: Toolbox, call: ToolCall, ctx: ToolContext, on_event: EventSink, step: int, trajectory: Trajectory
) -> str:
    """Run one tool call; the text the model is shown (a failure's too), the result as data in the trajectory."""
    on_event(ToolCallEvent(step=step, id=call.id, name=call.name, arguments=call.arguments))
    started = time.monotonic()
    try:
        result = toolbox.execute(call, ctx)
    except ToolError as exc:
        result = ToolResult(output=f"<tool_error>{call.name}: {exc}</tool_error>", error=True)
    except SandboxError as exc:
        result = ToolResult(output=f"<tool_error>{call.name}: sandbox error: {exc}</tool_error>", error=True)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError) as exc:
        # A bug in a tool costs that call, not the task; the log keeps the traceback. (Not a bare Exception:
        # the run's own endings and the worker's time limit must pass through.)
        log.exception("tool %s failed unexpectedly", call.name)
        failure = f"<tool_error>{call.name}: internal error ({type(exc).__name__}: {exc})</tool_error>"
        result = ToolResult(output=failure, error=True)
    output = truncate_middle(result.output, ctx.output_limit)
    trajectory.tool_results.append({"id": call.id, "name": call.name, **result.model_dump(exclude={"output"})})
    on_event(
        ToolResultEvent(
            step=step,
            id=call.id,
            name=call.name,
            error=result.error,
            duration=round(time.monotonic() - started, 4),
            output=truncate_middle(output, EVENT_TEXT_LIMIT),
        )
    )
    return output


def _record_turn(on_event: EventSink, trajectory: Trajectory, step: int, turn: AssistantTurn, duration: float) -> None:
    usage = turn.usage.model_dump()
    trajectory.steps.append({"step": step, "usage": usage, "model_seconds": round(duration, 4)})
    event = ModelResponseEvent(
        step=step, finish_reason=turn.finish_reason, usage=TokenUsage.model_validate(usage), duration=round(duration, 4)
    )
    # A text the model did not give is left out of the event (as stored since the first version), not null.
    texts = {"content": turn.content, "reasoning": turn.reasoning}
    on_event(
        event.model_copy(update={name: truncate_middle(text, EVENT_TEXT_LIMIT) for name, text in texts.items() if text})
    )
