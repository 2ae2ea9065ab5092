"""Web app benchmark: time to first render of a task page (a 40-step activity feed, a 2,000-line diff in ten
files) and of the task list among 5,000 tasks (its first page, and its last through the cursor), in Debian's
Chromium driven by Playwright, against the API under uvicorn in a process of its own (a SQLite file, or an empty
PostgreSQL database with --database).

For each page, over --runs fresh loads (from a blank page, the browser's cache cleared), it reports the median and
p95, in milliseconds from the start of the navigation, of: the server's last byte (``response``), the end of
DOMContentLoaded (the page's scripts have run: the feed is drawn), the first contentful paint, ``ready`` (the
task page: feed drawn and the first file of the diff drawn and highlighted; the list: its 50 rows) and
``complete`` (every file of the diff drawn). The machine's load average is printed beside them.

    python -m bench.web [--runs 7] [--steps 40] [--diff-lines 2000] [--tasks 5000] [--database URL]
                        [--source DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

import store.events
import store.patches
import store.tasks
import store.users
from bench.flood import api_env, serve_api
from overnight.events import PatchEvent, StateEvent, parse_event
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import Task, TaskState, utcnow

CHROMIUM = "/usr/bin/chromium"
DIFF_FILES = 10


def feed_events(steps: int) -> list[tuple[str, dict[str, Any]]]:
    """A run as the worker records it: states, phases, set-up, then per step a model turn (with reasoning), a
    tool call and its result, and the finish."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("state", {"state": "preparing"}),
        ("phase", {"phase": "clone", "repo": "https://github.com/acme/widgets.git", "ref": "main"}),
        ("phase", {"phase": "setup", "base_sha": "9fceb02d0ae598e95dc970b74767f19372d61af8"}),
        ("setup", {"script": ".overnight/setup.sh", "auto": False, "cached": False, "network": True, "exit_code": 0,
                   "timed_out": False, "duration": 12.5, "log": "\n".join(f"step {i}: ok" for i in range(60))}),
        ("state", {"state": "running"}),
        ("phase", {"phase": "agent", "environment": None}),
    ]  # fmt: skip
    for step in range(1, steps + 1):
        usage = {"prompt_tokens": 12000 + 800 * step, "completion_tokens": 350, "cached_tokens": 11000 + 790 * step}
        events.append(("model_response", {
            "step": step, "finish_reason": "tool_calls", "usage": usage, "duration": 3.2,
            "reasoning": f"Step {step}: look at the failing test and the code it calls. " * 12,
            "content": f"Running the tests for step {step}.",
        }))  # fmt: skip
        call_id = f"call{step:03d}"
        command = f"python -m pytest -x tests/test_{step % 7}.py"
        events.append(("tool_call", {"step": step, "id": call_id, "name": "bash",
                                     "arguments": json.dumps({"command": command})}))  # fmt: skip
        output = "\n".join(f"tests/test_{step % 7}.py::test_case_{n} PASSED" for n in range(40 if step % 5 else 8))
        events.append(("tool_result", {"step": step, "id": call_id, "name": "bash", "error": step % 9 == 0,
                                       "duration": 1.4, "output": output}))  # fmt: skip
    events.append(("finish", {"step": steps, "pr_title": "Fix the widget parser", "summary": "Fixed it. " * 20}))
    return events


def diff_text(lines: int, *, files: int = DIFF_FILES) -> str:
    """A git diff of ``files`` Python files whose hunks change ``lines`` lines in all (half added, half removed)."""
    per_file = max(lines // files, 2)
    parts = []
    for number in range(files):
        path = f"src/widgets/module_{number}.py"
        body = []
        for line in range(per_file // 2):
            body.append(f"-    value_{line} = compute({line}, scale=1)")
            body.append(f"+    value_{line} = compute({line}, scale=2)  # doubled")
        count = per_file // 2
        header = f"@@ -10,{count + 2} +10,{count + 2} @@ def handler(request):"
        parts.append("\n".join([
            f"diff --git a/{path} b/{path}", "index 1111111..2222222 100644", f"--- a/{path}", f"+++ b/{path}", header,
            "     # context before", *body, "     return result",
        ]))  # fmt: skip
    return "\n".join(parts) + "\n"


def seed_task_page(session: Session, user_id: int, *, steps: int, diff_lines: int) -> str:
    """A succeeded task with a ``steps``-step feed and a ``diff_lines``-line patch."""
    instruction = "Fix the widget parser\n\nIt drops the last field."
    task = store.tasks.create_task(session, repo="https://github.com/acme/widgets.git", ref="main",
                                   instruction=instruction, user_id=user_id)  # fmt: skip
    for type_, data in feed_events(steps):
        store.events.append_event(session, task.id, parse_event(type_, data))
    diff = diff_text(diff_lines)
    patch = store.patches.store_patch(session, task.id, base_sha="9fceb02d0ae598e95dc970b74767f19372d61af8",
                                      diff=diff, title="Fix the widget parser", body="It keeps the last field now.",
                                      files_changed=10, excluded=["node_modules/", "__pycache__/"])  # fmt: skip
    patch.diffstat = f" 10 files changed, {diff_lines // 2} insertions(+), {diff_lines // 2} deletions(-)"
    now = utcnow()
    task.state, task.steps, task.base_sha = TaskState.succeeded.value, steps, patch.base_sha
    task.started_at, task.finished_at = now - timedelta(minutes=9), now
    task.prompt_tokens, task.cached_tokens, task.completion_tokens = 900_000, 820_000, 14_000
    store.events.append_event(session, task.id, PatchEvent(files_changed=10, bytes=len(diff), complete=True,
                                                           excluded=patch.excluded, empty=False))  # fmt: skip
    store.events.append_event(session, task.id, StateEvent(state="succeeded"))
    return task.id


def seed_many_tasks(session: Session, user_id: int, count: int) -> None:
    """``count`` tasks in every state, a minute apart, inserted in bulk."""
    now = utcnow()
    states = [state.value for state in TaskState]
    rows = [
        {"id": store.tasks.new_task_id(), "user_id": user_id, "kind": "task",
         "repo": f"https://github.com/acme/repo-{n % 40}.git", "ref": "main",
         "instruction": f"Task number {n}: fix the thing", "state": states[n % len(states)],
         "created_at": now - timedelta(minutes=n), "updated_at": now, "attempt": 1, "steps": n % 30,
         "prompt_tokens": 1000 * (n % 50), "cached_tokens": 0, "completion_tokens": 100, "sandbox_seconds": 0.0,
         "cancel_requested": False}
        for n in range(count)
    ]  # fmt: skip
    session.execute(insert(Task), rows)


def last_page_cursor(session: Session, user_id: int, tasks: int) -> str:
    """The list's cursor that leads to its last page of 50 (what "Older tasks" reaches after many clicks)."""
    query = select(Task).where(Task.user_id == user_id).order_by(Task.created_at.desc(), Task.id.desc())
    task = session.scalars(query.offset(max(tasks - 51, 0)).limit(1)).one()
    return store.tasks.encode_cursor(task)


@contextmanager
def served(
    database: str | None, tmp: Path, *, tasks: int, steps: int, diff_lines: int, source: Path | None = None
) -> Iterator[tuple[str, str, str, str]]:
    """The API on a seeded database: yields (base URL, token, id of the big task, the list's last-page cursor)."""
    env = api_env(tmp, extra={"OVERNIGHT_DATABASE_URL": database} if database else None)
    engine = make_engine(env["OVERNIGHT_DATABASE_URL"])
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        name = f"bench-{secrets.token_hex(3)}"
        token = store.users.create_token(session, name)
        user = store.users.user_for_token(session, token)
        assert user is not None
        seed_many_tasks(session, user.id, tasks)
        task_id = seed_task_page(session, user.id, steps=steps, diff_lines=diff_lines)
        session.flush()
        cursor = last_page_cursor(session, user.id, tasks)
    engine.dispose()
    with serve_api(env, source=source, log=tmp / "api.log") as (port, _pid):
        yield f"http://127.0.0.1:{port}", token, task_id, cursor


# Arrow functions, not bare expressions: the pages' Content-Security-Policy refuses eval().
READY_TASK = (
    "() => !!document.querySelector('#feed .event')"
    " && !!document.querySelector('.d2h-file-wrapper .hljs-number') && !!document.querySelector('td[data-line]')"
)
COMPLETE_TASK = f"() => document.querySelectorAll('#diff .d2h-file-wrapper').length >= {DIFF_FILES}"
READY_LIST = "() => document.querySelectorAll('#task-rows tr').length >= 50"
COMPLETE_LIST = READY_LIST


def measure(page: Any, url: str, ready: str, complete: str) -> dict[str, float]:
    """One fresh load of ``url`` (from a blank page, the browser's cache cleared): milliseconds from the start of
    the navigation to the server's last byte, to the first contentful paint, to ``ready`` first being true and
    to ``complete`` (checked at every animation frame, in the page's own clock)."""
    page.goto("about:blank")
    page.context.new_cdp_session(page).send("Network.clearBrowserCache")
    page.goto(url, wait_until="commit")
    page.wait_for_function(f"() => ({ready})() && (window.__ready = window.__ready || performance.now())",
                           timeout=60_000, polling="raf")  # fmt: skip
    page.wait_for_function(f"() => ({complete})() && (window.__complete = window.__complete || performance.now())",
                           timeout=60_000, polling="raf")  # fmt: skip
    page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0", timeout=10_000)
    timing = page.evaluate(
        "() => ({response: performance.getEntriesByType('navigation')[0].responseEnd, ready: window.__ready,"
        " dom: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
        " fcp: performance.getEntriesByName('first-contentful-paint')[0].startTime, complete: window.__complete})"
    )
    return {"response_ms": timing["response"], "dom_ms": timing["dom"], "fcp_ms": timing["fcp"],
            "ready_ms": timing["ready"], "complete_ms": timing["complete"]}  # fmt: skip


def summarise(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in samples[0]:
        values = sorted(sample[key] for sample in samples)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        out[key] = {"median": round(statistics.median(values), 1), "p95": round(p95, 1)}
    return out


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/sign-in")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    sizes = {"tasks": args.tasks, "steps": args.steps, "diff_lines": args.diff_lines}
    with (
        tempfile.TemporaryDirectory(prefix="bench-web-") as folder,
        served(args.database, Path(folder), source=args.source, **sizes) as (base, token, task_id, cursor),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        sign_in(page, base, token)
        results: dict[str, Any] = {"runs": args.runs, **sizes, "cpus": os.cpu_count(),
                                   "load_average_before": os.getloadavg()[0]}  # fmt: skip
        last_page = f"{base}/?{urlencode({'cursor': cursor})}"
        pages = (("task_page", f"{base}/tasks/{task_id}#changes", READY_TASK, COMPLETE_TASK),
                 ("task_list", f"{base}/", READY_LIST, COMPLETE_LIST),
                 ("task_list_last_page", last_page, READY_LIST, COMPLETE_LIST))  # fmt: skip
        for name, url, ready, complete in pages:
            measure(page, url, ready, complete)  # warm the server's caches (templates, the database's pages) once
            results[name] = summarise([measure(page, url, ready, complete) for _ in range(args.runs)])
        browser.close()
        results["load_average_after"] = os.getloadavg()[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--diff-lines", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--database", help="SQLAlchemy URL of an empty database (default: a SQLite file)")
    parser.add_argument("--source", type=Path, help="serve the API from another checkout (e.g. `git archive` of an "
                        "older commit, with its web/static/vendor) to compare")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
