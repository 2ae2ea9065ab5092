"""A follow-up starts from its parent's patch; patches come as diff, diffstat, commit message and an mbox that
`git am` applies with a sensible author; the mirror cache fetches instead of cloning; credentials stay out."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlalchemy import Engine

import store.tasks
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.base import SandboxBackend
from store.engine import make_sessionmaker
from store.models import TaskState
from tests.conftest import git
from tests.worker.conftest import make_context, outcome, submit
from worker.mirrors import MirrorCache, git_env
from worker.pipeline import run_task

EDIT = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
TEST = ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "python3 -m unittest -q test_calc"})])


def finish(title: str) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments={
        "summary": f"{title}; the unit tests pass.", "pr_title": title, "pr_body": "Body."})])  # fmt: skip


def test_patch_formats_and_a_follow_up_that_builds_on_the_patch(
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    buggy_repo: Path,
    tmp_path: Path,
) -> None:
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    scripted_model.state.extend([EDIT, TEST, finish("Fix add")])
    parent = submit(sqlite_engine, str(buggy_repo))
    run_task(parent, context)
    task, patch, _ = outcome(sqlite_engine, parent)
    assert task.state == "succeeded" and task.attempt == 1
    assert patch.diffstat.split() == [
        "calc.py",
        "|",
        "2",
        "+-",
        "1",
        "file",
        "changed,",
        "1",
        "insertion(+),",
        "1",
        "deletion(-)",
    ]
    assert patch.commit_message.splitlines()[:3] == ["Fix add", "", "Fix add; the unit tests pass."]
    assert "- calc.py" in patch.commit_message
    assert "- `python3 -m unittest -q test_calc`: passed" in patch.commit_message
    assert patch.mbox.startswith("From ") and "From: Overnight <overnight@localhost>" in patch.mbox

    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(fresh))
    (tmp_path / "task.mbox").write_text(patch.mbox)
    git(fresh, "am", "-q", str(tmp_path / "task.mbox"))
    log = git(fresh, "log", "-1", "--format=%an <%ae>%n%s")
    assert log.splitlines() == ["Overnight <overnight@localhost>", "Fix add"]

    write = ScriptedTurn(tool_calls=[ScriptedCall(name="write_file", arguments={
        "file_path": "NOTES.md", "content": "add() adds.\n"})])  # fmt: skip
    see = ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "grep -c 'a + b' calc.py"})])
    scripted_model.state.extend([see, write, finish("Document add")])
    with make_sessionmaker(sqlite_engine).begin() as session:
        follow = store.tasks.create_task(session, repo=str(buggy_repo), ref=task.base_sha, instruction="document it",
                                   parent_id=parent, kind="follow-up").id  # fmt: skip
    run_task(follow, context)
    task, patch, events = outcome(sqlite_engine, follow)
    assert task.state == "succeeded", task.failure_reason
    seen = next(data for kind, data in events if kind == "tool_result")
    assert "stdout:\n1" in seen["output"]  # the follow-up started from the parent's fix
    assert (
        sorted(patch.diff.split("diff --git ")[1:]) and "NOTES.md" in patch.diff and "+    return a + b" in patch.diff
    )
    clone = tmp_path / "again"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(clone))
    (tmp_path / "follow.diff").write_text(patch.diff)
    git(clone, "apply", str(tmp_path / "follow.diff"))  # cumulative: it applies to the same base
    assert (clone / "NOTES.md").read_text() == "add() adds.\n"


def test_the_mirror_is_fetched_not_cloned_again_and_pruned_by_size(buggy_repo: Path, tmp_path: Path) -> None:
    cache = MirrorCache(tmp_path / "mirrors", max_bytes=1)
    url = str(buggy_repo)
    env = git_env(allow_local=True)
    with cache.locked(url) as path:
        cache.update(url, path, env)
    (buggy_repo / "new.txt").write_text("x\n")
    git(buggy_repo, "add", ".")
    git(buggy_repo, "commit", "-q", "-m", "more")
    inode = (path / "config").stat().st_ino
    with cache.locked(url) as again:
        mirror = cache.update(url, again, env)
    assert again == path and (path / "config").stat().st_ino == inode  # fetched in place
    assert mirror.git.rev_parse("HEAD") == git(buggy_repo, "rev-parse", "HEAD").strip()
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(other))
    with cache.locked(str(other)) as other_path:
        cache.update(str(other), other_path, env)
    assert cache.prune(keep=other_path) == [path] and not path.exists() and other_path.exists()


def test_credentials_reach_git_only_through_the_environment(buggy_repo: Path, tmp_path: Path) -> None:
    env = git_env(allow_local=False, credentials={"git.example.com": "s3cret-token"},
                  url="https://git.example.com/acme/private.git")  # fmt: skip
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example.com/.extraheader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("AUTHORIZATION: basic ")
    assert "s3cret-token" not in env["GIT_CONFIG_VALUE_0"]  # base64 of x-access-token:TOKEN
    elsewhere = git_env(allow_local=False, credentials={"git.example.com": "s3cret-token"},
                        url="https://github.com/acme/public.git")  # fmt: skip
    assert not [v for k, v in elsewhere.items() if k.startswith("GIT_CONFIG_") and "AUTHORIZATION" in v]
    assert "extraheader" not in " ".join(v for k, v in elsewhere.items() if k.startswith("GIT_CONFIG_KEY_"))
    shown = subprocess.run(["git", "config", "--get-regexp", "extraheader"], env=env, capture_output=True, text=True,
                           cwd=buggy_repo).stdout  # fmt: skip
    assert "AUTHORIZATION" in shown  # git sees it...
    assert "extraheader" not in (buggy_repo / ".git" / "config").read_text()  # ...but it is stored nowhere
    assert TaskState.preparing.value == "preparing"
