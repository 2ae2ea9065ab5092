"""Wire models of the API: what comes in (``TaskCreate``), what goes out (``TaskPublic``), and errors."""

from __future__ import annotations

import base64
import binascii
import operator
from datetime import datetime
from functools import reduce
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SerializerFunctionWrapHandler,
    computed_field,
    create_model,
    field_serializer,
    field_validator,
)

from api.attempt_models import AttemptsField, AttemptsPublicFields
from overnight.events import EVENT_MODELS
from overnight.network_report import BlockedSummary

MAX_INSTRUCTION_BYTES = 32 * 1024


def _check_instruction(value: str) -> str:
    if not value.strip():
        raise ValueError("instruction must not be empty")
    size = len(value.encode("utf-8"))
    if size > MAX_INSTRUCTION_BYTES:
        raise ValueError(f"instruction is {size} bytes; at most {MAX_INSTRUCTION_BYTES} are allowed")
    return value


# The schema says "not blank" (pattern) for clients and fuzzers; the validator says it in words.
Instruction = Annotated[
    str,
    Field(max_length=MAX_INSTRUCTION_BYTES, json_schema_extra={"pattern": r"\S"}),
    AfterValidator(_check_instruction),
]


MAX_LOCAL_CHANGES_BYTES = 10 * 2**20


class LocalChanges(BaseModel):
    """What the user has that the remote does not: unpushed commits and uncommitted files, as one binary git
    diff against ``ref`` (a commit the remote has)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["git-diff"] = "git-diff"
    encoding: Literal["base64"] = "base64"
    content: str = Field(max_length=MAX_LOCAL_CHANGES_BYTES * 4 // 3 + 4, description="Base64 of the diff.")

    def diff(self) -> str:
        try:
            data = base64.b64decode(self.content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("local_changes.content is not valid base64") from exc
        if len(data) > MAX_LOCAL_CHANGES_BYTES:
            raise ValueError(f"local changes are {len(data)} bytes; at most {MAX_LOCAL_CHANGES_BYTES} are accepted")
        return data.decode("utf-8", errors="replace")


class TaskCreate(AttemptsField):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "repo": "https://github.com/acme/widgets.git",
                    "ref": "main",
                    "instruction": "Fix the flaky test in tests/test_api.py",
                }
            ]
        },
    )

    repo: str = Field(
        max_length=2048, description="https:// or ssh URL, git@host:path, or (when allowed) a local path."
    )
    ref: str | None = Field(default=None, max_length=255, description="Branch, tag or commit; default branch if empty.")
    instruction: Instruction = Field(
        description=f"What to do, in plain language (at most {MAX_INSTRUCTION_BYTES} bytes)."
    )
    max_steps: int | None = Field(default=None, ge=1, le=1000, description="Model calls this task may make.")
    setup: str | None = Field(
        default=None,
        max_length=255,
        description="A set-up script of the repository (relative path) to run instead of .overnight/setup.sh.",
    )
    local_changes: LocalChanges | None = Field(
        default=None, description="Changes applied on top of `ref` before the agent starts (needs `ref`)."
    )
    image_urls: list[Annotated[str, Field(max_length=2048)]] = Field(
        default_factory=list,
        max_length=16,
        description="Addresses of images (PNG, JPEG, GIF or WebP) the server fetches now and gives the model with the "
        "task (public addresses only; files are uploaded as multipart/form-data instead).",
    )

    @field_validator("setup")
    @classmethod
    def _setup_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        parts = value.split("/")
        if value.startswith(("/", "-")) or ".." in parts or "" in parts or "\\" in value or "\x00" in value:
            raise ValueError("setup must be a relative path inside the repository (no '..', no leading '/' or '-')")
        return value

    @field_validator("ref")
    @classmethod
    def _empty_ref(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class FollowUpCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"instruction": "Now also add a test for the empty case"}]}
    )

    instruction: Instruction = Field(description=f"What to do next (at most {MAX_INSTRUCTION_BYTES} bytes).")
    max_steps: int | None = Field(default=None, ge=1, le=1000)


MAX_MESSAGE_BYTES = 16 * 1024


def _check_message(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be empty")
    size = len(value.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"text is {size} bytes; at most {MAX_MESSAGE_BYTES} are allowed")
    return value


class MessageCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"mode": "steer", "text": "Don't touch the migrations; use the helper."}]},
    )

    mode: Literal["steer", "queue"] = Field(
        default="steer",
        description="steer: given to the model at its next tool boundary; queue: held until it would finish, "
        "then the run goes on with it (same sandbox and history).",
    )
    text: Annotated[
        str,
        Field(max_length=MAX_MESSAGE_BYTES, json_schema_extra={"pattern": r"\S"}),
        AfterValidator(_check_message),
    ] = Field(description=f"The message (at most {MAX_MESSAGE_BYTES} bytes).")


class MessagePublic(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {"id": 7, "task_id": "3f2a9c1e7b4d5a60", "mode": "steer", "author": "alice",
                 "text": "Don't touch the migrations; use the helper.", "state": "delivered", "step": 12,
                 "reason": None, "created_at": "2026-11-30T01:03:00Z", "settled_at": "2026-11-30T01:03:04Z"},
            ]
        },
    )  # fmt: skip

    id: int
    task_id: str
    mode: Literal["steer", "queue"]
    author: str
    text: str
    state: Literal["pending", "delivered", "dropped"] = Field(
        description="pending; delivered (to the model, at `step`); dropped (the task ended first: `reason`)."
    )
    step: int | None = Field(description="The step after whose tool results the model got it (delivered only).")
    reason: str | None = Field(description="Why it was dropped (dropped only).")
    created_at: datetime
    settled_at: datetime | None = Field(description="When it was delivered or dropped.")


class MessageList(BaseModel):
    messages: list[MessagePublic] = Field(description="Oldest first.")


class PatchSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    title: str
    files_changed: int
    complete: bool


class GitHubPublic(BaseModel):
    """Where a task triggered from GitHub came from, and where its result went."""

    model_config = ConfigDict(from_attributes=True)

    repo: str = Field(description="OWNER/NAME.")
    number: int = Field(description="The issue or pull request that asked.")
    source: str = Field(description="label, issue-comment, pr-comment or review-comment.")
    branch: str
    pr_number: int | None
    pr_url: str | None
    publish_state: str = Field(description="pending, published, failed (the reason in publish_error) or skipped.")
    publish_error: str | None


class TaskPublic(AttemptsPublicFields):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "3f2a9c1e7b4d5a60", "kind": "task", "parent_id": None, "user_id": 1,
                    "repo": "https://github.com/acme/widgets.git", "ref": "main",
                    "instruction": "Fix the flaky test in tests/test_api.py", "state": "succeeded", "attempt": 1,
                    "failure_reason": None, "base_sha": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                    "max_steps": None, "setup": None, "steps": 14, "prompt_tokens": 412803,
                    "cached_tokens": 371220, "completion_tokens": 9214, "created_at": "2026-11-30T01:00:00Z",
                    "started_at": "2026-11-30T01:00:01Z", "finished_at": "2026-11-30T01:06:42Z",
                    "patch": {"title": "Make test_api's retry test deterministic", "files_changed": 1,
                              "complete": True},
                    "github": None,
                }
            ]
        },
    )  # fmt: skip

    id: str
    kind: str = Field(description="task, follow-up (starts from parent_id's patch) or attempt (one of attempt_of's).")
    parent_id: str | None
    user_id: int | None
    repo: str
    ref: str | None
    instruction: str
    state: str
    attempt: int = Field(description="Executions started (a redelivery after a worker crash starts another).")
    failure_reason: str | None
    base_sha: str | None
    max_steps: int | None
    setup: str | None
    steps: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    patch: PatchSummary | None = None
    github: GitHubPublic | None = None
    network_blocked: BlockedSummary | None = Field(
        default=None,
        description="The requests the egress proxy refused (network_blocked events), per host; null when none. "
        "Only GET /v1/tasks/{id} fills it in; lists leave it null.",
    )


class TaskList(BaseModel):
    tasks: list[TaskPublic]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page; null: last.")


class _EventRecord(BaseModel):
    # No return annotation: the schema of ``data`` stays its model's own.
    @field_serializer("data", mode="wrap", check_fields=False)
    def _as_stored(self, data: BaseModel, handler: SerializerFunctionWrapHandler):
        return data.model_dump(mode="json", exclude_unset=True)


def _event_record(model: type[BaseModel]) -> type[_EventRecord]:
    """The wire form of one event type: its sequence number, its type, its other fields (``data``, as
    stored: only those it was given) and when it was written."""
    fields: dict[str, Any] = {name: (info.annotation, info) for name, info in model.model_fields.items()}
    kind = fields.pop("type")[0]
    data = create_model(model.__name__, __config__=model.model_config, __doc__=model.__doc__, **fields)
    return create_model(
        f"{model.__name__}Record", __base__=_EventRecord, __doc__=model.__doc__, seq=(int, ...), type=(kind, ...),
        data=(data, ...), created_at=(datetime, ...),
    )  # fmt: skip


EVENT_RECORDS = {type_: _event_record(model) for type_, model in EVENT_MODELS.items()}


class UnreadableEventRecord(BaseModel):
    """A stored event this server cannot read: an unknown type or data its type does not allow (written by a
    newer version, or broken). Passed on as stored, with the reason."""

    seq: int
    type: str
    data: Any
    created_at: datetime
    error: str = Field(description="Why the event could not be read, e.g. unknown event type 'note'.")


if TYPE_CHECKING:
    _AnyEventRecord = _EventRecord | UnreadableEventRecord
else:
    _AnyEventRecord = (
        Annotated[reduce(operator.or_, EVENT_RECORDS.values()), Field(discriminator="type")] | UnreadableEventRecord
    )


class EventPublic(RootModel[_AnyEventRecord]):
    """One of the task's events (``overnight.events``), told apart by ``type``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"seq": 7, "type": "tool_call", "created_at": "2026-11-30T01:02:03Z",
                 "data": {"step": 3, "id": "call_3", "name": "bash",
                          "arguments": "{\"command\": \"pytest -x tests/test_api.py\"}"}},
                {"seq": 31, "type": "state", "created_at": "2026-11-30T01:06:42Z",
                 "data": {"state": "failed", "reason": "step budget exhausted (100 steps)"}},
            ]
        },
    )  # fmt: skip


class EventList(BaseModel):
    events: list[EventPublic]


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. task_not_found, validation_error.")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "task_not_found", "message": "no task '3f2a9c1e7b4d5a60'"}},
                {"error": {"code": "invalid_repo", "message": "file:// URLs are not allowed; give an absolute path",
                           "details": [{"field": "repo", "message": "file:// URLs are not allowed"}]}},
            ]
        }
    )  # fmt: skip

    error: ErrorBody


class TrajectoryPublic(BaseModel):
    task_id: str
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]] = Field(description="OpenAI-format messages; a compaction has overnight_compaction.")
    steps: list[dict[str, Any]] = Field(description="Per model call: usage (cached tokens included) and seconds.")


class PatchPublic(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {"task_id": "3f2a9c1e7b4d5a60", "base_sha": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                 "title": "Fix add() to add", "body": "`calc.add` returned `a - b`; it returns `a + b` now.",
                 "diff": "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
                         " def add(a, b):\n-    return a - b\n+    return a + b\n",
                 "files_changed": 1, "diffstat": " calc.py | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)",
                 "commit_message": "Fix add() to add\n\n...", "complete": True, "excluded": ["__pycache__/"],
                 "created_at": "2026-11-30T01:06:40Z", "no_changes": False},
            ]
        },
    )  # fmt: skip

    task_id: str
    base_sha: str
    title: str
    body: str
    diff: str = Field(
        description="Unified diff in git's format (binary files as git binary patches); empty: no changes."
    )
    files_changed: int
    diffstat: str
    commit_message: str = Field(description="Title, blank line, body: summary, files changed, tests the agent ran.")
    complete: bool = Field(description="False when the run ended early (budget, cancel): the diff so far.")
    excluded: list[str] = Field(description="Paths the built-in exclude list kept out (caches, dependencies, builds).")
    created_at: datetime

    @computed_field(description="True when the task found no changes needed: a valid outcome, the diff is empty.")  # type: ignore[prop-decorator]
    @property
    def no_changes(self) -> bool:
        return not self.diff
