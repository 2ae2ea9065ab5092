"""Best-of-N attempts through the worker, with the scripted model (a script per attempt) and Docker sandboxes: each
attempt runs as a task of its own, then the ranking checks each patch in a fresh sandbox by the test command an
agent ran that passed, and the group takes the best patch — tests passing before size, size before number — while
an attempt that fails does not sink it, and all of them failing fails it with their reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

import store.bestof
import store.images
import store.tasks
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from overnight.images import TaskImageData, data_url
from sandbox.docker import DockerBackend
from store.engine import make_sessionmaker
from tests.images import png
from tests.worker.conftest import make_context, outcome
from worker.pipeline import run_task

TEST = "python3 -m unittest -q test_calc"


def _call(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)])


def _edit(new: str) -> ScriptedTurn:
    return _call("edit", file_path="calc.py", old_string="a - b", new_string=new)


def _finish(title: str) -> ScriptedTurn:
    return _call("finish", summary=title, pr_title=title, pr_body=title)


PASSING_BIG = [_edit("a + b"), _call("write_file", file_path="NOTES.md", content="add() adds.\n" * 40),
               _call("bash", command=TEST), _finish("Fix add, with notes")]  # fmt: skip
FAILING_SMALL = [_edit("a * b"), _call("bash", command=TEST), _finish("Multiply")]
BROKEN = [ScriptedTurn(status=400)]


def _submit(engine: Engine, repo: Path, attempts: int) -> tuple[str, list[str]]:
    with make_sessionmaker(engine).begin() as session:
        group = store.tasks.create_task(session, repo=str(repo), ref=None, instruction="fix add")
        return group.id, [task.id for task in store.bestof.add_attempts(session, group, attempts)]


def _run_all(engine: Engine, server: ScriptedModelServer, backend: DockerBackend, tmp_path: Path, repo: Path,
             scripts: list[list[ScriptedTurn]]) -> tuple[str, list[str]]:  # fmt: skip
    """Each attempt in turn (so attempt K takes script K), then the ranking."""
    server.state.scripts.extend(list(script) for script in scripts)
    group_id, attempt_ids = _submit(engine, repo, len(scripts))
    context = make_context(engine, backend, server.base_url, tmp_path)
    for task_id in attempt_ids:
        assert run_task(task_id, context) == "ran"
    assert run_task(group_id, context) == "ran"
    assert run_task(group_id, context) == "skipped"  # ranked once
    return group_id, attempt_ids


def test_the_attempt_whose_tests_pass_ranks_first_though_bigger_and_a_failed_one_does_not_sink_the_task(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    group_id, (first, second, third) = _run_all(sqlite_engine, scripted_model, docker_backend, tmp_path,
                                                buggy_repo, [FAILING_SMALL, PASSING_BIG, BROKEN])  # fmt: skip
    group, patch, events = outcome(sqlite_engine, group_id)
    _, passing_patch, _ = outcome(sqlite_engine, second)
    _, failing_patch, _ = outcome(sqlite_engine, first)
    assert group.state == "succeeded" and group.failure_reason is None
    assert passing_patch is not None and failing_patch is not None
    assert len(passing_patch.diff) > len(failing_patch.diff)
    assert patch is not None and patch.diff == passing_patch.diff and patch.title == "Fix add, with notes"
    ranking = group.ranking
    assert ranking["best"] == 2 and ranking["checked"] is True
    by_k = {entry["attempt"]: entry for entry in ranking["entries"]}
    assert [entry["attempt"] for entry in ranking["entries"]] == [2, 1, 3]
    assert by_k[2]["passed"] is True and by_k[2]["test_command"] == TEST and by_k[2]["exit_code"] == 0
    assert by_k[2]["reason"].startswith("tests pass; ") and by_k[2]["rank"] == 1
    # Its own test failed, so it is checked by the command that passed for attempt 2: on its patch, it fails.
    assert by_k[1]["passed"] is False and by_k[1]["exit_code"] != 0 and by_k[1]["reason"].startswith("tests fail")
    assert "AssertionError" in by_k[1]["output_tail"]
    assert by_k[3]["state"] == "failed" and by_k[3]["patch_bytes"] is None
    assert by_k[3]["reason"].startswith("no patch: ") and by_k[3]["task_id"] == third
    kinds = [(kind, data) for kind, data in events if kind in ("attempt_ended", "attempts_ranked")]
    assert sorted(data["attempt"] for kind, data in kinds if kind == "attempt_ended") == [1, 2, 3]
    assert kinds[-1] == ("attempts_ranked", {"best": 2, "order": [2, 1, 3]})
    assert [data["state"] for kind, data in events if kind == "state"] == ["queued", "running", "succeeded"]


def test_without_a_test_command_the_smaller_patch_wins_and_a_tie_goes_to_the_lower_number(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    big = [_edit("a + b  # fixed, at last, after a long look"), _finish("Big")]
    small = [_edit("a + b"), _finish("Small")]
    group_id, _ = _run_all(sqlite_engine, scripted_model, docker_backend, tmp_path, buggy_repo,
                           [big, small, list(small)])  # fmt: skip
    group, patch, _ = outcome(sqlite_engine, group_id)
    assert group.state == "succeeded" and patch is not None and patch.title == "Small"
    entries = group.ranking["entries"]
    assert [e["attempt"] for e in entries] == [2, 3, 1]
    assert all(e["passed"] is None and e["test_command"] is None for e in entries)
    assert entries[0]["reason"].startswith("not checked (no test command); ")


def test_all_attempts_failing_fails_the_task_with_their_reasons(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    group_id, _ = _run_all(sqlite_engine, scripted_model, docker_backend, tmp_path, buggy_repo,
                           [list(BROKEN), list(BROKEN)])  # fmt: skip
    group, patch, _ = outcome(sqlite_engine, group_id)
    assert group.state == "failed" and patch is None
    assert group.failure_reason.startswith("no attempt left a patch: attempt 1 failed (")
    assert "; attempt 2 failed (" in group.failure_reason
    assert group.ranking["best"] is None


class RecordingHooks:
    """Where a task came from, as the worker tells it (GitHub's hooks in production), written down."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def git_credentials(self, task_id: str, url: str) -> dict[str, str]:
        self.calls.append(("credentials", task_id, None))
        return {}

    def started(self, task_id: str) -> None:
        self.calls.append(("started", task_id, None))

    def finished(self, task_id: str, state: Any, reason: str | None, commit: Any) -> None:
        self.calls.append(("finished", task_id, (state.value, reason, commit)))


def test_where_the_task_came_from_hears_of_the_task_once_and_gets_the_best_patchs_commit(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Started once (by attempt 1) and finished once (after the ranking), both as the task; each attempt clones with
    the task's credentials; the commit handed over is the best patch's, made again on its base."""
    scripted_model.state.scripts.extend([list(FAILING_SMALL), list(PASSING_BIG)])
    group_id, attempt_ids = _submit(sqlite_engine, buggy_repo, 2)
    hooks = RecordingHooks()
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path, hooks=hooks)
    for task_id in [*attempt_ids, group_id]:
        assert run_task(task_id, context) == "ran"
    assert [(kind, task) for kind, task, _ in hooks.calls if kind == "started"] == [("started", group_id)]
    assert {task for kind, task, _ in hooks.calls if kind == "credentials"} == {group_id}
    finished = [(task, info) for kind, task, info in hooks.calls if kind == "finished"]
    assert len(finished) == 1 and finished[0][0] == group_id
    state, reason, commit = finished[0][1]
    group, patch, _ = outcome(sqlite_engine, group_id)
    assert (state, reason) == ("succeeded", None) == (group.state, group.failure_reason)
    assert commit is not None and patch is not None and patch.mbox == commit.mbox and "a + b" in patch.mbox


def test_every_attempt_is_given_the_images_of_its_task(
    sqlite_engine: Engine, docker_backend: DockerBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Images are stored with the task (the API and the webhook know no attempt tasks): each attempt's model gets
    them in its first message, as the task's own run would."""
    image = TaskImageData(media_type="image/png", data=png(), source="upload")
    scripted_model.state.scripts.extend([[_finish("One")], [_finish("Two")]])
    group_id, attempt_ids = _submit(sqlite_engine, buggy_repo, 2)
    with make_sessionmaker(sqlite_engine).begin() as session:
        store.images.add_images(session, group_id, [image])
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    for task_id in attempt_ids:
        assert run_task(task_id, context) == "ran"
    firsts = [body for body in scripted_model.state.requests if len(body["messages"]) == 2]
    assert len(firsts) == 2
    for body in firsts:
        parts = body["messages"][1]["content"]
        assert [part["image_url"]["url"] for part in parts if part["type"] == "image_url"] == [
            data_url("image/png", image.data)
        ]
