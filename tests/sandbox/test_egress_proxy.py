"""The egress proxy (``sandbox/proxy.py``), on both backends: an agent sandbox with an allowlist reaches its hosts
through squid and nothing else; what squid refuses is recorded with host, port, method and reason; a command
that ignores HTTP_PROXY reaches nothing; an allowed name that resolves to a private or loopback address is
refused; one sandbox cannot use another's socket or policy.

Nothing leaves this machine: the test's web servers listen on 127.0.0.x, a hosts file of the test's own gives
them names, and the proxy is told it may connect to the one "public" address among them (``allowed_networks``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.base import Sandbox, SandboxBackend
from sandbox.proxy import EgressError, EgressLease, EgressProxy, ProxyConfig, ProxyPolicy, doctor_probe
from sandbox.reaper import reap_folders
from tests.egress_web import PARENT, PRIVATE, PUBLIC, Web, egress_web, leased_sandboxes


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with egress_web() as servers:
        yield servers


@pytest.fixture
def leased(
    web: Web, new_workspace: Callable[..., Path]
) -> Iterator[Callable[[SandboxBackend, ProxyPolicy], tuple[Sandbox, EgressLease]]]:
    """``leased(backend, policy)``: an agent sandbox whose only way out is a new lease on the proxy."""
    with leased_sandboxes(new_workspace, "proxytest") as start:
        yield lambda backend, policy: start(backend, web.proxy, policy)


def curl(sandbox: Sandbox, url: str, *options: str) -> str:
    """The status code (and body) curl gets, or 000 when it reached nothing."""
    result = sandbox.run(f"curl -sS --max-time 10 -w ' %{{http_code}}' {' '.join(options)} {url}", timeout=30)
    return " ".join(result.stdout.split())


def test_an_allowlisted_host_answers_and_another_is_refused_and_recorded(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    sandbox, lease = leased(backend, ProxyPolicy(domains=("allowed.test",)))
    assert curl(sandbox, f"http://allowed.test:{web.port}/simple/") == f"{PUBLIC} GET /simple/ 200"
    assert curl(sandbox, f"http://elsewhere.test:{web.port}/x").endswith("403")
    assert curl(sandbox, f"https://elsewhere.test:{web.port}/x").endswith("000")  # CONNECT refused: curl says 000
    refusals = lease.refusals()
    assert {(r.host, r.port, r.method, r.reason) for r in refusals} == {
        ("elsewhere.test", web.port, "GET", "not in the allowlist"),
        ("elsewhere.test", web.port, "CONNECT", "not in the allowlist"),
    }
    assert lease.refusals() == []  # each refusal is read once


def test_a_command_that_ignores_the_proxy_reaches_nothing(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    sandbox, _ = leased(backend, ProxyPolicy(domains=None))
    assert curl(sandbox, f"http://{PUBLIC}:{web.port}/", "--noproxy '*'").endswith("000")
    raw = sandbox.run(
        "python3 - <<'EOF'\nimport socket\n"
        f"for address in ('{PUBLIC}', '198.51.100.7', '172.17.0.1', '10.0.2.2', '169.254.169.254'):\n"
        "    try:\n        socket.create_connection((address, 80), timeout=3); print(address, 'CONNECTED')\n"
        "    except OSError as exc:\n        print(address, type(exc).__name__)\nEOF",
        timeout=60,
    )
    assert "CONNECTED" not in raw.stdout and raw.stdout.count("\n") == 5, raw
    devices = sandbox.run("tail -n +3 /proc/net/dev").stdout.splitlines()
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]  # no interface but loopback...
    assert len(sandbox.run("cat /proc/net/route").stdout.splitlines()) <= 1  # ...and no route: the header only


def test_an_allowed_name_that_resolves_to_a_private_address_is_refused(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    sandbox, lease = leased(backend, ProxyPolicy(domains=("rebound.test", "allowed.test")))
    assert curl(sandbox, f"http://rebound.test:{web.port}/").endswith("403")
    full, full_lease = leased(backend, ProxyPolicy(domains=None))  # full: the public internet only
    for address in ("127.0.0.1", "localhost", PRIVATE, "169.254.169.254", "10.1.2.3", "[::1]"):
        # (--noproxy '': loopback is in NO_PROXY, which would keep curl in the sandbox's own loopback)
        assert curl(full, f"http://{address}:{web.port}/", "--noproxy ''").endswith("403"), address
    assert curl(full, f"http://allowed.test:{web.port}/").endswith("200")
    assert {r.reason for r in lease.refusals()} == {"private address"}
    refused = {r.host for r in full_lease.refusals()}
    assert refused == {"127.0.0.1", "localhost", PRIVATE, "169.254.169.254", "10.1.2.3", "[::1]"}


def test_one_sandbox_cannot_use_anothers_socket_or_policy(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    first, first_lease = leased(backend, ProxyPolicy(domains=("allowed.test",)))
    second, second_lease = leased(backend, ProxyPolicy(domains=("elsewhere.test",)))
    assert curl(first, f"http://allowed.test:{web.port}/").endswith("200")
    assert curl(second, f"http://allowed.test:{web.port}/").endswith("403")
    assert curl(second, f"http://elsewhere.test:{web.port}/").endswith("200")
    assert [r.host for r in second_lease.refusals()] == ["allowed.test"]
    assert first_lease.refusals() == []
    # Its own folder holds one socket, the exec server's alone; the other's is nowhere to be found.
    listing = first.run(
        'ls -a /overnight/egress; python3 -c "import socket; s = socket.socket(socket.AF_UNIX); '
        "s.connect('/overnight/egress/proxy.sock')\" 2>&1 | tail -1; "
        f"find / -name proxy.sock -not -path '/proc/*' 2>/dev/null; ls {second_lease.folder} 2>&1"
    ).stdout
    assert "PermissionError" in listing and listing.count("proxy.sock") == 2, listing  # ls + find: its own only


def test_wildcards_read_only_and_the_upstream_proxy(web: Web, tmp_path: Path) -> None:
    """Without a sandbox, straight to a lease's socket as the exec server would: ``*.pkg.test`` is every host
    under pkg.test but not pkg.test itself; read-only lets GET, HEAD and OPTIONS through and refuses POST and
    every CONNECT; with an upstream proxy, squid forwards through it."""
    wildcard = web.proxy.open("wild", ProxyPolicy(domains=("*.pkg.test",), read_only=True))
    try:
        assert _status(wildcard, "GET", f"http://a.pkg.test:{web.port}/") == 200
        assert _status(wildcard, "HEAD", f"http://a.pkg.test:{web.port}/") == 200
        assert _status(wildcard, "OPTIONS", f"http://a.pkg.test:{web.port}/") == 200
        assert _status(wildcard, "GET", f"http://pkg.test:{web.port}/") == 403
        assert _status(wildcard, "POST", f"http://a.pkg.test:{web.port}/") == 403
        assert _status(wildcard, "CONNECT", f"a.pkg.test:{web.port}") == 403
        reasons = {(r.host, r.method, r.reason) for r in wildcard.refusals()}
        assert ("pkg.test", "GET", "not in the allowlist") in reasons
        assert ("a.pkg.test", "POST", "read-only policy") in reasons
        assert ("a.pkg.test", "CONNECT", "read-only policy") in reasons
    finally:
        wildcard.close()
    chained = EgressProxy(web.proxy.config.model_copy(update={"upstream": f"http://{PARENT}:{web.port}"}))
    lease = chained.open("chain", ProxyPolicy(domains=("allowed.test",)))
    try:
        answer = _request(lease, "GET", f"http://allowed.test:{web.port}/via")
        assert f"{PARENT} GET http://allowed.test:{web.port}/via" in answer  # the parent answered, not the host
    finally:
        lease.close()
        chained.close()


def _request(lease: EgressLease, method: str, target: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(lease.folder / "proxy.sock"))
        sock.sendall(
            f"{method} {target} HTTP/1.0\r\nHost: {target.split('/')[2] if '/' in target else target}\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if method == "CONNECT" and b"\r\n\r\n" in data:
                break
    return data.decode(errors="replace")


def _status(lease: EgressLease, method: str, target: str) -> int:
    return int(_request(lease, method, target).split()[1])


def test_the_doctor_probe_starts_a_proxy_of_its_own_and_sees_it_refuse() -> None:
    assert doctor_probe(ProxyConfig()).endswith("refused a request outside its allowlist and logged it")
    with pytest.raises(EgressError, match="needs squid"):
        doctor_probe(ProxyConfig(squid="/nonexistent/squid"))


def test_a_squid_that_died_is_started_again_and_open_leases_go_on(web: Web) -> None:
    proxy = EgressProxy(web.proxy.config)
    try:
        first = proxy.open("first", ProxyPolicy(domains=("allowed.test",)))
        assert proxy._process is not None
        proxy._process.kill()
        proxy._process.wait()
        assert _status(first, "GET", f"http://allowed.test:{web.port}/") == 200  # its next request starts squid
        proxy._process.kill()
        proxy._process.wait()
        second = proxy.open("second", ProxyPolicy(domains=("elsewhere.test",)))  # so does a new lease
        assert _status(first, "GET", f"http://allowed.test:{web.port}/") == 200
        assert _status(first, "GET", f"http://elsewhere.test:{web.port}/") == 403
        assert _status(second, "GET", f"http://elsewhere.test:{web.port}/") == 200
        assert [r.host for r in first.refusals()] == ["elsewhere.test"] and second.refusals() == []
    finally:
        proxy.close()


def test_the_refusal_log_is_rotated_and_no_refusal_is_lost(web: Web) -> None:
    proxy = EgressProxy(web.proxy.config.model_copy(update={"log_rotate_bytes": 1}))
    try:
        lease = proxy.open("rotate", ProxyPolicy(domains=("allowed.test",)))
        seen = []
        for index in range(4):
            assert _status(lease, "GET", f"http://elsewhere.test:{web.port}/{index}") == 403
            seen += lease.refusals()
            time.sleep(1.1)
        seen += lease.refusals()
        assert sum(refusal.count for refusal in seen) == 4
        assert proxy._folder is not None and not (proxy._folder / "refusals.old").exists()
        assert (proxy._folder / "refusals.log").stat().st_size < 200  # the last line at most
    finally:
        proxy.close()


def test_squid_dies_with_its_worker_and_the_reaper_removes_its_folders(web: Web, tmp_path: Path) -> None:
    """A worker killed with -9 leaves no squid (its parent-death signal) and folders the reaper removes."""
    root = Path(tempfile.mkdtemp(prefix="overnight-test-egress-"))  # squid's user reaches it (tmp_path: not)
    root.chmod(0o755)
    code = (
        "import sys, time; from pathlib import Path\n"
        "from sandbox.proxy import EgressProxy, ProxyConfig, ProxyPolicy\n"
        f"proxy = EgressProxy(ProxyConfig(lease_root=Path({str(tmp_path / 'leases')!r}), "
        f"state_root=Path({str(root)!r})))\n"
        "lease = proxy.open('killed', ProxyPolicy(domains=None))\n"
        "print(proxy._process.pid, proxy._folder, lease.folder, flush=True)\n"
        "time.sleep(600)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
    assert worker.stdout is not None
    pid, state, lease = worker.stdout.readline().split()
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert Path(state).is_dir() and Path(lease).is_dir()
    try:
        removed = reap_folders([root, tmp_path / "leases"])
        assert {Path(state), Path(lease)} <= set(removed) and not Path(state).exists() and not Path(lease).exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_squids_own_manager_and_internal_pages_are_refused(web: Web) -> None:
    lease = web.proxy.open("manager", ProxyPolicy(domains=None))
    try:
        port = web.proxy._port
        for target in ("cache_object://localhost/info", f"http://127.0.0.1:{port}/squid-internal-mgr/info",
                       f"http://localhost:{port}/squid-internal-mgr/menu", f"http://{port}/"):  # fmt: skip
            assert _status(lease, "GET", target) == 403, target
    finally:
        lease.close()
