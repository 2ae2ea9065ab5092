"""How the CLI renders a task's progress: the status line keeps time between events."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from overnight.cli.render import Status, describe


def test_the_live_status_line_is_rendered_afresh_so_elapsed_time_moves_without_events() -> None:
    status = Status()
    started = datetime.now(UTC) - timedelta(seconds=42)
    status.update({"type": "state", "data": {"state": "preparing"}, "created_at": started.isoformat()})
    status.update({"type": "model_response", "data": {"step": 3, "usage": {"prompt_tokens": 1000,
                   "completion_tokens": 234}}, "created_at": started.isoformat()})  # fmt: skip
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
