"""A task's network policies at work through the egress proxy (``sandbox/proxy.py``, docs/environments.md): which
sandbox gets a lease on it, and the ``network_blocked`` events of what the proxy refused.

``none`` costs nothing: no lease, no proxy, the sandbox starts as it always did. ``allowlist`` and ``full`` give
the sandbox no network of its own but a lease: the proxy is its only way out. Refusals are read after each tool
result (the step of the command that made them) and once more when the phase ends; alike refusals (host, port,
method, reason) of one command are one event with a count, and a phase emits at most ``MAX_BLOCKED_EVENTS``.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Literal

from overnight.environments import AllowlistNetwork, FullNetwork, Policy
from overnight.events import EventSink, NetworkBlockedEvent, TaskEvent, ToolResultEvent
from sandbox.proxy import EgressError, EgressLease, EgressProxy, ProxyPolicy
from worker.errors import TaskFailure

log = logging.getLogger(__name__)
MAX_BLOCKED_EVENTS = 100
"""network_blocked events one phase of a task emits at most (the rest are counted in the worker's log)."""


def proxy_policy(policy: Policy) -> ProxyPolicy | None:
    """What the proxy enforces for ``policy``; None: no lease (``none``: no network at all)."""
    if isinstance(policy, AllowlistNetwork):
        return ProxyPolicy(domains=tuple(policy.domains), read_only=policy.read_only)
    if isinstance(policy, FullNetwork):
        return ProxyPolicy(domains=None)
    return None


def open_lease(
    egress: EgressProxy | None, task_id: str, policy: Policy, stack: ExitStack, *, phase: str
) -> EgressLease | None:
    """A lease for the phase's sandbox (closed with ``stack``), or None when its policy wants no network."""
    wanted = proxy_policy(policy)
    if wanted is None:
        return None
    if egress is None:
        raise TaskFailure(f"the {phase} network policy '{policy.mode}' needs the egress proxy, which this worker lacks")
    try:
        lease = egress.open(task_id, wanted)
    except EgressError as exc:
        raise TaskFailure(f"{phase}: the egress proxy could not be used: {exc}") from exc
    stack.callback(lease.close)
    return lease


class BlockedReport:
    """An event sink that passes every event on and, after each tool result, emits the refusals its command
    caused; ``flush`` reads the last ones (the end of a phase)."""

    def __init__(self, lease: EgressLease, emit: EventSink, *, phase: Literal["setup", "agent"]) -> None:
        self.lease = lease
        self.emit = emit
        self.phase: Literal["setup", "agent"] = phase
        self.sent = 0
        self.dropped = 0
        self.step: int | None = None

    def __call__(self, event: TaskEvent) -> None:
        self.emit(event)
        if isinstance(event, ToolResultEvent):
            self.step = event.step
            self.flush()

    def flush(self) -> None:
        for refusal in self.lease.refusals():
            if self.sent >= MAX_BLOCKED_EVENTS:
                self.dropped += refusal.count
                continue
            self.sent += 1
            self.emit(NetworkBlockedEvent(
                host=refusal.host, port=refusal.port, method=refusal.method, at=refusal.at, phase=self.phase,
                step=self.step, reason=refusal.reason, count=refusal.count,
            ))  # fmt: skip
        if self.dropped:
            log.warning("%d more refused requests of the %s phase were not recorded", self.dropped, self.phase)
            self.dropped = 0


def network_note(policy: Policy) -> str | None:
    """What the model is told of its network (None: nothing; ``none`` is what the task prompt already assumes)."""
    if isinstance(policy, AllowlistNetwork):
        methods = " with GET, HEAD and OPTIONS only (so no HTTPS)" if policy.read_only else ""
        return (f"Network: commands reach only these hosts{methods}, through the proxy in HTTP_PROXY/HTTPS_PROXY: "
                f"{', '.join(policy.domains)}. Requests to any other host are refused (HTTP 403).")  # fmt: skip
    if isinstance(policy, FullNetwork):
        return "Network: commands reach public hosts through the proxy in HTTP_PROXY/HTTPS_PROXY (no private address)."
    return None
