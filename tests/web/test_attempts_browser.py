"""Best-of-N in Chromium against the real stack (API, a worker, Redis, Docker sandboxes, the scripted model): a
task filed through the form with two attempts, each run by the worker with a script of its own; the page shows
the attempts as tabs while they run and after, the best one (tests pass, smaller patch) marked and open with
its diff, the other one's diff a click (or an arrow key) away, read-only, with its own apply command."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from agent.scripted import ScriptedCall, ScriptedTurn
from tests.web.stack import WebStack
from tests.web.test_browser import WAIT, task_on_page

DOCSTRING = "Add two numbers (attempt with a docstring)."


def turn(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)], delay=0.5)


def script(new_body: str, title: str) -> list[ScriptedTurn]:
    """Fix add() with ``new_body``, run the tests (the command the ranking's check runs again), finish."""
    return [
        turn("edit", file_path="calc.py", old_string="    return a - b", new_string=new_body),
        turn("bash", command="python3 -m unittest 2>&1 | tail -1"),
        turn("finish", summary=title, pr_title=title, pr_body=f"{title}."),
    ]


def test_two_attempts_show_as_tabs_live_and_the_best_ones_diff_is_the_tasks(
    stack: WebStack, visit: Any, buggy_repo: Path, shots: Path
) -> None:
    stack.model.state.scripts.extend([
        script(f'    """{DOCSTRING}"""\n    return a + b', "Fix add with a docstring"),
        script("    return a + b", "Fix add"),
    ])  # fmt: skip
    alice = visit()
    alice.sign_in(stack.base, stack.token("alice", admin=True))  # an admin: local repositories are allowed
    page = alice.page
    page.goto(f"{stack.base}/tasks/new")
    page.get_by_label("Repository").fill(str(buggy_repo))
    page.get_by_label("Instruction").fill("Fix add() in calc.py")
    page.get_by_label("Attempts").fill("9")  # the API's bound, shown under the field
    page.get_by_role("button", name="Start task").click()
    expect(page.locator("#attempts-error")).to_contain_text("less than or equal to 8")
    expect(page.get_by_label("Attempts")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Attempts").fill("2")
    page.get_by_role("button", name="Start task").click()
    group = task_on_page(page)
    expect(page.locator("#summary")).to_contain_text("best of 2 attempts")

    page.get_by_role("tab", name=re.compile("Changes")).click()
    tabs = page.get_by_role("tablist", name="Attempts").get_by_role("tab")
    expect(tabs).to_have_count(2, timeout=WAIT)
    # Live: the tabs follow the attempts' states without a reload, up to the ranking.
    seen: set[str] = set()
    deadline = time.monotonic() + 2 * WAIT / 1000
    while page.locator("#attempts .best-mark").count() == 0:
        assert time.monotonic() < deadline, stack.logs()
        seen.update(page.eval_on_selector_all("#attempts [role=tab]", "tabs => tabs.map(t => t.dataset.state)"))
        time.sleep(0.2)
    assert "running" in seen or "preparing" in seen, f"the tabs never showed a running attempt: {seen}"
    expect(page.locator("#task-state")).to_have_text("Succeeded", timeout=WAIT)

    # The best one: tests passed, the smaller patch; open, and its diff is drawn with comments allowed.
    best = page.locator("#attempts [role=tab][data-best=true]")
    other = page.locator("#attempts [role=tab][data-best=false]")
    expect(best).to_have_attribute("aria-selected", "true")
    best_k, other_k = best.get_attribute("data-attempt"), other.get_attribute("data-attempt")
    panel = page.locator(f"#attempt-panel-{best_k}")
    expect(panel).to_contain_text("Tests passed")
    expect(panel).to_contain_text("Rank1 of 2 (best)")
    expect(panel).to_contain_text("python3 -m unittest")
    expect(page.locator("#diff .d2h-file-wrapper")).to_contain_text("return a + b")
    expect(page.locator("#diff")).not_to_contain_text(DOCSTRING)
    expect(page.locator('#diff td[data-line][data-path="calc.py"]').first).to_be_attached()  # commentable
    expect(page.locator("#apply-line")).to_have_value(f"overnight apply {group}")
    page.screenshot(path=shots / "task-attempts.png")

    # The other attempt, by the keyboard: its own diff, read-only, its own apply command and download.
    best.focus()
    page.keyboard.press("ArrowRight" if int(other_k or 0) > int(best_k or 0) else "ArrowLeft")
    expect(other).to_be_focused()
    expect(other).to_have_attribute("aria-selected", "true")
    expect(page.locator(f"#attempt-panel-{other_k}")).to_contain_text("Rank2 of 2")
    expect(page.locator("#diff .d2h-file-wrapper")).to_contain_text(DOCSTRING)
    expect(page.locator("#diff td[data-line]")).to_have_count(0)  # no comments on a patch no follow-up uses
    expect(page.locator("#apply-line")).to_have_value(f"overnight apply {group} --attempt {other_k}")
    attempt_id = other.get_attribute("data-task")
    expect(page.locator("a[data-patch-format=diff]")).to_have_attribute(
        "href", f"/v1/tasks/{attempt_id}/patch?format=diff"
    )
    # And back with a click.
    best.click()
    expect(page.locator("#diff")).not_to_contain_text(DOCSTRING)
    expect(page.locator("#diff .d2h-file-wrapper")).to_contain_text("return a + b")
    assert alice.errors == []
