"""The requests a task's egress proxy refused, summed up per host: what the task's result (``GET
/v1/tasks/ID``), the pull request's body, the web page and ``overnight show`` say about its
``network_blocked`` events (the issue's "Blocked hosts: registry.example.com, 3 times", with a multiplication sign).

Imports pydantic and the standard library only. The sum is made from rows already grouped by the store (one per
host, port, method, phase and reason), so it stays small however many requests were refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_HOSTS = 20
"""Hosts listed by name; the others are only counted (``more_hosts``)."""

TIMES = "\N{MULTIPLICATION SIGN}"
Phase = Literal["setup", "agent"]


class BlockedHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    requests: int = Field(description="Refused requests to this host (every port, method and phase).")
    ports: list[int] = Field(description="Ascending.")
    methods: list[str] = Field(description="Sorted; CONNECT is an HTTPS tunnel.")
    phases: list[Phase] = Field(description="setup, agent or both.")
    reasons: list[str] = Field(description="Why they were refused, most frequent first.")
    first_at: datetime = Field(description="When the first of them was refused.")


class BlockedSummary(BaseModel):
    """The requests the egress proxy refused during the task (its ``network_blocked`` events)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int = Field(description="Refused requests in all.")
    hosts: list[BlockedHost] = Field(description=f"Most refused first, at most {MAX_HOSTS}.")
    more_hosts: int = Field(default=0, description="Hosts refused too but not listed (beyond the first ones).")


@dataclass(frozen=True, kw_only=True)
class BlockedGroup:
    """Refused requests alike in host, port, method, phase and reason: how many, and the first one's time."""

    host: str
    port: int
    method: str
    phase: Phase
    reason: str
    requests: int
    first_at: datetime


def summarize(groups: Iterable[BlockedGroup], *, host_count: int | None = None) -> BlockedSummary | None:
    """The summary of these groups (None: nothing was refused). ``host_count`` is how many hosts were refused
    in all, when ``groups`` leave some out."""
    by_host: dict[str, list[BlockedGroup]] = {}
    for group in groups:
        by_host.setdefault(group.host, []).append(group)
    if not by_host:
        return None
    hosts = sorted((_host(host, alike) for host, alike in by_host.items()), key=lambda h: (-h.requests, h.host))
    listed = hosts[:MAX_HOSTS]
    total_hosts = max(host_count or 0, len(hosts))
    return BlockedSummary(requests=sum(h.requests for h in hosts), hosts=listed, more_hosts=total_hosts - len(listed))


def _host(host: str, groups: list[BlockedGroup]) -> BlockedHost:
    reasons: dict[str, int] = {}
    for group in groups:
        reasons[group.reason] = reasons.get(group.reason, 0) + group.requests
    return BlockedHost(
        host=host,
        requests=sum(g.requests for g in groups),
        ports=sorted({g.port for g in groups}),
        methods=sorted({g.method for g in groups}),
        phases=[phase for phase in ("setup", "agent") if any(g.phase == phase for g in groups)],
        reasons=sorted(reasons, key=lambda reason: (-reasons[reason], reason)),
        first_at=min(g.first_at for g in groups),
    )


def blocked_hosts_line(summary: BlockedSummary) -> str:
    """One line for a person: each host and its count, most refused first, and how many more hosts there were."""
    listed = ", ".join(f"{host.host} {TIMES}{host.requests}" for host in summary.hosts)
    more = summary.more_hosts
    return f"Blocked hosts: {listed}" + (f" (and {more} more host{'s' if more != 1 else ''})" if more else "")


def markdown_section(summary: BlockedSummary) -> str:
    """The pull request body's part: the line, then a note on what it means and where to allow a host. Host
    names are a task's (hostile) input: they go in code spans, with backticks and line breaks taken out."""
    hosts = ", ".join(f"`{_plain(host.host)}` {TIMES}{host.requests}" for host in summary.hosts)
    more = f" (and {summary.more_hosts} more)" if summary.more_hosts else ""
    return (
        f"**Blocked hosts:** {hosts}{more}\n\n"
        f"The sandbox's network policy refused {summary.requests} request{'s' if summary.requests != 1 else ''}: "
        "a host the task needs can be allowed in its environment (`overnight env set`)."
    )


def _plain(text: str) -> str:
    return "".join(" " if ch in "`\r\n" or ord(ch) < 32 else ch for ch in text)[:253]
