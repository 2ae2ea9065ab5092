"""A task's events, one pydantic model per type: what the worker and the API write, the store keeps, and the
API, the CLI and the web app read.

An event is stored as its ``type`` (a column) and the rest of its fields (a JSON object, ``data``), only the
fields that were given: rows keep the shape they had before these models, and rows written by older versions
(which lacked some fields) still parse, the missing fields taking their defaults. Imports pydantic and the
standard library only, so the client can use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

TaskStateName = Literal["queued", "preparing", "running", "succeeded", "failed", "cancelled"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class StateEvent(_Event):
    """The task moved to another state."""

    type: Literal["state"] = "state"
    state: TaskStateName
    reason: str | None = None
    """Why it ended so (failed or cancelled); absent otherwise."""


class PhaseEvent(_Event):
    """The worker began a part of the task: ``clone`` (repo, ref), ``start-diff`` (files), ``setup``
    (base_sha), ``agent`` (environment). Rows of the first versions also hold ``sandbox`` (base_sha or
    environment)."""

    type: Literal["phase"] = "phase"
    phase: Literal["clone", "start-diff", "setup", "agent", "sandbox"]
    repo: str | None = None
    ref: str | None = None
    files: int | None = None
    """How many files the uploaded or parent diff changes."""
    base_sha: str | None = None
    """The commit the task starts from."""
    environment: str | None = None
    """The sandbox image or snapshot the agent starts in (null: the default image)."""


class SetupEvent(_Event):
    """The set-up script ran (``cached: false``: exit code, seconds, log) or its environment was reused
    (``cached: true``: environment)."""

    type: Literal["setup"] = "setup"
    script: str
    """The script's path in the repository, or "automatic set-up"."""
    auto: bool = False
    """The set-up was generated from the repository's files (absent in the first versions' rows)."""
    cached: bool
    environment: str | None = None
    """The reused environment's key."""
    network: bool | None = None
    commands: str | None = None
    """The generated script (automatic set-up only)."""
    exit_code: int | None = None
    timed_out: bool | None = None
    duration: float | None = None
    """Seconds the script ran (counted as sandbox time)."""
    log: str | None = None
    """The end of its output."""
    pattern: str | None = None
    """The environment (its repository pattern) whose script, variables and secrets the set-up got."""
    secrets: list[str] | None = None
    """Names of the environment's secrets the set-up was given (values never appear in events)."""
    secrets_withheld: str | None = None
    """Why the environment's secrets were not given to this task."""


class TokenUsage(_Event):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    """Of the prompt tokens, those the server had cached."""


class ModelResponseEvent(_Event):
    """The model answered one request."""

    type: Literal["model_response"] = "model_response"
    step: int
    finish_reason: str | None
    usage: TokenUsage
    duration: float | None = None
    """Seconds the call took (absent in the first versions' rows)."""
    content: str | None = None
    """What it said, truncated (absent when it said nothing)."""
    reasoning: str | None = None
    """Its reasoning, truncated (absent when there was none)."""


class FormatErrorEvent(_Event):
    """The model wrote a tool call as text instead of calling the tool; it is asked again."""

    type: Literal["format_error"] = "format_error"
    step: int
    content: str


class ToolCallEvent(_Event):
    """The model called a tool (the action)."""

    type: Literal["tool_call"] = "tool_call"
    step: int
    id: str
    name: str
    arguments: str
    """The JSON text of the arguments, as the model wrote it."""


class ToolResultEvent(_Event):
    """What the tool call with the same ``id`` gave back (the observation)."""

    type: Literal["tool_result"] = "tool_result"
    step: int
    id: str
    name: str
    error: bool
    """The call failed (the output says why)."""
    duration: float | None = None
    """Seconds the tool ran (counted as sandbox time; absent in the first versions' rows)."""
    output: str
    """What the model was shown, truncated."""


class CompactionEvent(_Event):
    """The history neared the context limit and was replaced by the model's summary of it."""

    type: Literal["compaction"] = "compaction"
    context_tokens: int
    summary: str


class FinishEvent(_Event):
    """The model called ``finish``."""

    type: Literal["finish"] = "finish"
    step: int
    pr_title: str
    summary: str


class PatchEvent(_Event):
    """The task's patch was stored."""

    type: Literal["patch"] = "patch"
    files_changed: int
    bytes: int
    complete: bool
    """False when the run ended early: the patch is what was done so far."""
    excluded: list[str] = Field(default_factory=list)
    """Paths the built-in exclude list kept out of the diff."""
    empty: bool | None = None
    """Nothing changed (absent in the first versions' rows)."""


class PublishEvent(_Event):
    """What became of the task on GitHub: its pull request was opened, publishing failed, or the first
    acknowledgement on the issue failed."""

    type: Literal["publish"] = "publish"
    state: Literal["published", "failed", "acknowledge-failed"]
    branch: str | None = None
    pull_request: str | None = None
    """The pull request's address."""
    reason: str | None = None


class RetryEvent(_Event):
    """The task was filed as a new attempt of an ended one."""

    type: Literal["retry"] = "retry"
    retry_of: str
    """The ended task's id."""


MessageMode = Literal["steer", "queue"]


class MessageDeliveredEvent(_Event):
    """A message the user sent while the task ran reached the model: a steer after the tool results of
    ``step``, a queued one when the model would have finished at ``step`` (the run went on instead)."""

    type: Literal["message_delivered"] = "message_delivered"
    message_id: int
    mode: MessageMode
    step: int
    author: str
    text: str
    """The message, truncated."""


class MessageDroppedEvent(_Event):
    """A message the user sent was never given to the model: the task ended first (the reason says how)."""

    type: Literal["message_dropped"] = "message_dropped"
    message_id: int
    mode: MessageMode
    reason: str


class NetworkBlockedEvent(_Event):
    """The egress proxy refused a request of the set-up or of the agent's commands: the host is not in the
    phase's network policy, the policy allows only GET/HEAD, or the address is a private one. Repeats of the
    same refusal within one command may be counted in one event (``count``)."""

    type: Literal["network_blocked"] = "network_blocked"
    host: str
    """The host the request was for (a name, or an address as it was asked for)."""
    port: int
    method: str
    """The HTTP method, or ``CONNECT`` for a tunnel (HTTPS)."""
    at: datetime
    """When the proxy refused it (the first of them when ``count`` > 1)."""
    phase: Literal["setup", "agent"]
    step: int | None = None
    """The agent's step whose command made the request (absent during set-up)."""
    reason: str
    """Why, for a person: "not in the allowlist", "read-only policy", "private address", "no network"."""
    count: int = Field(default=1, ge=1)
    """How many such requests this event stands for."""


class AttemptEndedEvent(_Event):
    """On a task run as best-of-N attempts: one of its attempt tasks ended (``attempt`` is K, from 1 to N)."""

    type: Literal["attempt_ended"] = "attempt_ended"
    attempt: int
    task_id: str
    """The attempt task's own id (its events, patch and trajectory are its own)."""
    state: TaskStateName
    reason: str | None = None
    """Why it ended so (failed or cancelled); absent otherwise."""


class AttemptsRankedEvent(_Event):
    """On a task run as best-of-N attempts: every attempt ended and they were ranked (tests passing, then the
    patch's size, then the attempt's number); the best one's patch is the task's."""

    type: Literal["attempts_ranked"] = "attempts_ranked"
    best: int | None
    """K of the best attempt; None when no attempt left a patch."""
    order: list[int]
    """Every attempt's K, best first."""


class ImageNote(BaseModel):
    """One image the model was given, by its SHA-256 (never its data)."""

    sha256: str
    media_type: str
    size: int
    source: Literal["upload", "url", "github"]


class ImageFailure(BaseModel):
    """An image of a GitHub issue that could not be fetched: the task went on without it."""

    url: str
    reason: str


class ImagesEvent(_Event):
    """The task's images, given to the model with its first message, and those of its GitHub issue that could
    not be fetched."""

    type: Literal["images"] = "images"
    images: list[ImageNote] = Field(default_factory=list)
    failed: list[ImageFailure] = Field(default_factory=list)


TaskEvent = Annotated[
    StateEvent
    | PhaseEvent
    | SetupEvent
    | ModelResponseEvent
    | FormatErrorEvent
    | ToolCallEvent
    | ToolResultEvent
    | CompactionEvent
    | FinishEvent
    | PatchEvent
    | PublishEvent
    | RetryEvent
    | MessageDeliveredEvent
    | MessageDroppedEvent
    | NetworkBlockedEvent
    | AttemptEndedEvent
    | AttemptsRankedEvent
    | ImagesEvent,
    Field(discriminator="type"),
]
TASK_EVENT: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)
EVENT_MODELS: dict[str, type[_Event]] = {
    model.model_fields["type"].default: model for model in get_args(get_args(TaskEvent)[0])
}
"""Each event type's model, by its type."""

EventSink = Callable[[TaskEvent], None]


class UnreadableEvent(ValueError):
    """A stored event that is none of these: an unknown type, or data its type does not allow (a row
    written by a newer version, or a broken one)."""


def event_data(event: TaskEvent) -> dict[str, Any]:
    """The event as stored in ``data``: the fields it was given, without its type."""
    return event.model_dump(mode="json", exclude={"type"}, exclude_unset=True)


def parse_event(type_: str, data: object, *, ignore_unknown_fields: bool = False) -> TaskEvent:
    """The event stored (or sent) as ``type_`` and ``data``; raises ``UnreadableEvent`` saying what is wrong.
    ``ignore_unknown_fields``: fields this version does not know are dropped, not refused (a client reading a
    newer server's events)."""
    if type_ not in EVENT_MODELS:
        raise UnreadableEvent(f"unknown event type {type_!r}")
    if not isinstance(data, Mapping):
        raise UnreadableEvent(f"{type_} event: its data is not a JSON object")
    if ignore_unknown_fields:
        data = {name: value for name, value in data.items() if name in EVENT_MODELS[type_].model_fields}
    try:
        return TASK_EVENT.validate_python({**data, "type": type_})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'data'}: {error['msg']}" for error in exc.errors()
        )
        raise UnreadableEvent(f"{type_} event: {problems}") from exc
