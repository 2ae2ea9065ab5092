"""What the egress proxy costs (docs/sandbox.md, "The egress proxy's cost"): squid's start, a sandbox's ready time
with a lease against without, and one HTTP GET through the proxy against the same GET from the host.

    python -m bench.egress [--runs 7] [--gets 50] [--backends docker bwrap]

Nothing leaves the machine: the web server is on 127.0.0.21 (``tests/egress_web.py``'s servers and hosts file).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from overnight.settings import Settings
from sandbox.base import SandboxBackend, SandboxSpec
from sandbox.disk import remove_folder
from sandbox.proxy import ProxyPolicy
from tests.egress_web import Web, egress_web
from worker.sandboxes import sandbox_backend


def _median(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def _ready(backend: SandboxBackend, workspace: Path, lease_folder: Path | None) -> float:
    started = time.perf_counter()
    sandbox = backend.start(SandboxSpec(task_id="bench-egress", workspace=workspace, egress=lease_folder))
    try:
        sandbox.run("true")
        return time.perf_counter() - started
    finally:
        sandbox.close()


def measure(name: str, backend: SandboxBackend, web: Web, runs: int, gets: int) -> None:
    workspace = Path(tempfile.mkdtemp(prefix="bench-egress-")) / "ws"
    backend.create_workspace(workspace)
    lease = web.proxy.open("bench-egress", ProxyPolicy(domains=("allowed.test",)))
    try:
        plain, leased = [], []
        for _ in range(runs):
            plain.append(_ready(backend, workspace, None))
            leased.append(_ready(backend, workspace, lease.folder))
        sandbox = backend.start(SandboxSpec(task_id="bench-egress", workspace=workspace, egress=lease.folder))
        try:
            url = f"http://allowed.test:{web.port}/"
            script = f"for i in $(seq {gets}); do curl -s -o /dev/null {url}; done"
            started = time.perf_counter()
            sandbox.run(script, timeout=600)
            through = (time.perf_counter() - started) / gets
        finally:
            sandbox.close()
        host = subprocess.run(["bash", "-c", f"time (for i in $(seq {gets}); do curl -s -o /dev/null "
                                             f"--resolve allowed.test:{web.port}:127.0.0.21 {url}; done)"],
                              capture_output=True, text=True)  # fmt: skip
        real = next(line for line in host.stderr.splitlines() if line.startswith("real"))
        minutes, seconds = real.split()[1].rstrip("s").split("m")
        direct = (int(minutes) * 60 + float(seconds)) / gets
        print(f"| {name} | {_median(plain)} | {_median(leased)} | {through * 1000:.1f} ms | {direct * 1000:.1f} ms |")
    finally:
        lease.close()
        remove_folder(workspace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--gets", type=int, default=50)
    parser.add_argument("--backends", nargs="+", default=["docker", "bwrap"])
    args = parser.parse_args()
    with egress_web() as web:
        started = time.perf_counter()
        web.proxy.open("bench-start", ProxyPolicy(domains=None)).close()
        print(f"squid started and a lease opened in {(time.perf_counter() - started) * 1000:.0f} ms")
        print(
            "| backend | ready, no lease | ready, with a lease | curl GET through the proxy | curl GET from the host |"
        )
        print("|---|---|---|---|---|")
        for name in args.backends:
            settings = Settings(sandbox={"backend": name})  # type: ignore[arg-type]
            measure(name, sandbox_backend(settings), web, args.runs, args.gets)


if __name__ == "__main__":
    main()
