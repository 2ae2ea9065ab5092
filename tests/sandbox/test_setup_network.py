"""The set-up phase's network, on both backends: a public address answers (the registries themselves:
``test_registry.py``); nothing of the host (its loopback, its own addresses), no link-local (metadata) and no
private address does, unless an operator allows that range or it is the configured proxy.

Every probe stays on this machine: the host's own addresses, and a test host of the test's own in a network
namespace (veth) holding a link-local, a private and a public-looking address (TEST-NET-2).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from sandbox.egress import CHAIN, EgressError, EgressPolicy, chain_rules, install, relay_gid, relay_jumps

LINK_LOCAL = "169.254.77.2"  # the veth's far end; never 169.254.169.254 itself
PRIVATE = "10.77.0.2"
PUBLIC = "198.51.100.77"
SERVER = (
    "import socket; s = socket.create_server(('0.0.0.0', {port})); print('up', flush=True)\n"
    "while True: s.accept()[0].close()"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


def host_addresses() -> list[str]:
    output = subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    return [info["local"] for link in json.loads(output) for info in link["addr_info"]]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port open on every address of the host (0.0.0.0), as a careless service's would be."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        server.close()


@dataclass(frozen=True)
class NamespaceHost:
    port: int


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def test_host() -> Iterator[NamespaceHost]:
    """A network namespace of this test's own, reached from the host over a veth, listening on one port at a
    link-local, a private and a public-looking address (each routed from the host as a /32)."""
    suffix = os.urandom(3).hex()
    namespace, outside, inside = f"ovn-th-{suffix}", f"ovth{suffix}", f"ovti{suffix}"
    port = _free_port()
    server: subprocess.Popen[bytes] | None = None
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
        _ip("addr", "add", "169.254.77.1/30", "dev", outside)
        _ip("link", "set", outside, "up")
        for address in (f"{LINK_LOCAL}/30", f"{PRIVATE}/32", f"{PUBLIC}/32"):
            _ip("-n", namespace, "addr", "add", address, "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")
        _ip("-n", namespace, "route", "add", "default", "via", "169.254.77.1")
        for address in (PRIVATE, PUBLIC):
            _ip("route", "add", f"{address}/32", "via", LINK_LOCAL, "dev", outside)
        server = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", SERVER.format(port=port)],
                                  stdout=subprocess.PIPE)  # fmt: skip
        assert server.stdout is not None and server.stdout.readline() == b"up\n"
        for address in (LINK_LOCAL, PRIVATE, PUBLIC):  # from the host, each answers
            socket.create_connection((address, port), timeout=3).close()
        yield NamespaceHost(port=port)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def answers(box: Sandbox, host: str, port: int) -> bool:
    result = box.run(f"timeout 3 bash -c '</dev/tcp/{host}/{port}' 2>/dev/null && echo open || echo closed")
    assert result.stdout.strip() in ("open", "closed"), result
    return result.stdout.strip() == "open"


def with_policy(backend: SandboxBackend, policy: EgressPolicy) -> SandboxBackend:
    config = backend.config.model_copy(update={"setup_egress": policy})  # type: ignore[attr-defined]
    return config.build()  # type: ignore[no-any-return]


def setup_box(backend: SandboxBackend, workspace: Path) -> Sandbox:
    return backend.start(SandboxSpec(task_id="setup-net", workspace=workspace, network=True, purpose="setup"))


@pytest.fixture
def workspace(backend: SandboxBackend, new_workspace: Callable[..., Path]) -> Path:
    return new_workspace(backend)


def test_setup_sandbox_reaches_no_host_service(backend: SandboxBackend, workspace: Path, listener: int) -> None:
    addresses = host_addresses()
    for address in addresses:  # the port is open on every host address, seen from the host
        socket.create_connection((address, listener), timeout=3).close()
    box = setup_box(backend, workspace)
    try:
        for address in addresses:  # loopback, eth0, docker0, the set-up bridge's gateway
            assert not answers(box, address, listener), address
        for port in (6379, 5432):  # the host's Redis and PostgreSQL
            assert not answers(box, "127.0.0.1", port), port
        assert not answers(box, "10.0.2.2", listener)  # slirp4netns' alias of the host's loopback
    finally:
        box.close()


def test_setup_sandbox_reaches_public_addresses_but_no_link_local_or_private(
    backend: SandboxBackend, workspace: Path, test_host: NamespaceHost
) -> None:
    box = setup_box(backend, workspace)
    try:
        assert answers(box, PUBLIC, test_host.port)  # the path works: what is refused is refused by the firewall
        assert not answers(box, LINK_LOCAL, test_host.port)
        assert not answers(box, PRIVATE, test_host.port)
    finally:
        box.close()


def test_an_allowed_private_range_and_the_proxy_answer(
    backend: SandboxBackend, workspace: Path, test_host: NamespaceHost, listener: int
) -> None:
    host = next(a for a in host_addresses() if not a.startswith("127."))
    policy = EgressPolicy(allowed_networks=(IPv4Network("10.77.0.0/24"),), proxy=f"http://{host}:{listener}")
    box = setup_box(with_policy(backend, policy), workspace)
    try:
        assert answers(box, PRIVATE, test_host.port)
        assert answers(box, host, listener)  # the proxy, on the host itself
        assert not answers(box, LINK_LOCAL, test_host.port)
        with socket.create_server(("0.0.0.0", 0)) as other:  # the host's other ports stay closed
            assert not answers(box, host, other.getsockname()[1])
    finally:
        box.close()
        install(EgressPolicy(), [])  # the default rules again, for whoever comes next


def test_agent_sandbox_has_no_network_at_all(
    backend: SandboxBackend, workspace: Path, test_host: NamespaceHost
) -> None:
    box = backend.start(SandboxSpec(task_id="agent-net", workspace=workspace))
    try:
        assert not answers(box, PUBLIC, test_host.port)
        assert box.run("cat /proc/net/route | wc -l").stdout.strip() == "1"  # a header, no route
    finally:
        box.close()


def test_docker_setup_network_is_a_bridge_of_its_own_without_inter_container_traffic(
    docker_backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    first, second = new_workspace(docker_backend, "a"), new_workspace(docker_backend, "b")
    a, b = setup_box(docker_backend, first), setup_box(docker_backend, second)
    try:
        networks = a.container.attrs["NetworkSettings"]["Networks"]  # type: ignore[attr-defined]
        assert list(networks) == ["overnight-setup"]
        address = b.container.attrs["NetworkSettings"]["Networks"]["overnight-setup"]["IPAddress"]  # type: ignore[attr-defined]
        serve = threading.Thread(target=b.run, args=('timeout 20 python3 -c "' + SERVER.format(port=8000) + '"',))
        serve.start()
        deadline = time.monotonic() + 15
        while True:  # the host reaches it: it is up
            try:
                socket.create_connection((address, 8000), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert not answers(a, address, 8000)
    finally:
        b.interrupt()
        serve.join()
        a.close()
        b.close()


def test_docker_backend_refuses_a_network_when_the_engine_is_in_another_namespace(tmp_path: Path) -> None:
    """As under compose: the worker does not see the set-up bridge, so it cannot install the firewall."""
    namespace = f"ovn-nofw-{os.urandom(3).hex()}"
    _ip("netns", "add", namespace)
    code = (
        "import sys; from pathlib import Path\n"
        "from sandbox.base import SandboxSpec, SandboxUnavailableError\n"
        "from sandbox.docker import DockerConfig\n"
        "from tests.conftest import SANDBOX_IMAGE, TEST_LIMITS\n"
        "try:\n"
        "    limits = {**TEST_LIMITS, 'disk_limit': 0}  # a plain folder as workspace\n"
        "    DockerConfig(image=SANDBOX_IMAGE, **limits).build().start(SandboxSpec(task_id='nofw',"
        " workspace=Path(sys.argv[1]), network=True, purpose='setup'))\n"
        "except SandboxUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    try:
        result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code, str(tmp_path)],
                                capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    assert "is not in this network namespace" in result.stdout, result.stdout + result.stderr
    assert "OVERNIGHT_SANDBOX_SETUP_FIREWALL=external" in result.stdout


def test_firewall_install_is_idempotent() -> None:
    gid = relay_gid()
    for _ in range(2):
        install(EgressPolicy(), relay_jumps(gid))
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
    assert rules.count(f"--gid-owner {gid} -j {CHAIN}") == 1
    chain = subprocess.run(["iptables", "-w", "-S", CHAIN], capture_output=True, text=True, check=True).stdout
    assert chain.count("-j REJECT") == len([r for r in chain_rules(EgressPolicy()) if "REJECT" in r])


def test_policy_refuses_metadata_and_loopback_and_an_unknown_proxy() -> None:
    for network in ("169.254.0.0/16", "169.254.169.254/32", "127.0.0.0/8", "0.0.0.0/0"):
        with pytest.raises(ValueError, match="cannot be allowed"):
            EgressPolicy(allowed_networks=(IPv4Network(network),))
    with pytest.raises(EgressError, match="names no host"):
        chain_rules(EgressPolicy(proxy="http://:3128"))
    rules = [" ".join(rule) for rule in chain_rules(EgressPolicy(proxy="http://127.0.0.1:3128"))]
    assert rules.index("-d 127.0.0.1/32 -p tcp --dport 3128 -j RETURN") < rules.index(
        "-m addrtype --dst-type LOCAL -j REJECT --reject-with icmp-admin-prohibited"
    )


def test_overnight_firewall_installs_and_checks_the_docker_rules(docker_backend: SandboxBackend) -> None:
    installed = subprocess.run(["overnight", "firewall"], capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    checked = subprocess.run(["overnight", "firewall", "--check"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "in place" in checked.stderr, checked.stderr
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
    for parent in ("DOCKER-USER", "INPUT"):
        assert rules.count(f"-A {parent} -i ovn-setup0 -j {CHAIN}") == 1


def test_the_relay_dies_with_its_worker(sandbox_rootfs: Path, tmp_path: Path) -> None:
    """bubblewrap's slirp4netns relay is not left behind when the worker is killed (kill -9)."""
    code = (
        "import sys; from pathlib import Path\n"
        "from sandbox.base import SandboxSpec\n"
        "from sandbox.bwrap import BwrapConfig\n"
        "from tests.conftest import TEST_LIMITS\n"
        "workspace = Path(sys.argv[2]); workspace.mkdir()\n"
        "backend = BwrapConfig(rootfs=Path(sys.argv[1]), environments=workspace.parent / 'envs',"
        " **{**TEST_LIMITS, 'disk_limit': 0}).build()\n"
        "box = backend.start(SandboxSpec(task_id='relay', workspace=workspace, network=True, purpose='setup'))\n"
        "print(box.network.process.pid, flush=True)\n"
        "box.run('sleep 1000', timeout=1000)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code, str(sandbox_rootfs), str(tmp_path / "ws")],
                              stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])  # fmt: skip
    assert worker.stdout is not None
    relay = int(worker.stdout.readline())
    assert _running(relay, "slirp4netns")
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while _running(relay, "slirp4netns"):
        assert time.monotonic() < deadline, "the relay outlived its worker"
        time.sleep(0.1)


def _running(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.index("(") + 1 : stat.rindex(")")] == name and stat[stat.rindex(")") + 2] != "Z"
