"""The task page's box while the task runs (issue 17): a message to its agent (a steer, or queued with "after it
finishes"), sent with the page's CSRF token; the feed draws the delivered message as text; once the task has
ended the box is the follow-up box again."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect
from sqlalchemy.orm import Session, sessionmaker

import store.events
import store.tasks
from overnight.events import MessageDeliveredEvent
from store.models import TaskState
from tests.web.conftest import Browser
from tests.web.redteam import LiveServer, Visitor, probe

pytest_plugins = ["tests.web.redteam"]  # the live server and the browser

HOSTILE = "<img src=x onerror=\"document.body.classList.add('h9-injected')\"><b class=h9-injected>bold</b>"


def test_the_box_of_a_running_task_is_a_message_and_of_an_ended_one_a_follow_up(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    alice = browser("alice")
    running = alice.page(f"/tasks/{make_task('alice', state=TaskState.running)}").text
    assert ">Message</label>" in running and "Reaches the agent at its next step." in running
    assert 'name="after"' in running and "after it finishes" in running and ">Send message</button>" in running
    ended = alice.page(f"/tasks/{make_task('alice', state=TaskState.failed)}").text
    assert ">Follow-up</label>" in ended and 'name="after"' not in ended and ">Send follow-up</button>" in ended


def test_the_message_api_the_box_calls_needs_the_csrf_token(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    alice = browser("alice")
    task_id = make_task("alice", state=TaskState.running)
    body = {"mode": "steer", "text": "Use the new parser"}
    refused = alice.api("POST", f"/v1/tasks/{task_id}/messages", csrf=False, json=body)
    assert refused.status_code == 403, refused.text
    sent = alice.api("POST", f"/v1/tasks/{task_id}/messages", json=body)
    assert sent.status_code == 201 and sent.json()["state"] == "pending", sent.text


def test_a_running_tasks_box_sends_a_steer_and_the_feed_draws_the_delivered_text_as_text(
    live: LiveServer,
    visitor: Callable[..., Visitor],
    sessions: sessionmaker[Session],
    tokens: dict[str, str],
    make_task: Callable[..., str],
    browser: Callable[..., Browser],
) -> None:
    task_id = make_task("alice", state=TaskState.running)
    alice = visitor()
    alice.sign_in(live.base, tokens["alice"])
    page = alice.page
    page.goto(f"{live.base}/tasks/{task_id}")
    page.wait_for_selector('#feed article[data-seq="3"]')

    page.get_by_role("textbox", name="Message").fill(f"Also fix the docs {HOSTILE}")
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#follow-up-status")).to_contain_text("at its next step")
    page.get_by_role("textbox", name="Message").fill("Then run the linter")
    page.get_by_label("after it finishes").check()
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#follow-up-status")).to_contain_text("when it would finish")
    messages = browser("alice").api("GET", f"/v1/tasks/{task_id}/messages").json()["messages"]
    assert [(m["mode"], m["text"], m["state"]) for m in messages] == [
        ("steer", f"Also fix the docs {HOSTILE}", "pending"),
        ("queue", "Then run the linter", "pending"),
    ]

    with sessions.begin() as session:
        delivered = MessageDeliveredEvent(message_id=messages[0]["id"], mode="steer", step=4, author="alice",
                                          text=messages[0]["text"])  # fmt: skip
        seq = store.events.append_event(session, task_id, delivered).seq
    article = page.locator(f'#feed article[data-seq="{seq}"]')
    expect(article).to_contain_text(f"Also fix the docs {HOSTILE}", timeout=15000)
    expect(article).to_contain_text("from alice · after step 4")
    assert article.locator("img, b").count() == 0
    assert not any(probe(page).values()) and not alice.errors

    with sessions.begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=TaskState.succeeded)
    page.get_by_role("textbox", name="Message").fill("One more thing")
    page.get_by_role("button", name="Send message").click()  # before the page saw it end: the API says so
    expect(page.locator("#follow-up-error")).to_contain_text("send this as a follow-up instead")
    expect(page.get_by_role("button", name="Send follow-up")).to_be_visible()
    expect(page.get_by_role("textbox", name="Follow-up")).to_have_value("One more thing")
    assert page.get_by_label("after it finishes").count() == 0
