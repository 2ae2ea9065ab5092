"""A task's refused requests summed up per host from its network_blocked events, on SQLite and PostgreSQL:
the counts an event stands for add up, hosts are ordered by how often they were refused, the summary is bounded
however many events there are, and other tasks' events and other event types do not count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

import store.events
import store.network
import store.tasks
from overnight.events import NetworkBlockedEvent, ToolResultEvent
from overnight.network_report import MAX_HOSTS, blocked_hosts_line, markdown_section

T0 = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


def _task(session: Session) -> str:
    return store.tasks.create_task(session, repo="https://example.com/a/b.git", ref="main", instruction="x").id


def _blocked(
    host: str,
    *,
    port: int = 443,
    method: str = "CONNECT",
    phase: str = "agent",
    step: int | None = 1,
    reason: str = "not in the allowlist",
    count: int | None = None,
    at: datetime = T0,
) -> NetworkBlockedEvent:
    fields = {"count": count} if count is not None else {}
    return NetworkBlockedEvent(host=host, port=port, method=method, at=at, phase=phase,  # type: ignore[arg-type]
                               step=step, reason=reason, **fields)  # fmt: skip


def test_a_task_without_refusals_has_no_summary(session: Session) -> None:
    task_id = _task(session)
    store.events.append_event(session, task_id, ToolResultEvent(step=1, id="c", name="bash", error=False, output=""))
    assert store.network.blocked_summary(session, task_id) is None


def test_refusals_add_up_per_host_most_refused_first(session: Session) -> None:
    task_id, other = _task(session), _task(session)
    for event in [
        _blocked("registry.example.com", count=2, at=T0 + timedelta(seconds=5)),
        _blocked("registry.example.com", port=80, method="GET", step=4, at=T0 + timedelta(seconds=1)),
        _blocked("files.example.org", phase="setup", step=None, reason="private address"),
        _blocked("api.example.net", method="POST", port=443, reason="read-only policy"),
        _blocked("api.example.net", method="POST", port=443, reason="read-only policy"),
    ]:
        store.events.append_event(session, task_id, event)
    store.events.append_event(session, other, _blocked("registry.example.com", count=50))

    summary = store.network.blocked_summary(session, task_id)

    assert summary is not None and summary.requests == 6 and summary.more_hosts == 0
    assert [(h.host, h.requests) for h in summary.hosts] == [
        ("registry.example.com", 3), ("api.example.net", 2), ("files.example.org", 1)
    ]  # fmt: skip
    registry, api, files = summary.hosts
    assert registry.ports == [80, 443] and registry.methods == ["CONNECT", "GET"] and registry.phases == ["agent"]
    assert registry.first_at == T0 + timedelta(seconds=1)
    assert api.reasons == ["read-only policy"] and files.phases == ["setup"] and files.reasons == ["private address"]
    assert blocked_hosts_line(summary) == (
        "Blocked hosts: registry.example.com \N{MULTIPLICATION SIGN}3, api.example.net \N{MULTIPLICATION SIGN}2, "
        "files.example.org \N{MULTIPLICATION SIGN}1"
    )


def test_the_summary_lists_at_most_the_first_hosts_and_counts_the_rest(session: Session) -> None:
    task_id = _task(session)
    for number in range(MAX_HOSTS + 5):
        store.events.append_event(session, task_id, _blocked(f"h{number:02}.example.com", count=100 - number))

    summary = store.network.blocked_summary(session, task_id)

    assert summary is not None
    assert len(summary.hosts) == MAX_HOSTS and summary.more_hosts == 5
    assert summary.hosts[0].host == "h00.example.com" and summary.hosts[0].requests == 100
    assert blocked_hosts_line(summary).endswith("(and 5 more hosts)")


def test_the_pull_request_section_keeps_a_hostile_host_name_inside_its_code_span(session: Session) -> None:
    task_id = _task(session)
    store.events.append_event(session, task_id, _blocked("evil`](https://x.test)\n@everyone", count=2))

    summary = store.network.blocked_summary(session, task_id)

    assert summary is not None
    section = markdown_section(summary)
    assert section.startswith("**Blocked hosts:** `evil ](https://x.test) @everyone` \N{MULTIPLICATION SIGN}2\n")
    assert section.count("`") == 4  # the host's span, and the command's


def test_a_task_run_as_attempts_counts_the_refusals_of_every_attempt(session: Session) -> None:
    group = _task(session)
    first, second = _task(session), _task(session)
    for index, attempt in enumerate((first, second), start=1):
        row = store.tasks.get_task(session, attempt)
        assert row is not None
        row.attempt_of, row.attempt_index = group, index
        store.events.append_event(session, attempt, _blocked("registry.example.com", count=index))
    session.flush()

    summary = store.network.blocked_summary(session, group)

    assert summary is not None and [(h.host, h.requests) for h in summary.hosts] == [("registry.example.com", 3)]
    assert store.network.blocked_summary(session, first) is not None
    assert store.network.blocked_summary(session, first).requests == 1  # type: ignore[union-attr]
