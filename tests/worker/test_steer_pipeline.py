"""Talking to a running task, whole tasks through run_task with the scripted model and Docker sandboxes: a
steer lands between two tool calls and the model sees it in its next request; a queued message turns the
model's finish into more work in the same sandbox, whose effect is in the same patch; a message the task
ends without delivering is dropped and listed so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

import store.messages
from agent.prompts import FINISH_DEFERRED
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.docker import DockerBackend
from store.engine import make_sessionmaker
from store.messages import MessageMode
from tests.worker.conftest import make_context, outcome, run_and_meanwhile, submit

SLOW = ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "sleep 3; echo looked"})])
FIX = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
NOTES = ScriptedTurn(tool_calls=[ScriptedCall(name="write_file", arguments={
    "file_path": "NOTES.md", "content": "add() adds.\n"})])  # fmt: skip


def _finish(title: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments={
        "summary": title, "pr_title": title, "pr_body": title})])  # fmt: skip


def _say(engine: Engine, task_id: str, text: str, mode: MessageMode = "steer") -> None:
    """What POST /v1/tasks/ID/messages does."""
    with make_sessionmaker(engine).begin() as session:
        store.messages.add_message(session, task_id, mode=mode, text=text, author="alice", user_id=None)


def _messages(engine: Engine, task_id: str) -> list[tuple[str, str, int | None, str | None]]:
    with make_sessionmaker(engine)() as session:
        return [(m.mode, m.state, m.step, m.reason) for m in store.messages.list_messages(session, task_id)]


def _run(engine: Engine, server: ScriptedModelServer, backend: DockerBackend, tmp_path: Path, repo: Path,
         turns: list[ScriptedTurn], text: str, mode: MessageMode, max_steps: int = 10) -> str:  # fmt: skip
    """The task, with ``text`` sent while its first tool call (a 3-second command) runs."""
    server.state.extend(turns)
    task_id = submit(engine, str(repo))
    context = make_context(engine, backend, server.base_url, tmp_path, max_steps=max_steps)
    asked = lambda: len(server.state.requests) >= 1  # noqa: E731
    run_and_meanwhile(task_id, context, asked, lambda: _say(engine, task_id, text, mode), settle=0)
    return task_id


def _contents(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(message["role"], str(message.get("content"))) for message in request["messages"]]


def test_a_steer_lands_after_the_tool_results_and_the_model_sees_it_in_its_next_request(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    task_id = _run(sqlite_engine, scripted_model, docker_backend, tmp_path, buggy_repo,
                   [SLOW, FIX, _finish("Fix add")], "Don't touch test_calc.py", "steer")  # fmt: skip
    task, patch, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded" and patch is not None and "+    return a + b" in patch.diff
    first, second, third = scripted_model.state.requests
    assert not any("Don't touch test_calc.py" in text for _, text in _contents(first))
    roles = [role for role, _ in _contents(second)]
    assert roles[-3:] == ["assistant", "tool", "user"]  # the steer follows the tool result of step 1
    assert "looked" in _contents(second)[-2][1]
    assert _contents(second)[-1][1].startswith(
        '<user_message from="alice">\nDon\'t touch test_calc.py\n</user_message>'
    )
    # Append-only: each request extends the one before, byte for byte, so the prefix cache stays warm.
    for before, after in ((first, second), (second, third)):
        assert after["messages"][: len(before["messages"])] == before["messages"]
    assert _messages(sqlite_engine, task_id) == [("steer", "delivered", 2, None)]
    kinds = [
        (kind, data.get("step"))
        for kind, data in events
        if kind in ("tool_result", "message_delivered", "model_response")
    ]
    assert kinds[:4] == [("model_response", 1), ("tool_result", 1), ("message_delivered", 2), ("model_response", 2)]


def test_a_queued_message_continues_the_run_in_the_same_sandbox_and_its_work_is_in_the_same_patch(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    task_id = _run(sqlite_engine, scripted_model, docker_backend, tmp_path, buggy_repo,
                   [SLOW, FIX, _finish("Fix add"), NOTES, _finish("Fix add and note it")],
                   "Then write NOTES.md saying what add() does", "queue")  # fmt: skip
    task, patch, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded" and task.steps == 5
    assert patch is not None and patch.complete and patch.title == "Fix add and note it"
    assert "+    return a + b" in patch.diff and "+add() adds." in patch.diff  # both parts of the work, one patch
    requests = scripted_model.state.requests
    assert len(requests) == 5
    assert not any("NOTES.md" in text for _, text in _contents(requests[2]))  # held until the model would finish
    tool, queued = _contents(requests[3])[-2:]
    assert tool == ("tool", FINISH_DEFERRED)
    assert queued[0] == "user" and "Then write NOTES.md saying what add() does" in queued[1]
    assert _messages(sqlite_engine, task_id) == [("queue", "delivered", 4, None)]
    assert [kind for kind, _ in events].count("finish") == 2


def test_a_message_the_task_ends_without_delivering_is_dropped_with_the_reason(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The model finishes on its last allowed step: the run ends as it finished (succeeded, not out of budget),
    and the queued message, which would need another step, is dropped and says why."""
    task_id = _run(sqlite_engine, scripted_model, docker_backend, tmp_path, buggy_repo,
                   [SLOW, _finish("Looked only")], "Then fix add() too", "queue", max_steps=2)  # fmt: skip
    task, patch, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded" and patch is not None and patch.title == "Looked only"
    assert len(scripted_model.state.requests) == 2
    reason = "the task ended before it was delivered: succeeded"
    assert _messages(sqlite_engine, task_id) == [("queue", "dropped", None, reason)]
    dropped = [data for kind, data in events if kind == "message_dropped"]
    assert len(dropped) == 1 and dropped[0]["reason"] == reason
    assert [kind for kind, _ in events][-2:] == ["state", "message_dropped"]
