"""One task never poisons another's environment (issue 21, item 4), through run_task on both backends: a set-up
snapshot is reused only by a task whose set-up would have read exactly the same tree, and a tree holding
uploaded or follow-up work only by that user's tasks. The attack: work that rewrites a script
.overnight/setup.sh runs (or adds an ignored one it runs) plants a ``git`` first on the PATH, which could
rewrite whatever git says (this one only announces itself on stderr)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine

import store.tasks
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.base import SandboxBackend
from store.engine import make_sessionmaker
from store.models import User
from tests.conftest import git
from tests.worker.conftest import make_context, outcome
from worker.pipeline import WorkerContext, run_task

SETUP = """set -e
mkdir -p /opt/overnight/venv/bin
if [ -f local/prepare.sh ]; then bash local/prepare.sh; fi
bash scripts/prepare.sh
"""
POISON = """cat > /opt/overnight/venv/bin/git <<'EOF'
#!/bin/sh
echo POISONED >&2
exec /usr/bin/git "$@"
EOF
chmod +x /opt/overnight/venv/bin/git
"""
WHICH_GIT = "command -v git; git --version"
FIXED = "def add(a, b):\n    return a + b\n"


def _bash(command: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command})])


FINISH = ScriptedTurn(
    tool_calls=[ScriptedCall(name="finish", arguments={"summary": "done", "pr_title": "Done", "pr_body": "Done."})]
)
FIX = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip


@pytest.fixture
def repo(buggy_repo: Path) -> Path:
    (buggy_repo / ".overnight").mkdir()
    (buggy_repo / ".overnight" / "setup.sh").write_text(SETUP)
    (buggy_repo / "scripts").mkdir()
    (buggy_repo / "scripts" / "prepare.sh").write_text("echo prepared\n")
    (buggy_repo / "scripts" / "noop.sh").write_text("true\n")
    (buggy_repo / ".gitignore").write_text("local/\n")
    git(buggy_repo, "add", ".")
    git(buggy_repo, "commit", "-q", "-m", "set-up that runs a script")
    return buggy_repo


def _diff(repo: Path, tmp_path: Path, path: str, content: str) -> str:
    """What `overnight run` uploads for a working copy where ``path`` holds ``content``."""
    copy = tmp_path / f"copy-{len(list(tmp_path.glob('copy-*')))}"
    git(tmp_path, "clone", "-q", str(repo), str(copy))
    (copy / path).parent.mkdir(parents=True, exist_ok=True)
    (copy / path).write_text(content)
    git(copy, "add", "--force", path)
    return git(copy, "diff", "--cached", "--binary", "HEAD")


def _users(engine: Engine, *names: str) -> list[int]:
    with make_sessionmaker(engine).begin() as session:
        users = [User(name=name) for name in names]
        session.add_all(users)
        session.flush()
        return [user.id for user in users]


def _run(context: WorkerContext, engine: Engine, repo: Path, user: int, **fields: object) -> tuple[str, str, bool]:
    """Run one task; its first tool output (``WHICH_GIT``), whether its set-up came from the cache, its id."""
    with make_sessionmaker(engine).begin() as session:
        task_id = store.tasks.create_task(session, repo=str(repo), ref=git(repo, "rev-parse", "HEAD").strip(),
                                    instruction="look", user_id=user, **fields).id  # type: ignore[arg-type]  # fmt: skip
    run_task(task_id, context)
    task, _, events = outcome(engine, task_id)
    setup = [data for kind, data in events if kind == "setup"]
    results = [data["output"] for kind, data in events if kind == "tool_result"]
    assert len(setup) == 1 and results, (task.failure_reason, setup)
    output = results[0]
    return task_id, output, setup[0]["cached"]


def test_uploaded_work_never_reaches_another_users_snapshot(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, repo: Path, tmp_path: Path
) -> None:
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path)
    alice, bob = _users(sqlite_engine, f"alice-{backend.name}", f"bob-{backend.name}")
    rewrite = _diff(repo, tmp_path, "scripts/prepare.sh", POISON)
    ignored = _diff(repo, tmp_path, "local/prepare.sh", POISON)  # ignored by .gitignore, run by the set-up
    for diff in (ignored, rewrite):
        scripted_model.state.extend([_bash(WHICH_GIT), FINISH])
        _, output, cached = _run(context, sqlite_engine, repo, alice, start_diff=diff)
        assert "POISONED" in output and not cached  # the attack works on the uploader's own task

    scripted_model.state.extend([_bash(WHICH_GIT), FIX, FINISH])
    task_id, output, cached = _run(context, sqlite_engine, repo, bob)
    assert not cached and "/usr/bin/git" in output and "POISONED" not in output
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    assert patch.files_changed == 1 and "+    return a + b" in patch.diff and "POISONED" not in patch.diff
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(repo), str(fresh))
    subprocess.run(["git", "apply", "-"], cwd=fresh, input=patch.diff, text=True, check=True)
    assert (fresh / "calc.py").read_text() == FIXED

    scripted_model.state.extend([_bash(WHICH_GIT), FINISH])  # the same upload by another user: a set-up of its own
    assert _run(context, sqlite_engine, repo, bob, start_diff=rewrite)[2] is False
    scripted_model.state.extend([_bash(WHICH_GIT), FINISH])  # by the same user again: the snapshot is reused
    assert _run(context, sqlite_engine, repo, alice, start_diff=rewrite)[2] is True


def test_a_follow_ups_model_written_diff_does_not_poison_the_next_task(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, repo: Path, tmp_path: Path
) -> None:
    context = make_context(sqlite_engine, backend, scripted_model.base_url, tmp_path)
    alice, bob = _users(sqlite_engine, f"alice-f-{backend.name}", f"bob-f-{backend.name}")
    # The parent's set-up is another script, so no snapshot of .overnight/setup.sh exists yet; its model
    # rewrites the script that set-up runs.
    write = f"cat > scripts/prepare.sh <<'END'\n{POISON}END"
    scripted_model.state.extend([_bash(write), FINISH])
    parent, _, _ = _run(context, sqlite_engine, repo, alice, setup="scripts/noop.sh")
    task, patch, _ = outcome(sqlite_engine, parent)
    assert task.state == "succeeded" and "scripts/prepare.sh" in patch.diff, task.failure_reason

    scripted_model.state.extend([_bash(WHICH_GIT), FINISH])
    _, output, cached = _run(context, sqlite_engine, repo, alice, parent_id=parent, kind="follow-up")
    assert "POISONED" in output and not cached  # the follow-up's own set-up ran its parent's script

    scripted_model.state.extend([_bash(WHICH_GIT), FIX, FINISH])
    task_id, output, cached = _run(context, sqlite_engine, repo, bob)
    assert not cached and "/usr/bin/git" in output and "POISONED" not in output
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded" and patch.files_changed == 1 and "POISONED" not in patch.diff
