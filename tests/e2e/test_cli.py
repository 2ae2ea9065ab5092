"""The real `overnight` CLI against a real server (`overnight up`): login, submit from a checkout with an
unpushed commit and a dirty file (the task sees both), logs, diff, apply, cancel, a wrong token, a server
that is down, exit codes, and the live rendering of `logs -f` in a terminal (tmux)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.conftest import git
from tests.e2e.conftest import cli, free_port, overnight_up

CHECK = "cat README.md; cat calc.py; cat notes.txt"
EDIT = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments={
    "file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"})])  # fmt: skip
FINISH = ScriptedTurn(content="Done.", tool_calls=[ScriptedCall(name="finish", arguments={
    "summary": "fixed add", "pr_title": "Fix add", "pr_body": "Fixed."})])  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str,
           docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:  # fmt: skip
    with overnight_up(tmp_path, scripted_model) as env:
        yield env


@pytest.fixture
def laptop(buggy_repo: Path, tmp_path: Path) -> Path:
    """A developer's clone with one unpushed commit and one uncommitted file."""
    clone = tmp_path / "laptop"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(clone))
    (clone / "README.md").write_text("calc\n")
    git(clone, "add", "README.md")
    git(clone, "commit", "-q", "-m", "unpushed: a readme")
    (clone / "notes.txt").write_text("dirty and untracked\n")
    return clone


def test_submit_from_a_checkout_ships_unpushed_work_then_logs_diff_and_apply(
    server: dict[str, str], scripted_model: ScriptedModelServer, laptop: Path, tmp_path: Path, buggy_repo: Path
) -> None:
    scripted_model.state.extend([ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": CHECK})]),
                                 EDIT, FINISH])  # fmt: skip
    result = cli(server, "submit", "Fix the failing test", "--wait", cwd=laptop)
    assert result.returncode == 0, result.stderr
    assert "uploading your local changes: 1 unpushed commit(s), 1 changed file(s)" in result.stderr
    task_id = result.stderr.split("task ", 1)[1].split()[0]
    seen = json.loads(cli(server, "logs", task_id, "--json").stdout)
    output = next(e["data"]["output"] for e in seen if e["type"] == "tool_result")
    assert "calc\n" in output and "dirty and untracked" in output  # the unpushed commit and the dirty file

    diff = cli(server, "diff", task_id).stdout  # piped: plain
    assert "\x1b[" not in diff and "+    return a + b" in diff
    assert "README.md" in diff and "notes.txt" in diff  # cumulative on the remote's commit
    shown = cli(server, "logs", task_id).stdout
    assert "step 2 ▸ edit" in shown and "● succeeded" in shown

    listed = json.loads(cli(server, "list", "--json").stdout)
    assert [t["id"] for t in listed] == [task_id]
    table = cli(server, "list").stdout
    assert task_id in table and "succeeded" in table

    fresh = tmp_path / "apply-here"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(fresh))
    applied = cli(server, "apply", task_id, "--json", cwd=fresh)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["branch"] == f"overnight/{task_id}"
    assert git(fresh, "log", "-1", "--format=%s").strip() == "Fix add"
    assert "a + b" in (fresh / "calc.py").read_text() and (fresh / "notes.txt").exists()
    (fresh / "calc.py").write_text("dirty\n")
    refused = cli(server, "apply", task_id, cwd=fresh)
    assert refused.returncode == 2 and "uncommitted changes" in refused.stderr

    ignored = cli(server, "submit", "again", "--no-local-changes", "--json", cwd=laptop)
    assert ignored.returncode == 0 and "ignoring local changes" in ignored.stderr
    cli(server, "cancel", json.loads(ignored.stdout)["id"])


def test_cancel_retry_follow_up_and_exit_codes(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path, tmp_path: Path
) -> None:
    scripted_model.state.extend(
        [ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "sleep 600"})])]
    )
    task = json.loads(cli(server, "submit", "slow", "--repo", str(buggy_repo), "--json").stdout)
    while len(scripted_model.state.requests) < 1:
        time.sleep(0.1)
    assert cli(server, "cancel", task["id"]).returncode == 0
    followed = cli(server, "logs", task["id"], "-f", timeout=60)
    assert (
        followed.returncode == 1 and "● cancelled" in followed.stdout + followed.stderr
    )  # 1: the task did not succeed
    retried = json.loads(cli(server, "retry", task["id"], "--json").stdout)
    assert retried["state"] == "queued" and retried["id"] != task["id"]
    cli(server, "cancel", retried["id"])
    refused = cli(server, "follow-up", "no-such-task", "more")
    assert refused.returncode == 2 and "no task 'no-such-task'" in refused.stderr
    assert cli(server, "show", "no-such-task").returncode == 2
    usage = cli(server, "submit")
    assert usage.returncode == 2  # typer: missing argument

    wrong = cli(server, "list", extra={"OVERNIGHT_TOKEN": "ovn_wrong"})
    assert (
        wrong.returncode == 3
        and wrong.stderr.strip() == "error: the bearer token is not valid (unauthorized, HTTP 401)"
    )
    down = cli(server, "list", extra={"OVERNIGHT_SERVER": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 3 and down.stderr.startswith("error: cannot reach the Overnight server at")


def test_login_checks_the_token_and_stores_it_private(server: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "laptop-config"
    env = {"OVERNIGHT_CONFIG_DIR": str(config)}
    bad = cli(server, "login", "--server", server["OVERNIGHT_SERVER"], "--token", "ovn_nope", extra=env)
    assert bad.returncode == 3 and not (config / "config.json").exists()
    good = cli(server, "login", "--server", server["OVERNIGHT_SERVER"], "--token", server["token"], "--json",
               extra=env)  # fmt: skip
    assert good.returncode == 0 and (config / "config.json").stat().st_mode & 0o777 == 0o600
    assert json.loads(good.stdout) == {"server": server["OVERNIGHT_SERVER"], "config": str(config / "config.json")}
    assert cli(server, "list", "--json", extra=env).returncode == 0
    out = cli(server, "logout", "--json", extra=env)
    assert out.returncode == 0 and json.loads(out.stdout)["logged_out"] and not (config / "config.json").exists()
    assert cli(server, "list", extra=env).returncode == 3  # no token any more


def test_server_commands_speak_json_too(server: dict[str, str]) -> None:
    server_env = {key: value for key, value in server.items() if key.startswith("OVERNIGHT_")}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}, **server_env}
    made = subprocess.run(["overnight", "token", "create", "--user", "bob", "--json"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["user"] == "bob" and token["token"].startswith("ovn_") and not token["admin"]
    assert cli(server, "list", "--json", extra={"OVERNIGHT_TOKEN": token["token"]}).stdout.strip() == "[]"
    migrated = subprocess.run(["overnight", "migrate", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0 and json.loads(migrated.stdout)["migrated"] is True


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by .ci/run")
def test_logs_follow_renders_in_a_terminal(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path, tmp_path: Path
) -> None:
    scripted_model.state.extend([ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "sleep 3"})]),
                                 EDIT, FINISH])  # fmt: skip
    task = json.loads(cli(server, "submit", "fix", "--repo", str(buggy_repo), "--json").stdout)
    session = f"overnight-{task['id']}"
    command = f"OVERNIGHT_CONFIG_DIR={server['OVERNIGHT_CONFIG_DIR']} overnight logs -f {task['id']}; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})  # fmt: skip
    try:
        screens = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            screens.append(screen)
            if "● succeeded" in screen:
                break
            time.sleep(0.3)
        assert "● succeeded" in screens[-1], screens[-1]
        final = screens[-1]
        assert "step 1 ▸ bash" in final and "step 2 ▸ edit" in final and "patch: 1 file(s)" in final
        assert any("· step" in screen and "tokens" in screen for screen in screens)  # the live status line
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
