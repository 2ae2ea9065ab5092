"""How the CLI renders a task's progress: the status line keeps time between events; events are read with
the event models, and one the CLI cannot read costs its line, never the command."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from overnight.cli.render import Status, describe
from overnight.events import ModelResponseEvent, parse_event


def test_the_live_status_line_is_rendered_afresh_so_elapsed_time_moves_without_events() -> None:
    status = Status()
    started = datetime.now(UTC) - timedelta(seconds=42)
    status.update({"type": "state", "data": {"state": "preparing"}, "created_at": started.isoformat()})
    status.update({"type": "model_response", "data": {"step": 3, "finish_reason": "tool_calls", "usage": {
                   "prompt_tokens": 1000, "completion_tokens": 234, "cached_tokens": 0}},
                   "created_at": started.isoformat()})  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(status)
    assert out.getvalue().strip() == "preparing · step 3 · 42 s · 1,234 tokens"
    status.started = started - timedelta(seconds=10)  # time passes; no event arrives
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(status)
    assert "52 s" in out.getvalue()


def test_publish_events_have_a_line() -> None:
    ok = describe({"type": "publish", "data": {"state": "published", "pull_request": "https://x/pull/1"}})
    assert ok is not None and "https://x/pull/1" in ok
    failed = describe({"type": "publish", "data": {"state": "failed", "reason": "push to b rejected: [x]"}})
    assert failed is not None and "rejected" in failed and r"\[x]" in failed  # markup escaped


def test_the_cli_shows_an_unknown_type_not_at_all_and_a_broken_event_by_its_type() -> None:
    unknown = {"seq": 4, "type": "note", "data": {"n": 1}, "error": "unknown event type 'note'"}
    broken = {"seq": 5, "type": "tool_call", "data": {"step": 1}, "error": "tool_call event: id: Field required"}
    assert describe(unknown) is None
    assert describe(broken) == "[dim]tool_call[/dim]"
    status = Status()
    status.update({"seq": 6, "type": "model_response", "data": {"step": "x"}, "created_at": "2026-01-01T00:00:00Z"})
    assert (status.step, status.tokens) == (0, 0)  # left as it was


def test_a_model_response_without_text_has_no_line_and_one_with_text_its_first_line() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 0}
    silent = {"type": "model_response", "data": {"step": 2, "finish_reason": "tool_calls", "usage": usage}}
    said = {"type": "model_response", "data": {**silent["data"], "content": "Running the tests.\nThen fix."}}
    assert describe(silent) is None
    assert describe(said) == "[blue]step 2[/blue] Running the tests."
    assert isinstance(parse_event("model_response", said["data"]), ModelResponseEvent)


def test_an_images_event_has_a_line_naming_what_was_given_and_what_was_not_fetched() -> None:
    event = {"type": "images", "data": {
        "images": [{"sha256": "a" * 64, "media_type": "image/png", "size": 68, "source": "upload"}],
        "failed": [{"url": "https://github.com/user-attachments/assets/[x]", "reason": "HTTP 404"}]}}  # fmt: skip
    line = describe(event)
    assert line is not None
    console = Console(file=io.StringIO(), width=300)
    console.print(line)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "1 image(s) for the model: image/png (68 bytes)" in text
    assert "not fetched: https://github.com/user-attachments/assets/[x]: HTTP 404" in text  # markup stays text
