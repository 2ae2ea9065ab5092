"""CLI start-up time: the client must start in well under half a second.

Times `--help`, a usage error, and real requests (`list`, `show`) against a running API (uvicorn in its own
process on a SQLite file; the queue is never reached by these commands).

python -m bench.cli [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import store.tasks
import store.users
from store.engine import make_engine, make_sessionmaker, migrate

OFFLINE = (["overnight", "--help"], ["overnight", "show", "--help"], ["overnight", "diff"])


def timed(command: list[str], runs: int, env: dict[str, str] | None = None) -> str:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    ordered = sorted(times)
    p95 = ordered[min(round(0.95 * (len(ordered) - 1)), len(ordered) - 1)]
    return f"{' '.join(command[:3]):28} median {statistics.median(times) * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for command in OFFLINE:
        print(timed(command, args.runs))
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as name:
        database = f"sqlite:///{Path(name) / 'overnight.db'}"
        migrate(make_engine(database))
        with make_sessionmaker(make_engine(database)).begin() as session:
            token = store.users.create_token(session, "bench")
            task_id = store.tasks.create_task(
                session, repo="https://example.com/a/b.git", ref="main", instruction="x"
            ).id
            store.tasks.get_task(session, task_id).user_id = store.users.user_for_token(session, token).id  # type: ignore[union-attr]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server_env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
            "OVERNIGHT_DATA_DIR": name, "OVERNIGHT_DATABASE_URL": database,
            "OVERNIGHT_BROKER_URL": "redis://127.0.0.1:6379/0",
        }  # fmt: skip
        command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        api = subprocess.Popen(command, env=server_env, start_new_session=True)
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            client_env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
                "OVERNIGHT_SERVER": f"http://127.0.0.1:{port}", "OVERNIGHT_TOKEN": token,
                "OVERNIGHT_CONFIG_DIR": name,
            }  # fmt: skip
            for command in (["overnight", "list", "--json"], ["overnight", "show", task_id, "--json"]):
                assert subprocess.run(command, capture_output=True, env=client_env).returncode == 0, command
                print(timed(command, args.runs, client_env))
        finally:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(timeout=30)


if __name__ == "__main__":
    main()
