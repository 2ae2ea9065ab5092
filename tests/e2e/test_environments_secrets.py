"""The whole stack (`overnight up`, its own key file, API and worker processes, both backends): a secret set
through the CLI reaches the set-up and is nowhere after it — not in the task's events, trajectory or patch as the
API serves them, not in the API's or the worker's log, not in the database file, not in the set-up snapshot."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import docker
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.e2e.conftest import cli, overnight_up

TOKEN = "tok_" + secrets.token_hex(20)
SCRIPT = """set -e
echo "token length ${#REGISTRY_TOKEN}; the token is $REGISTRY_TOKEN"
echo "mode=$BUILD_MODE" > built.txt
"""
HALVES = f"A='{TOKEN[:20]}'; B='{TOKEN[20:]}'"
LOOK = (f'{HALVES}; cat built.txt; echo "in env: $(env | grep -cF "$A$B")"; '
        'echo "in files: $(grep -rlsF "$A$B" /workspace /opt/overnight /home /tmp 2>/dev/null | wc -l)"')  # fmt: skip


def _agent() -> list[ScriptedTurn]:
    edit = {"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
    finish = {"summary": "fixed", "pr_title": "Fix add", "pr_body": "Fixed add."}
    return [ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": LOOK})]),
            ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments=edit)]),
            ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments=finish)])]  # fmt: skip


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()]


@pytest.mark.parametrize("sandbox", ["docker", "bwrap"])
def test_a_secret_set_through_the_cli_reaches_the_set_up_and_nothing_else(
    tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str, docker_client: docker.DockerClient,
    buggy_repo: Path, sandbox: str, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    script = tmp_path / "setup.sh"
    script.write_text(SCRIPT)
    extra = {"OVERNIGHT_SANDBOX_BACKEND": sandbox}
    if sandbox == "bwrap":
        extra["OVERNIGHT_SANDBOX_ROOTFS"] = str(request.getfixturevalue("sandbox_rootfs"))
    with overnight_up(tmp_path, scripted_model, extra=extra) as server:
        made = cli(server, "env", "set", str(buggy_repo), "--script", str(script), "--var", "BUILD_MODE=ci")
        assert made.returncode == 0, made.stderr
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
        added = subprocess.run(["overnight", "env", "secret", "set", str(buggy_repo), "REGISTRY_TOKEN"], input=TOKEN,
                               env=client_env | {"OVERNIGHT_CONFIG_DIR": server["OVERNIGHT_CONFIG_DIR"]},
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert added.returncode == 0, added.stderr
        scripted_model.state.extend(_agent())
        submitted = cli(server, "submit", "Fix the failing test", "--repo", str(buggy_repo), "--wait", "--json")
        assert submitted.returncode == 0, submitted.stderr
        task_id = json.loads(submitted.stdout)["id"]
        events = cli(server, "logs", task_id, "--json").stdout
        served = [events, cli(server, "diff", task_id).stdout, cli(server, "show", "--json", task_id).stdout,
                  cli(server, "env", "show", str(buggy_repo), "--json").stdout]  # fmt: skip
    setup = next(event["data"] for event in json.loads(events) if event["type"] == "setup")
    output = next(event["data"]["output"] for event in json.loads(events) if event["type"] == "tool_result")
    assert (
        setup["secrets"] == ["REGISTRY_TOKEN"]
        and "token length 44; the token is [secret REGISTRY_TOKEN]" in setup["log"]
    )
    assert "mode=ci" in output and "in env: 0" in output and "in files: 0" in output, output
    data = Path(server["OVERNIGHT_DATA_DIR"])
    key_file = data / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "`overnight up` made the key, private"
    snapshots = _files(data / "environments")
    assert snapshots, "the set-up was snapshotted"
    kept = [("served", text.encode()) for text in served] + [("up.log", Path(server["log"]).read_bytes())]
    kept += [(str(path), path.read_bytes()) for path in snapshots + _files(data) if path != key_file]
    for place, content in kept:
        assert TOKEN.encode() not in content, f"the secret is in {place}"
