"""Typed events through the store on SQLite and PostgreSQL: every type round-trips through its row unchanged,
rows in the shapes older versions wrote still parse, and a row that is no event says why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session

import store.events
import store.tasks
from overnight.events import (
    EVENT_MODELS,
    AttemptEndedEvent,
    AttemptsRankedEvent,
    CompactionEvent,
    FinishEvent,
    FormatErrorEvent,
    ImageFailure,
    ImageNote,
    ImagesEvent,
    MessageDeliveredEvent,
    MessageDroppedEvent,
    ModelResponseEvent,
    NetworkBlockedEvent,
    PatchEvent,
    PhaseEvent,
    PublishEvent,
    RetryEvent,
    SetupEvent,
    StateEvent,
    TaskEvent,
    TokenUsage,
    ToolCallEvent,
    ToolResultEvent,
    UnreadableEvent,
    event_data,
)
from store.models import TaskEvent as TaskEventRow

AT = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
USAGE = TokenUsage(prompt_tokens=1200, completion_tokens=80, cached_tokens=1024)
# Each event as today's emitters make it, and the ``data`` they stored before events were typed.
EXAMPLES: list[tuple[TaskEvent, dict[str, Any]]] = [
    (StateEvent(state="queued"), {"state": "queued"}),
    (StateEvent(state="failed", reason="budget"), {"state": "failed", "reason": "budget"}),
    (PhaseEvent(phase="clone", repo="https://x/a", ref=None), {"phase": "clone", "repo": "https://x/a", "ref": None}),
    (PhaseEvent(phase="start-diff", files=3), {"phase": "start-diff", "files": 3}),
    (PhaseEvent(phase="setup", base_sha="a" * 40), {"phase": "setup", "base_sha": "a" * 40}),
    (PhaseEvent(phase="agent", environment=None), {"phase": "agent", "environment": None}),
    (SetupEvent(script=".overnight/setup.sh", auto=False, cached=True, environment="k1"),
     {"script": ".overnight/setup.sh", "auto": False, "cached": True, "environment": "k1"}),
    (SetupEvent(script="automatic set-up", auto=True, cached=False, network=True, commands="pip install .",
                exit_code=0, timed_out=False, duration=12.5, log="ok"),
     {"script": "automatic set-up", "auto": True, "cached": False, "network": True, "commands": "pip install .",
      "exit_code": 0, "timed_out": False, "duration": 12.5, "log": "ok"}),
    (ModelResponseEvent(step=1, finish_reason="tool_calls", usage=USAGE, duration=0.75),
     {"step": 1, "finish_reason": "tool_calls", "usage": USAGE.model_dump(), "duration": 0.75}),
    (ModelResponseEvent(step=2, finish_reason=None, usage=USAGE, duration=1.0, content="Done.", reasoning="hm"),
     {"step": 2, "finish_reason": None, "usage": USAGE.model_dump(), "duration": 1.0, "content": "Done.",
      "reasoning": "hm"}),
    (FormatErrorEvent(step=4, content="[TOOL_CALLS]bash"), {"step": 4, "content": "[TOOL_CALLS]bash"}),
    (ToolCallEvent(step=3, id="c3", name="bash", arguments='{"command": "ls"}'),
     {"step": 3, "id": "c3", "name": "bash", "arguments": '{"command": "ls"}'}),
    (ToolResultEvent(step=3, id="c3", name="bash", error=False, duration=0.0123, output="a.py"),
     {"step": 3, "id": "c3", "name": "bash", "error": False, "duration": 0.0123, "output": "a.py"}),
    (CompactionEvent(context_tokens=200_500, summary="fixed"), {"context_tokens": 200_500, "summary": "fixed"}),
    (FinishEvent(step=9, pr_title="Fix add", summary="done"), {"step": 9, "pr_title": "Fix add", "summary": "done"}),
    (PatchEvent(files_changed=2, bytes=512, complete=True, excluded=["node_modules"], empty=False),
     {"files_changed": 2, "bytes": 512, "complete": True, "excluded": ["node_modules"], "empty": False}),
    (PublishEvent(state="published", branch="overnight/1", pull_request="https://x/pull/1"),
     {"state": "published", "branch": "overnight/1", "pull_request": "https://x/pull/1"}),
    (PublishEvent(state="failed", reason="push rejected"), {"state": "failed", "reason": "push rejected"}),
    (PublishEvent(state="acknowledge-failed", reason="403"), {"state": "acknowledge-failed", "reason": "403"}),
    (RetryEvent(retry_of="0123456789abcdef"), {"retry_of": "0123456789abcdef"}),
    (MessageDeliveredEvent(message_id=3, mode="steer", step=4, author="alice", text="use the helper"),
     {"message_id": 3, "mode": "steer", "step": 4, "author": "alice", "text": "use the helper"}),
    (MessageDroppedEvent(message_id=4, mode="queue", reason="the task ended (failed) before it was delivered"),
     {"message_id": 4, "mode": "queue", "reason": "the task ended (failed) before it was delivered"}),
    (NetworkBlockedEvent(host="registry.example.com", port=443, method="CONNECT", at=AT, phase="agent", step=5,
                         reason="not in the allowlist", count=3),
     {"host": "registry.example.com", "port": 443, "method": "CONNECT", "at": "2026-12-02T04:00:00Z",
      "phase": "agent", "step": 5, "reason": "not in the allowlist", "count": 3}),
    (NetworkBlockedEvent(host="10.0.0.1", port=80, method="GET", at=AT, phase="setup", reason="private address"),
     {"host": "10.0.0.1", "port": 80, "method": "GET", "at": "2026-12-02T04:00:00Z", "phase": "setup",
      "reason": "private address"}),
    (AttemptEndedEvent(attempt=2, task_id="0123456789abcdef", state="failed", reason="step budget exhausted"),
     {"attempt": 2, "task_id": "0123456789abcdef", "state": "failed", "reason": "step budget exhausted"}),
    (AttemptsRankedEvent(best=3, order=[3, 1, 2]), {"best": 3, "order": [3, 1, 2]}),
    (ImagesEvent(images=[ImageNote(sha256="b" * 64, media_type="image/png", size=68, source="upload")]),
     {"images": [{"sha256": "b" * 64, "media_type": "image/png", "size": 68, "source": "upload"}]}),
    (ImagesEvent(failed=[ImageFailure(url="https://github.com/user-attachments/assets/1", reason="HTTP 404")]),
     {"failed": [{"url": "https://github.com/user-attachments/assets/1", "reason": "HTTP 404"}]}),
]  # fmt: skip

# Shapes found in rows of earlier versions (read from the history of the emitters).
OLD_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("phase", {"phase": "agent"}),
    ("phase", {"phase": "sandbox", "base_sha": "a" * 40}),
    ("phase", {"phase": "sandbox", "environment": "overnight-env:k1"}),
    ("setup", {"script": ".overnight/setup.sh", "cached": True, "environment": "k1"}),
    ("setup", {"script": ".overnight/setup.sh", "cached": False, "network": False, "exit_code": 1, "timed_out": False,
               "duration": 3.2, "log": "boom"}),
    ("model_response", {"step": 1, "finish_reason": "stop", "usage": USAGE.model_dump(), "content": "hi"}),
    ("tool_result", {"step": 1, "id": "c1", "name": "bash", "error": True, "output": "<tool_error>x</tool_error>"}),
    ("patch", {"files_changed": 1, "bytes": 10, "complete": True}),
    ("patch", {"files_changed": 1, "bytes": 10, "complete": False, "excluded": []}),
]  # fmt: skip


def _task(session: Session) -> str:
    return store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="x").id


def _row(session: Session, task_id: str, type_: str, data: Any) -> TaskEventRow:
    """A row as any version may have written it, past the typed ``append_event``."""
    seq = len(store.events.list_events(session, task_id)) + 1
    row = TaskEventRow(task_id=task_id, seq=seq, type=type_, data=data)
    session.add(row)
    session.flush()
    return row


def test_the_examples_cover_every_event_type() -> None:
    assert {event.type for event, _ in EXAMPLES} == set(EVENT_MODELS)


@pytest.mark.parametrize(("event", "stored"), EXAMPLES, ids=[f"{e.type}-{i}" for i, (e, _) in enumerate(EXAMPLES)])
def test_each_event_is_stored_in_the_shape_rows_always_had_and_reads_back_the_same(
    session: Session, event: TaskEvent, stored: dict[str, Any]
) -> None:
    task_id = _task(session)
    store.events.append_event(session, task_id, event)
    session.commit()
    session.expire_all()
    row = store.events.list_events(session, task_id)[-1]
    assert (row.type, row.data) == (event.type, stored)
    read = store.events.read_event(row)
    assert read == event and type(read) is type(event)
    assert event_data(read) == stored


@pytest.mark.parametrize(("type_", "data"), OLD_ROWS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(OLD_ROWS)])
def test_rows_written_by_older_versions_still_parse_and_keep_their_shape(
    session: Session, type_: str, data: dict[str, Any]
) -> None:
    row = _row(session, _task(session), type_, data)
    event = store.events.read_event(row)
    assert event.type == type_ and event_data(event) == data


def test_an_old_tool_result_counts_no_sandbox_time_and_an_old_patch_no_exclusions(session: Session) -> None:
    task_id = _task(session)
    result = store.events.read_event(_row(session, task_id, "tool_result", dict(OLD_ROWS[6][1])))
    patch = store.events.read_event(_row(session, task_id, "patch", dict(OLD_ROWS[7][1])))
    assert isinstance(result, ToolResultEvent) and result.duration is None
    assert isinstance(patch, PatchEvent) and patch.excluded == [] and patch.empty is None


@pytest.mark.parametrize(
    ("type_", "data", "reason"),
    [
        ("note", {"n": 1}, "unknown event type 'note'"),
        ("state", ["queued"], "state event: its data is not a JSON object"),
        ("state", {"state": "paused"}, "state event: state: Input should be 'queued'"),
        ("tool_call", {"step": 1, "name": "bash", "arguments": "{}"}, "tool_call event: id: Field required"),
        ("patch", {"files_changed": "many", "bytes": 1, "complete": True}, "patch event: files_changed: Input should"),
        ("retry", {"retry_of": "t1", "by": "alice"}, "retry event: by: Extra inputs are not permitted"),
    ],
)
def test_a_row_that_is_no_event_raises_saying_why(session: Session, type_: str, data: Any, reason: str) -> None:
    row = _row(session, _task(session), type_, data)
    with pytest.raises(UnreadableEvent) as raised:
        store.events.read_event(row)
    assert str(raised.value).startswith(reason)
