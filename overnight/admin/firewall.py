"""``overnight firewall``: the set-up network's firewall, kept in place where the Docker engine runs, for
workers that cannot install it themselves (OVERNIGHT_SANDBOX_SETUP_FIREWALL=external, as under compose)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.markup import escape

from overnight.settings import Settings

Say = Callable[[str], None]


def run_firewall(*, watch: float, check: bool, say: Say) -> int:
    """Install (or with ``check`` only look for) the rules; with ``watch``, re-apply them every ``watch``
    seconds, so that a host firewall reload or a reboot does not leave set-up sandboxes unfiltered for long."""
    from sandbox.egress import EgressError, docker_iptables, docker_jumps, install, installed
    from worker.sandboxes import setup_egress

    policy = setup_egress(Settings().sandbox)
    said = False
    while True:
        try:
            iptables = docker_iptables()
            if check:
                ok = installed(docker_jumps(), iptables=iptables)
                say("the set-up network's firewall is in place" if ok else "[red]not in place[/red]")
                return 0 if ok else 1
            install(policy, docker_jumps(), iptables=iptables)
        except EgressError as exc:
            say(f"[red]error:[/red] {escape(str(exc))}")
            if not watch:
                return 1
            said = False
        else:
            if not said:
                say(f"the set-up network's firewall is in place ({iptables})")
                said = True
            if not watch:
                return 0
        time.sleep(watch)
