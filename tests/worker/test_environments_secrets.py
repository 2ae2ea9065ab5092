"""A task's environment through run_task, on both backends: its script, variables and secrets reach the set-up;
the secrets reach nothing after it — not the snapshot, the agent's sandbox, events, logs, trajectory or patch —
a set-up that leaves one behind fails, and tasks the environment does not trust get none."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

import store.environments
import store.events
import store.patches
import store.tasks
import store.users
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from overnight.environments import pattern_key
from overnight.secrets import SecretBox, new_key
from overnight.settings import SecretsSettings
from sandbox.base import SandboxBackend
from store.engine import make_sessionmaker
from tests.worker.conftest import make_context, outcome
from worker.pipeline import WorkerContext, run_task
from worker.task_environment import TaskEnvironment

TOKEN = "tok_" + secrets.token_hex(20)
KEY = "-----BEGIN KEY-----\n" + secrets.token_hex(24) + "\n" + secrets.token_hex(24) + "\n-----END KEY-----\n"
SECRETS = {"REGISTRY_TOKEN": TOKEN, "SIGNING_KEY": KEY}
SCRIPT = """set -e
echo "token length ${#REGISTRY_TOKEN}"
echo "the token is $REGISTRY_TOKEN"
printf '%s' "$SIGNING_KEY" > /tmp/signing.pem && grep -c . /tmp/signing.pem
python3 -m venv /opt/overnight/venv
echo "mode=$BUILD_MODE" > built.txt
echo "set-up done"
"""


def _halves(value: str) -> str:
    """Shell that rebuilds ``value`` at run time, so that the command's text never holds it whole."""
    middle = len(value) // 2
    return f"A='{value[:middle]}'; B='{value[middle:]}'"


LOOK = f"""{_halves(TOKEN)}; cat built.txt; echo "agent sees mode $BUILD_MODE"
echo "token in env: $(env | grep -cF "$A$B")"
echo "token in any environ: $(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -cF "$A$B")"
echo "token in files: $(grep -rlsF "$A$B" /workspace /opt/overnight /home /tmp /etc 2>/dev/null | wc -l)"
echo "key line in files: $(grep -rlsF '{KEY.splitlines()[1][:24]}''{KEY.splitlines()[1][24:]}' / 2>/dev/null \\
  --exclude-dir=proc --exclude-dir=sys | wc -l)"
"""


def _agent() -> list[ScriptedTurn]:
    edit = {"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
    finish = {"summary": "fixed", "pr_title": "Fix add", "pr_body": "Fixed add."}
    return [ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": LOOK})]),
            ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments=edit)]),
            ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments=finish)])]  # fmt: skip


def _environment(
    engine: Engine, repo: Path, key: str, *, script: str = SCRIPT, owners: list[str] | None = None
) -> None:
    pattern = pattern_key(str(repo))
    box = SecretBox.from_config(key, None)
    with make_sessionmaker(engine).begin() as session:
        env = store.environments.environment_by_pattern(session, pattern)
        env = env or store.environments.create_environment(session, pattern)
        store.environments.update_environment(env, {"setup_script": script, "variables": {"BUILD_MODE": "ci"},
                                                   "owners": owners or []})  # fmt: skip
        for name, value in SECRETS.items():
            store.environments.set_secret(session, env, name, box.seal(value, pattern=pattern, name=name))


def _user(engine: Engine, name: str, *, admin: bool = False) -> int:
    with make_sessionmaker(engine).begin() as session:
        store.users.create_token(session, name, admin=admin)
        user = store.users.list_tokens(session, user_name=name)[0].user
        return user.id


def _task(engine: Engine, repo: Path, user_id: int, **fields: Any) -> str:
    with make_sessionmaker(engine).begin() as session:
        return store.tasks.create_task(session, repo=str(repo), ref=None, instruction="fix the test", user_id=user_id,
                                       **fields).id  # fmt: skip


def _context(
    engine: Engine, backend: SandboxBackend, model: ScriptedModelServer, tmp_path: Path, key: str
) -> WorkerContext:
    return make_context(engine, backend, model.base_url, tmp_path, secrets=SecretsSettings(key=SecretStr(key)))


def _everything_kept(engine: Engine, task_id: str, tmp_path: Path) -> list[tuple[str, bytes]]:
    """Every place a task's data outlives it: events, trajectory, patch, task row, snapshot files on the host."""
    with make_sessionmaker(engine)() as session:
        task = store.tasks.get_task(session, task_id)
        events = [json.dumps(row.data) for row in store.events.list_events(session, task_id)]
        trajectory = store.patches.get_trajectory(session, task_id)
        patch = store.patches.get_patch(session, task_id)
        kept = [("events", "\n".join(events).encode()), ("task", repr(vars(task)).encode())]
        kept.append(("trajectory", json.dumps(trajectory.data if trajectory else {}).encode()))
        if patch is not None:
            kept.append(("patch", f"{patch.diff}{patch.mbox}{patch.body}{patch.commit_message}".encode()))
    for path in (tmp_path / "environments").rglob("*"):
        if path.is_file() and not path.is_symlink():
            kept.append((str(path), path.read_bytes()))
    return kept


def _secret_pieces() -> list[bytes]:
    return [TOKEN.encode(), KEY.encode(), *(line.encode() for line in KEY.splitlines() if "-----" not in line)]


def test_secrets_reach_the_set_up_and_nothing_after_it(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    key = new_key()
    _environment(sqlite_engine, buggy_repo, key)
    context = _context(sqlite_engine, backend, scripted_model, tmp_path, key)
    admin = _user(sqlite_engine, "root", admin=True)
    scripted_model.state.extend(_agent())
    task_id = _task(sqlite_engine, buggy_repo, admin)
    run_task(task_id, context)
    task, patch, events = outcome(sqlite_engine, task_id)
    assert task.state == "succeeded", task.failure_reason
    [setup] = [data for kind, data in events if kind == "setup"]
    assert setup["secrets"] == ["REGISTRY_TOKEN", "SIGNING_KEY"] and setup["pattern"] == pattern_key(str(buggy_repo))
    assert setup["script"] == "environment set-up script" and setup["exit_code"] == 0
    assert "token length 44" in setup["log"] and "the token is [secret REGISTRY_TOKEN]" in setup["log"]
    assert "set-up done" in setup["log"] and "\n4\n" in setup["log"], "the multi-line secret arrived whole"
    output = next(data["output"] for kind, data in events if kind == "tool_result")
    assert "mode=ci" in output and "agent sees mode ci" in output, "variables reach set-up and agent"
    for probe in ("token in env: 0", "token in any environ: 0", "token in files: 0", "key line in files: 0"):
        assert probe in output, output
    assert patch is not None and "calc.py" in patch.diff and "built.txt" not in patch.diff
    kept = [*_everything_kept(sqlite_engine, task_id, tmp_path), ("log", caplog.text.encode())]
    assert any(place.startswith(str(tmp_path / "environments")) for place, _ in kept), "the snapshot was read"
    for place, data in kept:
        for piece in _secret_pieces():
            assert piece not in data, f"a secret is in {place}"


def test_the_next_task_reuses_the_snapshot_until_a_secret_changes(
    sqlite_engine: Engine, docker_backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    key = new_key()
    _environment(sqlite_engine, buggy_repo, key)
    context = _context(sqlite_engine, docker_backend, scripted_model, tmp_path, key)
    admin = _user(sqlite_engine, "root", admin=True)
    cached = []
    for change_secret in (False, False, True):
        if change_secret:
            _environment(sqlite_engine, buggy_repo, key)  # the same values, set again: new versions
        scripted_model.state.extend(_agent())
        task_id = _task(sqlite_engine, buggy_repo, admin)
        run_task(task_id, context)
        task, _, events = outcome(sqlite_engine, task_id)
        assert task.state == "succeeded", task.failure_reason
        cached += [data["cached"] for kind, data in events if kind == "setup"]
    assert cached == [False, True, False]
    assert len(context.environments.entries()) == 2


@pytest.mark.parametrize(
    ("leave", "where"),
    [
        ('printf "//registry/:_authToken=%s\\n" "$REGISTRY_TOKEN" > ~/.npmrc', "/home/sandbox/.npmrc"),
        ('echo "$REGISTRY_TOKEN" > .env.local', "/workspace/.env.local"),
        (
            'mkdir -p /opt/overnight/etc && printf "%s" "$SIGNING_KEY" > /opt/overnight/etc/key',
            "/opt/overnight/etc/key",
        ),
        ('echo "$REGISTRY_TOKEN" > hidden && chmod 000 hidden', "/workspace/hidden"),
    ],
)
def test_a_set_up_that_leaves_a_secret_behind_fails_and_keeps_nothing(
    sqlite_engine: Engine, backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path, leave: str, where: str,
) -> None:  # fmt: skip
    key = new_key()
    _environment(sqlite_engine, buggy_repo, key, script=f"set -e\n{leave}\necho left it\n")
    context = _context(sqlite_engine, backend, scripted_model, tmp_path, key)
    task_id = _task(sqlite_engine, buggy_repo, _user(sqlite_engine, "root", admin=True))
    run_task(task_id, context)
    task, patch, _ = outcome(sqlite_engine, task_id)
    assert task.state == "failed" and where in task.failure_reason, task.failure_reason
    assert "secret" in task.failure_reason and TOKEN not in task.failure_reason
    assert patch is None and context.environments.entries() == [] and scripted_model.state.requests == []


def test_secrets_are_withheld_from_tasks_the_environment_does_not_trust(
    sqlite_engine: Engine, docker_backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    key = new_key()
    script = 'echo "has token: ${REGISTRY_TOKEN:+yes} mode=$BUILD_MODE"\n'
    _environment(sqlite_engine, buggy_repo, key, script=script, owners=["olivia"])
    context = _context(sqlite_engine, docker_backend, scripted_model, tmp_path, key)
    olivia, mallory = _user(sqlite_engine, "olivia"), _user(sqlite_engine, "mallory")
    parent = _task(sqlite_engine, buggy_repo, olivia)
    runs = {"owner": _task(sqlite_engine, buggy_repo, olivia), "stranger": _task(sqlite_engine, buggy_repo, mallory),
            "follow-up": _task(sqlite_engine, buggy_repo, olivia, parent_id=parent, kind="follow-up")}  # fmt: skip
    seen = {}
    for who, task_id in runs.items():
        scripted_model.state.extend(_agent())
        run_task(task_id, context)
        task, _, events = outcome(sqlite_engine, task_id)
        assert task.state == "succeeded", (who, task.failure_reason)
        seen[who] = next(data for kind, data in events if kind == "setup")
    assert "has token: yes mode=ci" in seen["owner"]["log"] and seen["owner"]["secrets_withheld"] is None
    stranger, follow_up = seen["stranger"], seen["follow-up"]
    assert stranger["cached"] is False, "a set-up without the secrets is not the owner's snapshot"
    assert "has token:  mode=ci" in stranger["log"] and "mallory is not an owner" in stranger["secrets_withheld"]
    assert follow_up["cached"] is True and "continues another" in follow_up["secrets_withheld"]
    assert len(context.environments.entries()) == 2, "one snapshot with the secrets, one without"


def test_a_set_up_network_of_none_takes_the_network_away(
    sqlite_engine: Engine, docker_backend: SandboxBackend, scripted_model: ScriptedModelServer, buggy_repo: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    key = new_key()
    _environment(sqlite_engine, buggy_repo, key, script="cat /sys/class/net/*/operstate | sort | uniq -c\n")
    with make_sessionmaker(sqlite_engine).begin() as session:
        env = store.environments.environment_by_pattern(session, pattern_key(str(buggy_repo)))
        assert env is not None
        store.environments.update_environment(env, {"setup_network": {"mode": "none"}})
    context = _context(sqlite_engine, docker_backend, scripted_model, tmp_path, key)
    context.setup.network = True
    scripted_model.state.extend(_agent())
    task_id = _task(sqlite_engine, buggy_repo, _user(sqlite_engine, "root", admin=True))
    run_task(task_id, context)
    _, _, events = outcome(sqlite_engine, task_id)
    [setup] = [data for kind, data in events if kind == "setup"]
    assert setup["network"] is False and "up" not in setup["log"].replace("unknown", ""), setup["log"]


def test_redaction_covers_whole_values_their_lines_and_the_part_beside_a_cut() -> None:
    env = TaskEnvironment(pattern="*", secrets=SECRETS)
    line = KEY.splitlines()[1]
    cut = f"head {TOKEN[:10]}\n[... 3 lines / 99 bytes omitted ...]\n{TOKEN[-12:]} tail"
    text = env.redact(f"a {TOKEN} b\n{KEY}\nonly {line}\n{cut}")
    for piece in _secret_pieces():
        assert piece.decode() not in text
    assert TOKEN[:10] not in text and TOKEN[-12:] not in text
    assert "a [secret REGISTRY_TOKEN] b" in text and "only [secret SIGNING_KEY]" in text
    assert (
        "[secret REGISTRY_TOKEN, cut]\n[... 3 lines" in text
        and "omitted ...]\n[secret REGISTRY_TOKEN, cut] tail" in text
    )
    assert repr(env).count(TOKEN) == 0
