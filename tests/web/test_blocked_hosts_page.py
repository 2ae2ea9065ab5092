"""The task page's header sums up the requests the egress proxy refused (its network_blocked events, written
through the store): each host with its count, most refused first, a hostile host name drawn as text; nothing when
none were refused; the header's refresh fragment says the same."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import store.events
from overnight.events import NetworkBlockedEvent
from store.models import TaskState
from tests.web.conftest import Browser

AT = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
HOSTILE = '<img src=x class="h9-injected" onerror="__h9pwn.push(1)">.example.com'


def _blocked(host: str, count: int = 1, phase: str = "agent") -> NetworkBlockedEvent:
    step = 2 if phase == "agent" else None
    return NetworkBlockedEvent(host=host, port=443, method="CONNECT", at=AT, phase=phase,  # type: ignore[arg-type]
                               step=step, reason="not in the allowlist", count=count)  # fmt: skip


def test_the_header_lists_the_blocked_hosts_most_refused_first(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    task_id = make_task("alice", state=TaskState.failed, reason="npm install failed")
    with sessions.begin() as session:
        for event in (
            _blocked("registry.example.com", 3),
            _blocked(HOSTILE),
            _blocked("files.example.org", 2, "setup"),
        ):
            store.events.append_event(session, task_id, event)
    alice = browser("alice")
    for path in (f"/tasks/{task_id}", f"/tasks/{task_id}/summary"):
        html = alice.page(path).text
        block = html.split('id="blocked-hosts"')[1].split("</div>")[0]
        assert block.index(">registry.example.com</code> \N{MULTIPLICATION SIGN}3") < block.index(
            ">files.example.org</code> \N{MULTIPLICATION SIGN}2"
        ), path
        assert "&lt;img src=x class=&#34;h9-injected&#34;" in block and "<img" not in block
        assert "refused 6 requests" in block and 'title="CONNECT · port 443 · setup · not in the allowlist"' in block


def test_a_task_without_refusals_shows_no_blocked_hosts(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded)
    assert 'id="blocked-hosts"' not in browser("alice").page(f"/tasks/{task_id}").text
