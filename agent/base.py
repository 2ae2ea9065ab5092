"""What the loop needs from a model, the messages that cross that boundary, and how a run ends."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class AgentError(Exception):
    """Root of every agent failure."""


class ModelUnavailableError(AgentError, ConnectionError):
    """The endpoint could not be reached or kept failing after the retries."""


class ModelResponseError(AgentError, ValueError):
    """The endpoint answered, but not with something the loop can use (4xx, bad stream, cut-off output)."""


class RunEnded(AgentError):
    """Raised inside the loop to end a run; caught in one place."""


class Submitted(RunEnded):
    def __init__(self, *, summary: str, pr_title: str, pr_body: str) -> None:
        super().__init__(pr_title)
        self.summary = summary
        self.pr_title = pr_title
        self.pr_body = pr_body


class LimitsExceeded(RunEnded):
    """A budget ran out; the message is the reason a person reads."""


class Cancelled(RunEnded):
    """The user cancelled the task."""


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str = Field(description="The JSON text of the arguments, exactly as the model produced it.")
    problem: str | None = Field(
        default=None,
        description="Why the call cannot run, found when the turn was read (a name or arguments vLLM would refuse "
        "in the history, replaced by valid ones); the call then becomes a tool error that says so.",
    )

    def to_message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class AssistantTurn(BaseModel):
    model_config = ConfigDict(frozen=True)

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: Literal["stop", "tool_calls", "length"] | str | None = None
    usage: Usage = Field(default_factory=Usage)

    def to_message(self) -> dict[str, Any]:
        """The assistant message as it goes back into the history; reasoning is returned verbatim."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.reasoning:
            message["reasoning"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [call.to_message() for call in self.tool_calls]
        return message


class UserMessage(BaseModel):
    """A message the user sent while the task runs."""

    model_config = ConfigDict(frozen=True)

    text: str
    author: str


class Mailbox(Protocol):
    """Where the loop picks up what the user sent while it runs (the worker's reads the task's messages).
    Each message is handed out once, and counts as delivered at the step whose request first carries it."""

    def take_steers(self, step: int) -> list[UserMessage]:
        """The steers not yet handed out, oldest first, now delivered at ``step``."""
        ...

    def take_queued(self, step: int) -> list[UserMessage]:
        """The queued messages not yet handed out, oldest first, now delivered at ``step``."""
        ...


class NoMail:
    """The mailbox of a run nobody can talk to (benchmarks, tests of the loop alone)."""

    def take_steers(self, step: int) -> list[UserMessage]:
        return []

    def take_queued(self, step: int) -> list[UserMessage]:
        return []


class ModelClient(Protocol):
    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        """One chat-completion request; raises ModelUnavailableError or ModelResponseError."""
        ...

    def history_message(self, turn: AssistantTurn) -> dict[str, Any]:
        """``turn`` as an assistant message for the next request (the provider's form of reasoning)."""
        ...
