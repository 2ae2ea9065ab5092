"""The new-task form's image field in Chromium against the real stack (issue 17 part 3): a file that is not an
image gets the API's refusal under the field; a screenshot chosen in the field goes up as multipart/form-data
(with the CSRF token, under the pages' policy) and the scripted model receives it as an image part of the
task's first message."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from agent.scripted import ScriptedCall, ScriptedTurn
from tests.images import png
from tests.mistral_validation import assert_valid_mistral_request
from tests.web.stack import WebStack

FINISH = ScriptedTurn(content="It matches.", tool_calls=[ScriptedCall(name="finish", arguments={
    "summary": "looked at the screenshot", "pr_title": "Nothing to change", "pr_body": "."})])  # fmt: skip
WAIT = 90_000


def test_the_new_task_form_uploads_a_screenshot_that_reaches_the_model(
    stack: WebStack, visit: Any, buggy_repo: Path, tmp_path: Path
) -> None:
    stack.script(FINISH)
    shot, notes = tmp_path / "shot.png", tmp_path / "notes.png"
    shot.write_bytes(png(24, 16, (30, 120, 200)))
    notes.write_text("this is text, named like a picture")
    alice = visit()
    alice.sign_in(stack.base, stack.token("alice", admin=True))
    page = alice.page
    page.goto(f"{stack.base}/tasks/new")
    expect(page.locator("#images-help")).to_contain_text("PNG, JPEG, GIF or WebP, at most 4")
    page.get_by_label("Repository").fill(str(buggy_repo))
    page.get_by_label("Instruction").fill("Make the page look like the screenshot")

    page.get_by_label("Images").set_input_files(str(notes))
    page.get_by_role("button", name="Start task").click()
    expect(page.locator("#images-error")).to_contain_text("is not a PNG, JPEG, GIF or WebP image")
    expect(page.get_by_label("Images")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Images").set_input_files(str(shot))
    page.get_by_role("button", name="Start task").click()
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f]{16}$"))
    expect(page.locator("#task-state")).to_have_text("Succeeded", timeout=WAIT)

    [request] = stack.model.state.requests
    text, image = request["messages"][1]["content"]
    assert "Make the page look like the screenshot" in text["text"]
    assert image["image_url"]["url"] == f"data:image/png;base64,{base64.b64encode(shot.read_bytes()).decode()}"
    assert_valid_mistral_request(request)
    assert alice.errors == []
