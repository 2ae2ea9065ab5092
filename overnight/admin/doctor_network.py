"""`overnight doctor`'s checks of issue 18: the egress proxy the worker runs for the sandboxes' network, every
stored environment's network policies, and the server key against every stored secret.

No check prints a secret's value: a secret that does not open is named by its environment's pattern and its
name, as ``overnight env show`` names it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from overnight.admin.doctor import Check, _check
from overnight.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

MAX_NAMED = 3
"""Environments or secrets named in one finding; the rest are counted."""
SQUID = ("squid", "/usr/sbin/squid")
PROBE_ALLOWED = "allowed.doctor.invalid"
PROBE_REFUSED = "refused.doctor.invalid"


def network_checks(settings: Settings, *, database_ok: bool) -> list[Check]:
    """The proxy check, and — when the database answered (its own check says why not) — the stored policies and
    secrets."""
    checks = [
        _check(
            "egress proxy installed",
            "install Debian's squid on every worker (apt-get install squid); docs/environments.md",
            lambda: _proxy(SQUID),
        )
    ]
    if checks[0].ok:
        checks.append(
            _check(
                "egress proxy refuses and records a request outside the allowlist",
                "run doctor as the worker's user (root: squid starts as the `proxy` account), check "
                "OVERNIGHT_SANDBOX_PROXY and OVERNIGHT_SANDBOX_EGRESS_ALLOWED_NETWORKS; docs/sandbox.md",
                lambda: _proxy_probe(settings),
            )
        )
    if not database_ok:
        return checks
    return [
        *checks,
        _check(
            "environment network policies parse",
            "set the named environment's policies again (`overnight env set PATTERN --agent-network ...`)",
            lambda: _policies(settings),
        ),
        _check(
            "secrets key opens every stored secret",
            "give the API and every worker the key the secrets were sealed with (OVERNIGHT_SECRETS_KEY or "
            "OVERNIGHT_SECRETS_KEY_FILE, every old key after the new one), or set the named secrets again; "
            "docs/environments.md",
            lambda: _secrets(settings),
        ),
    ]


def _proxy(candidates: tuple[str, ...]) -> str:
    """Squid is there and runs (``squid -v``): the worker starts its own instance for each task's sandboxes."""
    found = next((path for path in (shutil.which(name) for name in candidates) if path), None)
    if found is None:
        raise RuntimeError("squid is not installed (no `squid` on PATH nor /usr/sbin/squid)")
    result = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=30, check=False)
    first = (result.stdout.strip().splitlines() or ["(no output)"])[0]
    if result.returncode != 0:
        raise RuntimeError(f"`{found} -v` exited {result.returncode}: {result.stderr.strip()[:200] or first}")
    return f"{first} at {found}"


def _proxy_probe(settings: Settings) -> str:
    """The proxy as the worker runs it (``sandbox.proxy``): squid started as its own user with the worker's
    upstream and allowed networks, a sandbox's lease whose allowlist names one host, a request for another host
    from that lease's address answered 403 by the policy, and the refusal read back as a task would get it.
    Nothing leaves the machine: the refused host is never looked up."""
    from sandbox.proxy import EgressProxy, ProxyConfig, ProxyPolicy

    sandbox = settings.sandbox
    config = ProxyConfig(upstream=sandbox.proxy, allowed_networks=tuple(sandbox.egress_allowed_networks))
    proxy = EgressProxy(config)
    started = time.monotonic()
    try:
        lease = proxy.open("doctor", ProxyPolicy(domains=(PROBE_ALLOWED,)))
        try:
            status = _ask(proxy.connect(lease.address), PROBE_REFUSED)
            if status != "403":
                raise RuntimeError(f"a host outside the allowlist was answered {status}, not refused (403)")
            refusal = _refusal(lease.refusals, PROBE_REFUSED)
        finally:
            lease.close()
    finally:
        proxy.close()
    seconds = time.monotonic() - started
    return f"squid refused a host outside a sandbox's allowlist and recorded it ({refusal}) in {seconds:.2f} s"


def _ask(connection: socket.socket, host: str) -> str:
    """The status code squid answers a plain HTTP request for ``host`` with."""
    with connection:
        connection.settimeout(10)
        connection.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = connection.recv(4096)
            if not chunk:
                break
            head += chunk
    parts = head.split(b"\r\n", 1)[0].split()
    return parts[1].decode(errors="replace") if len(parts) > 1 else f"nothing ({head[:60]!r})"


def _refusal(read: Callable[[], list[Any]], host: str) -> str:
    """The reason of the refusal recorded for ``host`` (squid writes its log as the request ends)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for refusal in read():
            if refusal.host == host:
                return str(refusal.reason)
        time.sleep(0.05)
    raise RuntimeError(
        "squid refused the request but its refusal was not recorded: no network_blocked event would say so"
    )


def _session(settings: Settings) -> Session:
    from store.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings.resolved_database_url))()


def _policies(settings: Settings) -> str:
    """Each environment's set-up and agent policies read back as the worker reads them."""
    from pydantic import ValidationError
    from sqlalchemy import select

    from overnight.environments import DEFAULT_AGENT_NETWORK, DEFAULT_SETUP_NETWORK, stored_policy
    from store.models import Environment

    with _session(settings) as session:
        rows = session.execute(
            select(Environment.id, Environment.pattern, Environment.setup_network, Environment.agent_network)
        ).all()
    broken = []
    for env_id, pattern, setup, agent in rows:
        for phase, data, default in (("set-up", setup, DEFAULT_SETUP_NETWORK), ("agent", agent, DEFAULT_AGENT_NETWORK)):
            try:
                stored_policy(data, default)
            except (ValidationError, ValueError, TypeError) as exc:
                why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                broken.append(f"{pattern} (id {env_id}) {phase} policy: {why}")
    if broken:
        raise RuntimeError(_named(broken, "policies that do not parse"))
    return f"{len(rows)} environment{'s' if len(rows) != 1 else ''}, every policy parses"


def _secrets(settings: Settings) -> str:
    """The configured keys parse and open every stored secret (which is then dropped, never shown)."""
    from sqlalchemy import select

    from overnight.secrets import SecretsUnavailable
    from store.models import Environment, EnvironmentSecret

    with _session(settings) as session:
        rows = session.execute(
            select(Environment.pattern, EnvironmentSecret.name, EnvironmentSecret.ciphertext)
            .join(Environment, Environment.id == EnvironmentSecret.environment_id)
            .order_by(Environment.pattern, EnvironmentSecret.name)
        ).all()
    configured = settings.secrets.key is not None or settings.secrets.key_file is not None
    if not configured:
        if rows:
            raise RuntimeError(f"secrets are stored ({len(rows)}) but no key is set, so no task can be given them")
        return "no key set and no secret stored (setting a secret answers 503 until a key is set)"
    box = settings.secrets.box()  # a key that does not parse, or a key file that cannot be read, raises here
    closed = []
    for pattern, name, ciphertext in rows:
        try:
            box.open(ciphertext, pattern=pattern, name=name)
        except SecretsUnavailable:
            closed.append(f"{name} of {pattern}")
    if closed:
        raise RuntimeError(_named(closed, "secrets that do not open with these keys"))
    keys = f"{box.key_count} key{'s' if box.key_count != 1 else ''}"
    return f"{keys}; {len(rows)} stored secret{'s' if len(rows) != 1 else ''}, every one opens"


def _named(found: list[str], what: str) -> str:
    more = f" and {len(found) - MAX_NAMED} more" if len(found) > MAX_NAMED else ""
    return f"{what} ({len(found)}): " + "; ".join(found[:MAX_NAMED]) + more
