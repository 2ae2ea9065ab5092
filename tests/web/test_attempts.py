"""A best-of-N task's page as the server renders it: the attempts as tabs (state, tests, reason, size, the best
one marked and open), the fragment that refreshes them and says when nothing will change any more, markup in
a ranking's reason drawn as text, another user's group not found; the new-task form's Attempts field."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from store.models import Task, TaskState
from tests.web.conftest import Browser

DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
    "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def make_group(
    make_task: Callable[..., str],
    sessions: Any,
    *,
    states: list[TaskState],
    ranking: dict[str, Any] | None,
    user: str = "alice",
) -> tuple[str, list[str]]:
    """A group of ``len(states)`` attempts as the worker leaves them (rows written through the real store)."""
    group = make_task(user, state=TaskState.succeeded if ranking else TaskState.running,
                      diff=DIFF if ranking else None)  # fmt: skip
    attempts = [make_task(user, state=state, diff=DIFF if state is TaskState.succeeded else None) for state in states]
    with sessions.begin() as session:
        row = session.get(Task, group)
        row.attempts, row.ranking = len(states), ranking
        for index, attempt_id in enumerate(attempts, start=1):
            attempt = session.get(Task, attempt_id)
            attempt.attempt_of, attempt.attempt_index = group, index
            if states[index - 1] is TaskState.failed:
                attempt.failure_reason = "step budget exhausted (3 steps)"
    return group, attempts


def entry(attempt: int, rank: int, *, passed: bool | None, size: int | None, reason: str) -> dict[str, Any]:
    return {"attempt": attempt, "task_id": "-", "state": "succeeded", "test_command": "python3 -m unittest",
            "passed": passed, "exit_code": None if passed is None else int(not passed), "output_tail": "Ran 1 test",
            "patch_bytes": size, "files_changed": 1, "rank": rank, "reason": reason}  # fmt: skip


RANKING = {
    "version": 1,
    "best": 2,
    "entries": [
        entry(2, 1, passed=True, size=1300, reason="tests pass; 1.3 KB"),
        entry(1, 2, passed=False, size=200, reason="tests fail"),
        entry(3, 3, passed=None, size=None, reason=HOSTILE),
    ],
}


def tab(page: str, index: int) -> str:
    found = re.search(rf'<button type="button" role="tab" id="attempt-tab-{index}".*?</button>', page, re.S)
    assert found, page
    return found.group(0)


def panel(page: str, index: int) -> str:
    start = page.index(f'<div id="attempt-panel-{index}"')
    ends = [end for end in (page.find('<div id="attempt-panel-', start + 1), page.find("</section>", start)) if end > 0]
    return page[start : min(ends)]


def test_a_ranked_group_shows_its_attempts_as_tabs_with_the_best_marked_and_open(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    group, attempts = make_group(make_task, sessions, ranking=RANKING,
                                 states=[TaskState.succeeded, TaskState.succeeded, TaskState.failed])  # fmt: skip
    page = browser("alice").page(f"/tasks/{group}").text
    assert 'aria-label="Attempts (3)"' in page and "/static/attempts.js" in page
    best = tab(page, 2)
    assert 'aria-selected="true"' in best and 'data-best="true"' in best and "★ best" in best
    assert 'aria-selected="false"' in tab(page, 1) and "★ best" not in tab(page, 1)
    assert "Failed" in tab(page, 3) and "state-line-failed" in tab(page, 3)
    assert "Tests passed" in panel(page, 2) and "Rank</dt><dd>1 of 3 (best)" in panel(page, 2)
    assert "tests pass; 1.3 KB" in panel(page, 2) and "+1" in panel(page, 2) and "(1.3 KB)" in panel(page, 2)
    assert "checked with <code>python3 -m unittest</code> (exit 0)" in panel(page, 2)
    assert "hidden" not in panel(page, 2).split(">")[0] and "hidden" in panel(page, 1).split(">")[0]
    assert "Tests failed" in panel(page, 1) and "Not checked" in panel(page, 3)
    assert "step budget exhausted (3 steps)" in panel(page, 3)
    assert f'href="/tasks/{attempts[0]}"' in panel(page, 1)  # each attempt's own activity
    assert "best of 3 attempts" in page
    listed = browser("alice").page("/").text  # the list names the task's attempts; its attempt tasks are not rows
    assert f'<tr id="task-{group}"' in listed and "· best of 3</div>" in listed
    assert not any(f'<tr id="task-{attempt}"' in listed for attempt in attempts)
    own_page = browser("alice").page(f"/tasks/{attempts[0]}").text
    assert f'attempt 1 of <a href="/tasks/{group}">' in own_page and 'id="attempts"' not in own_page
    # Markup in a ranking's reason is text.
    assert HOSTILE not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def test_the_fragment_keeps_the_readers_tab_and_says_when_it_is_settled(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    group, _ = make_group(make_task, sessions, ranking=RANKING,
                          states=[TaskState.succeeded, TaskState.succeeded, TaskState.failed])  # fmt: skip
    alice = browser("alice")
    fragment = alice.page(f"/tasks/{group}/attempts?selected=3")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert 'aria-selected="true"' in tab(fragment.text, 3) and 'aria-selected="false"' in tab(fragment.text, 2)
    assert fragment.headers["x-overnight-settled"] == "true"
    assert fragment.headers["cache-control"] == "no-store"
    # Not an attempt: the best one is open.
    assert 'aria-selected="true"' in tab(alice.page(f"/tasks/{group}/attempts?selected=9").text, 2)


def test_running_attempts_are_unranked_and_the_fragment_keeps_being_asked_for(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    group, _ = make_group(make_task, sessions, ranking=None, states=[TaskState.succeeded, TaskState.running])
    alice = browser("alice")
    page = alice.page(f"/tasks/{group}").text
    assert 'aria-selected="true"' in tab(page, 1) and "★ best" not in page
    assert "Running" in tab(page, 2) and "Checked once every attempt has ended" in panel(page, 1)
    assert alice.page(f"/tasks/{group}/attempts").headers["x-overnight-settled"] == "false"


def test_a_group_whose_attempts_have_not_started_says_so_and_another_user_finds_nothing(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    group = make_task("alice", state=TaskState.running)
    with sessions.begin() as session:
        session.get(Task, group).attempts = 4  # type: ignore[union-attr]
    page = browser("alice").page(f"/tasks/{group}").text
    assert "The 4 attempts are about to start." in page and 'id="attempts"' in page
    bob = browser("bob")
    assert bob.page(f"/tasks/{group}").status_code == 404
    assert bob.page(f"/tasks/{group}/attempts").status_code == 404


def test_a_task_that_ran_once_has_no_attempt_tabs(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    page = browser("alice").page(f"/tasks/{task_id}").text
    assert 'id="attempts"' not in page and "attempts.js" not in page
    assert "The patch appears" in page or "Loading the patch" in page


def test_the_new_task_form_has_an_attempts_field_from_1_to_8(browser: Callable[..., Browser]) -> None:
    page = browser("alice").page("/tasks/new").text
    field = re.search(r'<input id="attempts"[^>]*>', page, re.S)
    assert field and 'type="number"' in field.group(0) and 'min="1"' in field.group(0) and 'max="8"' in field.group(0)
    assert '<label for="attempts">Attempts' in page
    script = browser().client.get("/static/new.js").text
    assert '"attempts"' in script and "payload.attempts" in script
