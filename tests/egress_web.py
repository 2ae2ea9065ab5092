"""Web servers for egress proxy tests, on loopback addresses only, and a proxy that knows them by name: a hosts file
of the tests' own gives them names, and the proxy is told it may connect to the one "public" address among them.
Nothing leaves this machine."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Network
from pathlib import Path

from sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from sandbox.proxy import EgressLease, EgressProxy, ProxyConfig, ProxyPolicy

PUBLIC = "127.0.0.21"
"""Stands for a public host: the proxy is told it may connect there."""
PRIVATE = "127.0.0.22"
"""Stays what it is, a loopback address: the proxy must refuse it whatever name leads there."""
PARENT = "127.0.0.23"
HOSTS = {
    PUBLIC: "allowed.test elsewhere.test a.pkg.test pkg.test",
    PRIVATE: "rebound.test",
    "127.0.0.1": "localhost",
}


class _Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = f"{self.server.server_address[0]} {self.command} {self.path}\n".encode()  # type: ignore[index]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_OPTIONS = _answer

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Web:
    port: int
    proxy: EgressProxy


def _serve(address: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def egress_web() -> Iterator[Web]:
    """Web servers on the test's loopback addresses (one port for all) and a proxy that knows their names."""
    with socket.socket() as probe:
        probe.bind((PUBLIC, 0))
        port = int(probe.getsockname()[1])
    servers = [_serve(address, port) for address in (PUBLIC, PRIVATE, PARENT)]
    folder = Path(tempfile.mkdtemp(prefix="overnight-test-hosts-"))
    folder.chmod(0o755)
    (folder / "hosts").write_text("".join(f"{address} {names}\n" for address, names in HOSTS.items()))
    (folder / "hosts").chmod(0o644)
    proxy = EgressProxy(ProxyConfig(hosts_file=folder / "hosts", allowed_networks=(IPv4Network(f"{PUBLIC}/32"),),
                                    lease_root=folder / "leases"))  # fmt: skip
    try:
        yield Web(port=port, proxy=proxy)
    finally:
        proxy.close()
        for server in servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(folder)


StartLeased = Callable[[SandboxBackend, EgressProxy, ProxyPolicy], tuple[Sandbox, EgressLease]]


@contextlib.contextmanager
def leased_sandboxes(new_workspace: Callable[..., Path], task_id: str) -> Iterator[StartLeased]:
    """``start(backend, proxy, policy)``: an agent sandbox whose only way out is a new lease on ``proxy``; every
    sandbox and lease made is closed on the way out."""
    made: list[tuple[Sandbox, EgressLease]] = []

    def start(backend: SandboxBackend, proxy: EgressProxy, policy: ProxyPolicy) -> tuple[Sandbox, EgressLease]:
        lease = proxy.open(task_id, policy)
        try:
            workspace = new_workspace(backend, f"{task_id}{len(made)}")
            sandbox = backend.start(SandboxSpec(task_id=task_id, workspace=workspace, egress=lease.folder))
        except BaseException:
            lease.close()
            raise
        made.append((sandbox, lease))
        return sandbox, lease

    try:
        yield start
    finally:
        for sandbox, lease in made:
            sandbox.close()
            lease.close()
