"""The web app in Chromium against the real stack (API, worker, Redis, Docker sandboxes, the scripted model):
sign in, submit through the form, watch the feed fill in live, see the diff, comment on two lines and send
them as a follow-up, cancel a running task, a second user who sees nothing of the first's, and a page that
keeps following its task across an API restart. Screenshots go to the ``shots`` folder (docs/web/ on request).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

import store.events
from agent.scripted import ScriptedCall, ScriptedTurn
from tests.e2e.cluster import EDIT, bash
from tests.web.stack import WebStack

FINISH = ScriptedTurn(
    reasoning="The test passes now.",
    content="add() adds now; the unit test passes.",
    tool_calls=[ScriptedCall(name="finish", arguments={
        "summary": "calc.add subtracted; it adds now.", "pr_title": "Make add() add", "pr_body": "Fixes add()."})],
)  # fmt: skip
WAIT = 90_000
"""Milliseconds a page may take to show what a task did (a Docker sandbox starts, a set-up runs)."""


def slow(step: int) -> ScriptedTurn:
    return ScriptedTurn(
        reasoning=f"Look around, step {step}.",
        tool_calls=[ScriptedCall(name="bash", arguments={"command": f"sleep 1; echo step {step}"})],
    )


def task_on_page(page: Page) -> str:
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f]{16}(#.*)?$"))
    found = re.search(r"/tasks/([0-9a-f]{16})", page.url)
    assert found, page.url
    return found.group(1)


def feed_count(page: Page) -> int:
    return page.locator("#feed .event").count()


def at_bottom(page: Page) -> bool:
    return bool(page.evaluate("() => { const f = document.getElementById('feed');"
                              " return f.scrollHeight - f.scrollTop - f.clientHeight < 48; }"))  # fmt: skip


def shown_sequence_numbers(page: Page) -> list[int]:
    values = page.eval_on_selector_all("#feed [data-seq]", "nodes => nodes.map(n => n.dataset.seq)")
    return [int(value) for value in values]


def test_submit_follow_live_review_the_diff_and_send_two_comments_as_a_follow_up(
    stack: WebStack, visit: Any, buggy_repo: Path, shots: Path
) -> None:
    stack.script(slow(1), slow(2), bash("sleep 1; python3 -m unittest 2>&1 | tail -1"), EDIT,
                 bash("python3 -m unittest 2>&1 | tail -1"), FINISH)  # fmt: skip
    alice = visit()
    alice.sign_in(stack.base, stack.token("alice", admin=True))  # an admin: local repositories are allowed
    page = alice.page
    page.get_by_role("link", name="New task").first.click()

    # The API's own validation errors, next to their fields: the body's schema first, then the repository rules.
    page.get_by_label("Repository").fill("file:///etc")
    page.get_by_role("button", name="Start task").click()
    expect(page.locator("#instruction-error")).to_contain_text("instruction must not be empty")
    expect(page.get_by_label("Instruction")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Instruction").fill("Fix add() in calc.py")
    page.get_by_role("button", name="Start task").click()
    expect(page.locator("#repo-error")).to_contain_text("file://")
    expect(page.get_by_label("Repository")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#instruction-error")).to_be_empty()

    page.get_by_label("Repository").fill(str(buggy_repo))
    page.get_by_role("button", name="Start task").click()
    task_id = task_on_page(page)

    # The feed fills in while the task runs: it grows several times before the task ends.
    counts, screenshot_taken = set(), False
    deadline = time.monotonic() + WAIT / 1000
    while page.locator("#task-state").inner_text() != "Succeeded":
        assert time.monotonic() < deadline, stack.logs()
        counts.add(feed_count(page))
        if not screenshot_taken and page.locator("#feed .ev-tool_call .tool-result").count() >= 1:
            page.screenshot(path=shots / "task-running.png")
            screenshot_taken = True
        time.sleep(0.2)
    assert len(counts) >= 4, f"the feed did not fill in live: counts seen {sorted(counts)}"
    assert screenshot_taken
    assert at_bottom(page)  # it followed the run to its end
    expect(page.locator("#jump-latest")).to_be_hidden()
    expect(page.locator("#feed")).to_contain_text("$ sleep 1; echo step 1")
    expect(page.locator("#feed")).to_contain_text("Make add() add")  # the finish summary
    time_text = page.locator("time[data-local]").first.get_attribute("title") or ""
    assert "GMT+0900" in time_text  # the viewer's time zone, not the server's

    # The diff, highlighted, with its file tree.
    page.get_by_role("tab", name=re.compile("Changes")).click()
    diff = page.locator("#diff .d2h-file-wrapper")
    expect(diff).to_contain_text("return a + b")
    expect(page.locator("#file-tree")).to_contain_text("calc.py")
    expect(page.locator("#diff .d2h-code-line-ctn .hljs-keyword").first).to_be_visible()
    expect(page.get_by_role("tab", name=re.compile("Changes"))).to_contain_text("+1 \N{MINUS SIGN}1")

    # Two comments on lines: a click on one line number, the keyboard on another.
    page.locator('#diff td[data-path="calc.py"][data-side="new"][data-line="2"]').click()
    page.get_by_label("Comment in `calc.py` line 2").fill("Also handle floats here.")
    page.get_by_role("button", name="Add comment").click()
    first_line = page.locator('#diff td[data-path="calc.py"][data-side="new"][data-line="1"]')
    first_line.focus()
    page.keyboard.press("Enter")
    page.keyboard.type("Keep the signature.")
    page.get_by_role("button", name="Add comment").click()
    expect(page.locator("#review-list li")).to_have_count(2)
    expect(page.locator("#diff .comment-saved")).to_have_count(2)  # each under its line, too
    page.locator("#diff .comment-saved").last.scroll_into_view_if_needed()
    page.screenshot(path=shots / "task-diff.png")

    page.locator("#follow-up").fill("Then add a test for negative numbers.")
    stack.script(FINISH)
    page.get_by_role("button", name="Send follow-up").click()
    page.wait_for_url(lambda url: f"/tasks/{task_id}" not in url)
    follow_up = task_on_page(page)
    instruction = page.locator(".instruction pre")
    expect(instruction).to_contain_text("Then add a test for negative numbers.")
    expect(instruction).to_contain_text("- in `calc.py` line 2: Also handle floats here.")
    expect(instruction).to_contain_text("- in `calc.py` line 1: Keep the signature.")
    expect(page.locator("#summary")).to_contain_text(f"follow-up of {task_id}")
    expect(page.locator("#task-state")).to_have_text("Succeeded", timeout=WAIT)
    sent = str(stack.model.state.requests[-1]["messages"])
    assert "in `calc.py` line 2: Also handle floats here." in sent  # it reached the model

    page.goto(f"{stack.base}/")
    expect(page.locator(f"#task-{follow_up} .badge")).to_have_text("Succeeded")
    expect(page.locator(f"#task-{task_id}")).to_contain_text("+1")
    page.screenshot(path=shots / "task-list.png")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the rows become cards
    page.screenshot(path=shots / "task-list-narrow.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off the side
    assert alice.errors == []


def test_cancel_a_running_task_from_its_page(stack: WebStack, visit: Any, buggy_repo: Path) -> None:
    stack.script(bash("sleep 120"))
    token = stack.token("alice", admin=True)
    with stack.api_client(token) as api:
        task_id = api.post("/v1/tasks", json={"repo": str(buggy_repo), "instruction": "wait"}).json()["id"]
    alice = visit()
    alice.sign_in(stack.base, token)
    page = alice.page
    page.goto(f"{stack.base}/tasks/{task_id}")
    expect(page.locator("#feed")).to_contain_text("$ sleep 120", timeout=WAIT)
    expect(page.locator("#task-state")).to_have_text("Running")
    page.get_by_role("tab", name="Activity").focus()  # the tabs answer the arrow keys
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name=re.compile("Changes"))).to_be_focused()
    expect(page.locator("#panel-changes")).to_be_visible()
    expect(page.locator("#panel-changes")).to_contain_text("when the task ends")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#panel-activity")).to_be_visible()
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator("#task-state")).to_have_text("Cancelled", timeout=30_000)
    expect(page.locator("#feed .ev-state").last).to_contain_text("cancelled by user")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)  # nothing left to stop
    expect(page.get_by_role("button", name="Retry")).to_be_visible()
    assert alice.errors == []


def test_a_second_user_sees_none_of_the_first_users_tasks(stack: WebStack, visit: Any) -> None:
    alice_token = stack.token("alice")
    with stack.api_client(alice_token) as api:
        answer = api.post("/v1/tasks", json={"repo": "https://example.invalid/a/b.git", "instruction": "Alice only"})
        task_id = answer.json()["id"]
    bob = visit()
    bob.sign_in(stack.base, stack.token("bob"))
    page = bob.page
    expect(page.locator("main")).to_contain_text("No tasks yet")
    expect(page.locator("main")).not_to_contain_text("Alice only")
    response = page.goto(f"{stack.base}/tasks/{task_id}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.locator("main")).not_to_contain_text("Alice only")
    statuses = page.evaluate(
        """async (id) => Promise.all([`/v1/tasks/${id}`, `/v1/tasks/${id}/events`, `/tasks/${id}/summary`]
            .map(async (url) => (await fetch(url, {headers: {Accept: 'text/event-stream'}})).status))""",
        task_id,
    )
    assert statuses == [404, 404, 404]
    alice = visit()
    alice.sign_in(stack.base, alice_token)
    expect(alice.page.locator("main")).to_contain_text("Alice only")


def test_the_page_keeps_following_its_task_across_an_api_restart(stack: WebStack, visit: Any, buggy_repo: Path) -> None:
    stack.script(*[slow(step) for step in range(1, 9)], FINISH)
    token = stack.token("alice", admin=True)
    with stack.api_client(token) as api:
        task_id = api.post("/v1/tasks", json={"repo": str(buggy_repo), "instruction": "slowly"}).json()["id"]
    alice = visit()
    alice.sign_in(stack.base, token)
    page = alice.page
    page.goto(f"{stack.base}/tasks/{task_id}")
    feed = page.locator("#feed")
    expect(feed).to_contain_text("echo step 2", timeout=WAIT)
    assert at_bottom(page)  # it follows the newest event...
    expect(page.locator("#jump-latest")).to_be_hidden()
    feed.hover()
    page.mouse.wheel(0, -400)  # ...until the reader scrolls up: then it stays where they are
    expect(feed).to_contain_text("echo step 3", timeout=WAIT)
    expect(page.locator("#jump-latest")).to_be_visible()
    assert not at_bottom(page)
    page.locator("#jump-latest").click()
    assert at_bottom(page)
    expect(page.locator("#jump-latest")).to_be_hidden()
    stack.stop_api()
    expect(page.locator("#stream-status")).to_contain_text("reconnecting", timeout=15_000)
    time.sleep(2)  # the worker goes on writing events while nobody serves them
    stack.start_api()
    expect(page.locator("#task-state")).to_have_text("Succeeded", timeout=WAIT)
    expect(page.locator("#feed")).to_contain_text("echo step 8")
    with stack.cluster.sessions()() as session:
        stored = [event.seq for event in store.events.list_events(session, task_id)]
    shown = shown_sequence_numbers(page)
    assert shown == stored, "every event once, in order"
    page.reload()
    assert shown_sequence_numbers(page) == stored
