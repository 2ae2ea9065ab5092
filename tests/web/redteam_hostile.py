"""The red team's hostile data (issue 16): strings that show when they become markup or script, and a task that
carries them in every field the pages show — its row, its GitHub link, every event type (and types no renderer
knows), its patch and a diff made by git from hostile file names and contents.

A hostile string, wherever it lands, tries every way out of its context: element text (``<b>``, ``<img
onerror>``, ``<script>``), a double- or single-quoted attribute, the page's JSON ``<script>`` block, an SVG
``onload``, a ``javascript:`` link. Each is labelled, so a failure names the field it came through; what a page
made of them is read by ``tests.web.redteam.probe``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import store.patches
import store.tasks
import store.users
from store.models import GitHubLink, TaskState, utcnow
from store.models import TaskEvent as TaskEventRow

INJECTED = "h9-injected"
"""The class of the elements hostile strings make: one in a page means data became markup."""


def hostile(label: str) -> str:
    """A string that turns into markup and runs script (pushing ``label``) in any context that does not treat
    it as text."""
    push = f"__h9pwn.push('{label}')"
    return (
        f'<b class="{INJECTED}">{label}</b>'
        f'<img src=x onerror="{push}">'
        f"<script>{push}</script>"
        f'"><img src=x class="{INJECTED}" onerror="{push}">'
        f'\'><img src=x class="{INJECTED}" onerror="{push}">'
        f'</script><img src=x class="{INJECTED}" onerror="{push}">'
        f'<svg onload="{push}"></svg>'
        f'<a class="{INJECTED}" href="javascript:{push}">link</a>'
        f"<!--{label}-->{{{{7*7}}}}"
    )


def script_url(label: str) -> str:
    return f"javascript:__h9pwn.push('{label}')//https://example.com/"


def add_event(session: Session, task_id: str, type_: str, data: Any) -> int:
    """Appends a row as stored JSON, whatever its shape (the worker's rows are not re-checked when read)."""
    last = session.query(TaskEventRow.seq).filter(TaskEventRow.task_id == task_id).order_by(
        TaskEventRow.seq.desc()).limit(1).scalar()  # fmt: skip
    seq = (last or 0) + 1
    session.add(TaskEventRow(task_id=task_id, seq=seq, type=type_, data=data, created_at=utcnow()))
    session.flush()
    return seq


def hostile_events(prefix: str) -> list[tuple[str, Any]]:
    """Every event type the feed draws, a hostile string in each of its text fields (``prefix`` tells the
    page's first events from those the stream brings)."""

    def h(name: str) -> str:
        return hostile(f"{prefix}-{name}")

    call_id = f"{prefix}-call"
    return [
        ("phase", {"phase": "clone", "repo": h("phase-repo"), "ref": h("phase-ref")}),
        ("phase", {"phase": "setup", "base_sha": h("phase-sha")}),
        ("phase", {"phase": "agent", "environment": h("phase-env")}),
        (
            "setup",
            {
                "script": h("setup-script"),
                "cached": False,
                "auto": True,
                "commands": h("setup-commands"),
                "exit_code": 1,
                "timed_out": False,
                "duration": 1.5,
                "log": h("setup-log"),
            },
        ),
        (
            "model_response",
            {
                "step": 1,
                "finish_reason": h("finish-reason"),
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cached_tokens": 0},
                "duration": 0.5,
                "content": h("content"),
                "reasoning": h("reasoning"),
            },
        ),
        ("format_error", {"step": 1, "content": h("format-error")}),
        ("tool_call", {"step": 1, "id": call_id, "name": h("tool-name"), "arguments": h("raw-arguments")}),
        (
            "tool_result",
            {"step": 1, "id": call_id, "name": h("result-name"), "error": True, "duration": 0.1, "output": h("output")},
        ),
        (
            "tool_call",
            {
                "step": 2,
                "id": f"{call_id}-bash",
                "name": "bash",
                "arguments": json.dumps({"command": h("bash-command")}),
            },
        ),
        (
            "tool_result",
            {
                "step": 2,
                "id": f"{call_id}-bash",
                "name": "bash",
                "error": False,
                "output": "\n".join([h("long-output")] * 40),
            },
        ),
        (
            "tool_call",
            {
                "step": 3,
                "id": f"{call_id}-write",
                "name": "write_file",
                "arguments": json.dumps({"file_path": h("write-path"), "content": h("write-content")}),
            },
        ),
        (
            "tool_call",
            {
                "step": 4,
                "id": f"{call_id}-edit",
                "name": "edit",
                "arguments": json.dumps(
                    {"file_path": h("edit-path"), "old_string": h("edit-old"), "new_string": h("edit-new")}
                ),
            },
        ),
        (
            "tool_call",
            {
                "step": 5,
                "id": f"{call_id}-other",
                "name": "grep",
                "arguments": json.dumps({h("arg-key"): h("arg-value")}),
            },
        ),
        ("compaction", {"context_tokens": 100, "summary": h("compaction")}),
        ("finish", {"step": 6, "pr_title": h("pr-title"), "summary": h("finish-summary")}),
        ("patch", {"files_changed": 1, "bytes": 10, "complete": False, "excluded": [h("excluded")]}),
        ("publish", {"state": "published", "branch": h("branch"), "pull_request": script_url(f"{prefix}-pr")}),
        ("publish", {"state": "failed", "reason": h("publish-reason")}),
        ("retry", {"retry_of": h("retry-of")}),
        (
            "message_delivered",
            {"message_id": 1, "mode": "steer", "step": 1, "author": h("msg-author"), "text": h("msg-text")},
        ),
        ("message_dropped", {"message_id": 2, "mode": "queue", "reason": h("msg-reason")}),
        (
            "network_blocked",
            {
                "host": h("blocked-host"),
                "port": 443,
                "method": h("blocked-method"),
                "at": "2026-12-02T04:00:00Z",
                "phase": "agent",
                "step": 2,
                "reason": h("blocked-reason"),
                "count": 2,
            },
        ),
        # Types the feed has no renderer for, or names that are properties of every JavaScript object.
        (f"{prefix}-unknown", {"text": h("unknown"), "html": h("unknown-html")}),
        (
            "constructor",
            {
                "kind": h("ctor-kind"),
                "cls": h("ctor-cls"),
                "badge": h("ctor-badge"),
                "body": [h("ctor-body")],
                "extra": h("ctor-extra"),
            },
        ),
        ("__proto__", {"kind": h("proto")}),
        ("toString", {"kind": h("tostring")}),
        ("hasOwnProperty", {"kind": h("own")}),
        (hostile(f"{prefix}-type")[:64], {"text": h("type-data")}),
    ]


def hostile_diff(tmp: Path) -> str:
    """A diff made by git from files whose names and contents are hostile, and a hand-written part git would
    quote (a stored diff is whatever the worker stored)."""
    repo = tmp / "hostile-repo"
    repo.mkdir()

    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "core.quotePath=false", *args]
        return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q", "-b", "main")
    names = {
        f"<img src=x class={INJECTED} onerror=__h9pwn.push(1)>.html": "old\n",
        "javascript:__h9pwn.push(2).js": "let a = 1;\n",
        "renamed-from.txt": "same\ncontent\nhere\n",
        "plain.py": "def f():\n    pass\n" + "\n" * 10 + "x = 1\n",
    }
    (repo / "<svg onload=__h9pwn.push(3)>").mkdir()
    (repo / "<svg onload=__h9pwn.push(3)>" / "inner.md").write_text("# title\n")
    for name, text in names.items():
        (repo / name).write_text(text)
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    body = "\n".join(hostile(f"diff-{kind}") for kind in ("a", "b")) + "\n"
    for name in [*names, "<svg onload=__h9pwn.push(3)>/inner.md"]:
        if name != "renamed-from.txt":
            (repo / name).write_text(body + (repo / name).read_text() + hostile(f"diff-{Path(name).suffix}") + "\n")
    git("mv", "renamed-from.txt", f"<b class={INJECTED}>renamed-to.txt")
    (repo / f'"><b class={INJECTED}>quoted.py').write_text(hostile("diff-quoted") + "\n")
    (repo / f"<b class={INJECTED}>binary.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    plain = (repo / "plain.py").read_text().replace("x = 1", f"x = '{hostile('diff-hunk-line')}'")
    (repo / "plain.py").write_text(plain)
    git("add", "-A")
    made = git("diff", "--cached", "-M", "HEAD")
    hand_name = f'"><img src=x class="{INJECTED}" onerror="__h9pwn.push(\'hand\')">.py'
    hand = (
        f"diff --git a/{hand_name} b/{hand_name}\nnew file mode 100644\n--- /dev/null\n+++ b/{hand_name}\n"
        f"@@ -0,0 +1,2 @@ {hostile('diff-hunk-header')}\n+{hostile('diff-hand-1')}\n+{hostile('diff-hand-2')}\n"
    )
    return made + hand


def hostile_task(sessions: sessionmaker[Session], tmp: Path, *, owner_token: str) -> str:
    """A running task of ``owner_token``'s user with a hostile string in every field of its row, its GitHub
    link and its page's first events (the patch and the end come later: ``finish_hostile_task``)."""
    with sessions.begin() as session:
        owner = store.users.authenticate(session, owner_token)
        task = store.tasks.create_task(session, repo=f"https://github.com/acme/{hostile('repo')}.git",
                                       ref=hostile("ref"), instruction=hostile("instruction") + "\n\n" +
                                       hostile("instruction-body"), setup=hostile("setup"),
                                       user_id=owner.id)  # fmt: skip
        store.tasks.transition(session, task.id, from_states=[TaskState.queued], to_state=TaskState.preparing)
        store.tasks.transition(session, task.id, from_states=[TaskState.preparing], to_state=TaskState.running)
        task.base_sha = hostile("base-sha")[:64]
        task.kind = "follow-up"
        task.parent_id = hostile("parent")[:32]
        session.add(GitHubLink(task_id=task.id, repo=hostile("gh-repo"), number=7, source="label",
                               sender=hostile("gh-sender"), branch=hostile("gh-branch"), base_branch="main",
                               pr_number=9, pr_url="https://example.com/" + hostile("gh-pr-url"),
                               publish_state="failed", publish_error=hostile("gh-publish-error")))  # fmt: skip
        for type_, data in hostile_events("initial"):
            add_event(session, task.id, type_, data)
        return task.id


def finish_hostile_task(sessions: sessionmaker[Session], task_id: str, diff: str) -> None:
    with sessions.begin() as session:
        patch = store.patches.store_patch(session, task_id, base_sha="a" * 40, diff=diff, title=hostile("patch-title"),
                                          body=hostile("patch-body"), files_changed=9, complete=False,
                                          excluded=[hostile("patch-excluded")])  # fmt: skip
        patch.diffstat = " 9 files changed, 20 insertions(+), 3 deletions(-)"
        patch.mbox = hostile("mbox")
        store.tasks.transition(
            session,
            task_id,
            from_states=[TaskState.running],
            to_state=TaskState.failed,
            reason=hostile("failure-reason"),
        )
