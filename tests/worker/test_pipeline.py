"""run_task end to end without Celery: every way a task ends leaves a final state and a readable reason."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

import store.attempts
import store.patches
import store.tasks
from agent.client import ChatClient, LLMConfig
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.base import SandboxSpec
from sandbox.docker import DockerBackend
from store.attempts import Superseded
from store.engine import make_sessionmaker
from tests.conftest import git
from tests.worker.conftest import make_context, outcome, run_and_meanwhile, submit
from worker.attempt import Attempt
from worker.pipeline import run_task


def _context(engine: Engine, backend: DockerBackend, base_url: str, tmp_path: Path, max_steps: int = 10):
    return make_context(engine, backend, base_url, tmp_path, max_steps=max_steps)


def _submit(engine: Engine, repo: str, ref: str | None = None) -> str:
    return submit(engine, repo, ref)


def _task(engine: Engine, task_id: str):
    task, patch, _ = outcome(engine, task_id)
    return task, patch


def test_step_budget_exhausted_fails_and_keeps_the_partial_diff(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    scripted_model.state.extend(
        [
            ScriptedTurn(
                tool_calls=[
                    ScriptedCall(
                        name="edit", arguments={"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
                    )
                ]
            ),
            ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "echo still thinking"})]),
        ]
    )
    task_id = _submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path, max_steps=2))
    task, patch = _task(sqlite_engine, task_id)
    assert task.state == "failed"
    assert task.failure_reason == "step budget exhausted (2 steps) before the model called finish"
    assert patch is not None and not patch.complete and "+    return a + b" in patch.diff
    assert docker_client.containers.list(all=True, filters={"label": f"dev.overnight.task={task_id}"}) == []
    assert list((tmp_path / "workspaces").iterdir()) == []  # the workspace and its owner sidecar are gone
    with make_sessionmaker(sqlite_engine)() as session:
        trajectory = store.patches.get_trajectory(session, task_id)
    assert trajectory is not None and len(trajectory.data["steps"]) == 2
    assert trajectory.data["messages"][-1]["role"] == "tool"


def test_unreachable_model_endpoint_fails_with_that_reason(
    sqlite_engine: Engine, docker_backend: DockerBackend, buggy_repo: Path, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    task_id = _submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, _context(sqlite_engine, docker_backend, dead, tmp_path))
    task, _ = _task(sqlite_engine, task_id)
    assert task.state == "failed" and task.failure_reason.startswith(f"model endpoint unreachable at {dead}")
    assert "Traceback" not in task.failure_reason


@pytest.mark.parametrize(
    ("repo", "reason"),
    [
        ("https://127.0.0.1:9/nothing.git", "clone failed: fatal: unable to access"),
        ("/no/such/repository", "clone failed: /no/such/repository does not exist"),
        ("file:///etc", "bad repository: file:// URLs are not allowed"),
    ],
)
def test_clone_failures_are_readable(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    repo: str,
    reason: str,
    scripted_model: ScriptedModelServer,
) -> None:
    task_id = _submit(sqlite_engine, repo)
    run_task(task_id, _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path))
    task, _ = _task(sqlite_engine, task_id)
    assert task.state == "failed" and task.failure_reason.startswith(reason), task.failure_reason
    assert scripted_model.state.requests == []


def test_a_task_that_is_no_longer_queued_is_left_alone(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
) -> None:
    task_id = _submit(sqlite_engine, str(buggy_repo))
    with make_sessionmaker(sqlite_engine).begin() as session:
        store.tasks.request_cancel(session, task_id)
    run_task(task_id, _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path))
    task, _ = _task(sqlite_engine, task_id)
    assert task.state == "cancelled" and scripted_model.state.requests == []


def test_cancel_requested_while_running_stops_at_the_next_step(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
) -> None:
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)

    class CancelAfterFirstTurn:
        def __init__(self) -> None:
            self.inner = ChatClient(LLMConfig(base_url=scripted_model.base_url, model="mistral-medium-3.5", retries=0))

        def history_message(self, turn):
            return self.inner.history_message(turn)

        def complete(self, messages, tools):
            turn = self.inner.complete(messages, tools)
            with sessions.begin() as session:
                store.tasks.request_cancel(session, task_id)
            return turn

    scripted_model.state.extend(
        [
            ScriptedTurn(
                tool_calls=[
                    ScriptedCall(
                        name="edit", arguments={"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
                    )
                ]
            )
        ]
        * 2
    )
    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    context.model_factory = lambda _task_id: CancelAfterFirstTurn()
    run_task(task_id, context)
    task, patch = _task(sqlite_engine, task_id)
    assert task.state == "cancelled" and task.failure_reason == "cancelled by user"
    assert len(scripted_model.state.requests) == 1
    assert patch is not None and not patch.complete and "+    return a + b" in patch.diff


def test_cancel_during_set_up_kills_it_and_ends_cancelled_without_calling_the_model(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
) -> None:
    (buggy_repo / ".overnight").mkdir()
    (buggy_repo / ".overnight" / "setup.sh").write_text("echo setting up; sleep 120\n")
    git(buggy_repo, "add", ".")
    git(buggy_repo, "commit", "-qm", "a slow set-up")
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)

    def setting_up() -> bool:
        return any(
            kind == "phase" and data.get("phase") == "setup" for kind, data in outcome(sqlite_engine, task_id)[2]
        )

    def cancel() -> None:
        with sessions.begin() as session:
            store.tasks.request_cancel(session, task_id)

    started = time.monotonic()
    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    run_and_meanwhile(task_id, context, setting_up, cancel, settle=1)  # the set-up command is running then
    task, _ = _task(sqlite_engine, task_id)
    assert task.state == "cancelled" and task.failure_reason == "cancelled by user"
    assert time.monotonic() - started < 60  # not the set-up's 120 s
    assert scripted_model.state.requests == []


def test_a_cancel_found_while_the_set_up_sandbox_starts_keeps_the_set_up_from_running(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
) -> None:
    """The watch finds the cancel while the set-up's sandbox is still starting: there is no command to kill
    yet, and the set-up's must not start (it ran its full 120 s when the start was slow)."""
    (buggy_repo / ".overnight").mkdir()
    (buggy_repo / ".overnight" / "setup.sh").write_text("echo setting up; sleep 120\n")
    git(buggy_repo, "add", ".")
    git(buggy_repo, "commit", "-qm", "a slow set-up")
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)

    class CancelledWhileStarting:
        """The backend, but the set-up's sandbox takes long enough to start for the watch to find a cancel."""

        def __getattr__(self, name: str) -> object:
            return getattr(docker_backend, name)

        def start(self, spec: SandboxSpec) -> object:
            if spec.purpose == "setup":
                with sessions.begin() as session:
                    store.tasks.request_cancel(session, task_id)
                time.sleep(3)  # several heartbeats
            return docker_backend.start(spec)

    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    context.backend = CancelledWhileStarting()  # type: ignore[assignment]
    started = time.monotonic()
    run_task(task_id, context)
    task, _ = _task(sqlite_engine, task_id)
    assert task.state == "cancelled" and task.failure_reason == "cancelled by user"
    assert time.monotonic() - started < 60  # not the set-up's 120 s
    assert scripted_model.state.requests == []


def test_cancel_while_the_model_is_still_answering_ends_the_task_in_seconds(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
) -> None:
    scripted_model.state.extend([ScriptedTurn(content="a long think", delay=60)])
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)

    def cancel() -> None:
        with sessions.begin() as session:
            store.tasks.request_cancel(session, task_id)

    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    run_and_meanwhile(task_id, context, lambda: bool(scripted_model.state.requests), cancel, settle=0.5)
    task, patch = _task(sqlite_engine, task_id)
    assert task.state == "cancelled" and task.failure_reason == "cancelled by user"
    assert (task.finished_at - task.started_at).total_seconds() < 30  # not the model's 60 s
    assert patch is not None and not patch.complete  # the (empty) partial diff is kept, as for any cancel


def test_the_trajectory_is_readable_while_the_task_runs(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
) -> None:
    scripted_model.state.extend([
        ScriptedTurn(tool_calls=[ScriptedCall(name="read_file", arguments={"file_path": "calc.py"})]),
        ScriptedTurn(content="thinking hard", delay=4),
        ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments={"summary": "s", "pr_title": "t",
                                                                         "pr_body": "b"})]),
    ])  # fmt: skip
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)
    seen_while_running: list[int] = []

    def look() -> None:  # while the second call is being answered (slowly)
        with sessions() as session:
            task, stored = store.tasks.get_task(session, task_id), store.patches.get_trajectory(session, task_id)
            if task is not None and task.state == "running" and stored is not None:
                seen_while_running.append(len(stored.data["messages"]))

    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    run_and_meanwhile(task_id, context, lambda: len(scripted_model.state.requests) >= 2, look, settle=0.5)
    # system, user, the read_file call and its result: stored after the first step, while the task ran
    assert seen_while_running == [4]
    with sessions() as session:
        final = store.patches.get_trajectory(session, task_id)
        assert final is not None and len(final.data["messages"]) > 4


def test_the_task_time_limit_fails_the_task_with_that_reason(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    docker_client: docker.DockerClient,
) -> None:
    """Celery raises SoftTimeLimitExceeded inside the task when its soft time limit passes (here: mid-model-call)."""
    from celery.exceptions import SoftTimeLimitExceeded

    class TimesOut:
        def history_message(self, turn):  # pragma: no cover - never reached
            raise AssertionError

        def complete(self, messages, tools):
            raise SoftTimeLimitExceeded()

    task_id = _submit(sqlite_engine, str(buggy_repo))
    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    context.model_factory = lambda _task_id: TimesOut()
    run_task(task_id, context)
    task, _ = _task(sqlite_engine, task_id)
    assert task.state == "failed" and task.failure_reason == "task time limit exceeded"
    assert docker_client.containers.list(all=True, filters={"label": f"dev.overnight.task={task_id}"}) == []


EDIT_CALC = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
SLEEP = ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "sleep 600"})])


def test_an_unexpected_error_while_a_cancelled_run_ends_still_ends_it_cancelled(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    docker_client: docker.DockerClient,
) -> None:
    """The repository's mirror vanishes under the task (an operator cleaning the disk), so keeping the
    cancelled run's partial diff fails with an error of git's, not one of the expected kinds."""
    scripted_model.state.extend([EDIT_CALC, SLEEP])
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)

    def vanish_and_cancel() -> None:
        for mirror in (tmp_path / "mirrors").glob("*.git"):
            shutil.rmtree(mirror)
        with sessions.begin() as session:
            store.tasks.request_cancel(session, task_id)

    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    run_and_meanwhile(task_id, context, lambda: len(scripted_model.state.requests) >= 2, vanish_and_cancel, settle=1)
    task, patch = _task(sqlite_engine, task_id)
    assert task.state == "cancelled" and task.failure_reason == "cancelled by user"
    assert patch is None  # it could not be made without the mirror; the task ended all the same
    assert docker_client.containers.list(all=True, filters={"label": f"dev.overnight.task={task_id}"}) == []
    assert list((tmp_path / "workspaces").iterdir()) == []


def test_a_superseded_attempt_stops_itself_and_its_writes_are_refused(
    sqlite_engine: Engine,
    docker_backend: DockerBackend,
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    docker_client: docker.DockerClient,
) -> None:
    scripted_model.state.extend([SLEEP])
    task_id = _submit(sqlite_engine, str(buggy_repo))
    sessions = make_sessionmaker(sqlite_engine)
    handed_over: dict[str, object] = {}

    def give_it_to_another_worker() -> None:
        """What another worker's reconciler does when this worker's heartbeat looks stale (a long pause, a
        skewed clock), and the claim of that other worker."""
        with sessions.begin() as session:
            task = store.tasks.get_task(session, task_id)
            assert task is not None
            assert store.attempts.requeue_or_fail(session, task, max_attempts=3, reason="stopped beating") == "requeued"
            handed_over["attempt"] = store.attempts.claim(session, task_id, worker="other", max_active_per_user=4)
        handed_over["events"] = len(outcome(sqlite_engine, task_id)[2])

    context = _context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    asked = lambda: bool(scripted_model.state.requests)  # noqa: E731 - the sleep is running a second later
    run_and_meanwhile(task_id, context, asked, give_it_to_another_worker, settle=1)
    task, patch, events = outcome(sqlite_engine, task_id)
    assert handed_over["attempt"] == 2 and task.attempt == 2
    assert task.state == "preparing" and task.worker == "other"  # the new attempt's, untouched
    assert len(events) == handed_over["events"]  # attempt 1 wrote nothing more: no tool result, no end
    assert patch is None and len(scripted_model.state.requests) == 1
    assert docker_client.containers.list(all=True, filters={"label": f"dev.overnight.task={task_id}"}) == []
    assert list((tmp_path / "workspaces").iterdir()) == []
    old = Attempt(sessions, task_id, 1, retry_seconds=0)
    with pytest.raises(Superseded):
        old.write(lambda session: store.tasks.add_sandbox_seconds(session, task_id, 1))
