"""A hostile patch or upload costs its task, never the worker (issue 21, item 6), through run_task: a binary
patch that inflates to gigabytes (uploaded, or made by the agent's commands) meets git's memory limit on the
worker, a patch past OVERNIGHT_MAX_PATCH_BYTES is refused unread, and the worker runs the next task."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

from sqlalchemy import Engine

import store.tasks
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.base import SandboxBackend
from store.engine import make_sessionmaker
from tests.conftest import git
from tests.worker.conftest import make_context, outcome, submit
from worker.hostgit import DataLimits
from worker.pipeline import WorkerContext, run_task

FINISH = ScriptedTurn(
    tool_calls=[ScriptedCall(name="finish", arguments={"summary": "done", "pr_title": "Done", "pr_body": "Done."})]
)


def _bash(command: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command})])


def deflated_zeros(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes (1 MiB blocks), made without compressing all of them: after a full
    flush every block deflates to the same bytes, and the Adler-32 of zeros is ((size mod 65521) << 16) | 1."""
    block = bytes(2**20)
    deflate = zlib.compressobj(9)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()[:-4] + struct.pack(">I", ((size % 65521) << 16) | 1)
    return first + again * (size // 2**20 - 1) + end


def binary_patch(path: str, size: int) -> str:
    """A git binary patch creating ``path`` as ``size`` zero bytes: about size / 800 bytes of text."""
    data = deflated_zeros(size)
    lines = []
    for start in range(0, len(data), 52):
        chunk = data[start : start + 52]
        width = chr(ord("A") + len(chunk) - 1) if len(chunk) <= 26 else chr(ord("a") + len(chunk) - 27)
        lines.append(width + base64.b85encode(chunk, pad=True).decode())
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex {'0' * 40}..{'1' * 40}\nGIT binary patch\n"
        f"literal {size}\n" + "\n".join(lines) + "\n\nliteral 0\nHcmV?d00001\n\n"
    )


def _fix_and_finish(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend([
        ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
            "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})]),
        FINISH,
    ])  # fmt: skip


def _next_task_succeeds(
    context: WorkerContext, engine: Engine, scripted_model: ScriptedModelServer, repo: Path
) -> None:
    _fix_and_finish(scripted_model)
    task_id = submit(engine, str(repo))
    run_task(task_id, context)
    task, patch, _ = outcome(engine, task_id)
    assert task.state == "succeeded" and patch.files_changed == 1, task.failure_reason


def test_an_upload_that_inflates_to_2_gib_fails_its_task_and_the_worker_goes_on(
    sqlite_engine: Engine, docker_backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    bomb = binary_patch("bomb.bin", 2 * 2**30)
    assert len(bomb) < 3 * 2**20  # within the API's 10 MiB upload limit
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    with make_sessionmaker(sqlite_engine).begin() as session:
        task_id = store.tasks.create_task(session, repo=str(buggy_repo), instruction="look", start_diff=bomb,
                                          ref=git(buggy_repo, "rev-parse", "HEAD").strip()).id  # fmt: skip
    run_task(task_id, context)
    task, _, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed"
    assert task.failure_reason == (
        "the uploaded local changes could not be applied: git ran out of its 1024 MiB memory limit on the worker "
        "(OVERNIGHT_GIT_MEMORY_LIMIT): fatal: Out of memory, malloc failed (tried to allocate 2147483648 bytes)"
    )
    assert scripted_model.state.requests == []
    _next_task_succeeds(context, sqlite_engine, scripted_model, buggy_repo)


def test_an_agent_made_patch_that_inflates_past_the_limit_fails_its_task(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path)
    context.limits = DataLimits(git_memory=128 * 2**20)
    # 150 MB of zeros: no disk used (sparse), about 150 kB of patch, 150 MB for git to inflate on the worker.
    scripted_model.state.extend([_bash("truncate -s 150M zeros.bin"), FINISH])
    task_id = submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, context)
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed" and patch is None
    assert task.failure_reason == (
        "the patch could not be checked: git ran out of its 128 MiB memory limit on the worker "
        "(OVERNIGHT_GIT_MEMORY_LIMIT): fatal: Out of memory, malloc failed (tried to allocate 157286400 bytes)"
    )
    _next_task_succeeds(context, sqlite_engine, scripted_model, buggy_repo)


def test_a_patch_past_the_size_limit_fails_its_task_unread(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path)
    context.limits = DataLimits(max_patch_bytes=64 * 1024)
    scripted_model.state.extend([_bash("seq 1 100000 > numbers.txt"), FINISH])
    task_id = submit(sqlite_engine, str(buggy_repo))
    run_task(task_id, context)
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed" and patch is None
    assert task.failure_reason is not None and task.failure_reason.startswith("the patch is ")
    assert task.failure_reason.endswith(" bytes, more than the 65536 a task may produce (OVERNIGHT_MAX_PATCH_BYTES)")
    size = int(task.failure_reason.split()[3])
    assert size > 588_895  # seq 1 100000 is 588,895 bytes, each line a "+" more in the diff
    _next_task_succeeds(context, sqlite_engine, scripted_model, buggy_repo)
