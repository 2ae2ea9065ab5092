"""Load benchmark: 500 tasks against the scripted model with 2 workers — none lost, every one ends — with
API latency (create, show) measured under that load, then the time from submit to the first model request
for a repository already in the mirror cache.

Runs the real processes: `uvicorn` for the API and `python -m worker` twice, Redis (this machine's, on a
queue of its own), a SQLite database file, Docker sandboxes.

    python -m bench.load [--tasks 500] [--workers 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

import store.users
from agent.scripted import ScriptedCall, ScriptedModel, ScriptedModelServer, ScriptedTurn
from store.engine import make_engine, make_sessionmaker, migrate

FINISH = ScriptedTurn(
    tool_calls=[ScriptedCall(name="finish", arguments={"summary": "-", "pr_title": "load", "pr_body": "-"})]
)
FINAL = {"succeeded", "failed", "cancelled"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("print('hello')\n")
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "i"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as name,
        ScriptedModelServer(ScriptedModel([FINISH] * (args.tasks + 20))) as model,
    ):
        tmp = Path(name)
        database = f"sqlite:///{tmp / 'overnight.db'}"
        tokens = make_users(database, args.users)
        port = free_port()
        processes = start_processes(server_env(tmp, database, model.base_url), port, args.workers)
        try:
            result = run(f"http://127.0.0.1:{port}", tokens, make_repo(tmp), args.tasks, model)
        finally:
            stop_processes(processes)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def make_users(database: str, users: int) -> list[str]:
    """A migrated database with ``users`` users; their tokens."""
    migrate(make_engine(database))
    with make_sessionmaker(make_engine(database)).begin() as session:
        # Admins: the repository is a local path (the API refuses those to other users).
        return [store.users.create_token(session, f"user{n}", admin=True) for n in range(users)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(tmp: Path, database: str, model_url: str) -> dict[str, str]:
    """This process's environment without its own OVERNIGHT_ settings, with the benchmark's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
        "OVERNIGHT_DATA_DIR": str(tmp / "data"),
        "OVERNIGHT_DATABASE_URL": database,
        "OVERNIGHT_BROKER_URL": "redis://127.0.0.1:6379/0",
        "OVERNIGHT_QUEUE": f"bench-load-{secrets.token_hex(3)}",
        "OVERNIGHT_ALLOW_LOCAL_REPOS": "true",
        "OVERNIGHT_LOCAL_REPO_ROOTS": f'["{tmp}"]',
        "OVERNIGHT_LLM_BASE_URL": model_url,
        "OVERNIGHT_SANDBOX_BACKEND": "docker",
    }


def start_processes(env: dict[str, str], port: int, workers: int) -> list[subprocess.Popen[bytes]]:
    """The API under uvicorn and ``workers`` worker processes, each in a session of its own."""
    api = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port), "--log-level",
           "warning"]  # fmt: skip
    worker = [sys.executable, "-m", "worker", "1"]
    return [
        subprocess.Popen(api, env=env, start_new_session=True),
        *[
            subprocess.Popen(
                worker, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(workers)
        ],
    ]


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def run(base: str, tokens: list[str], repo: Path, count: int, model: ScriptedModelServer) -> dict[str, Any]:
    clients = [httpx.Client(base_url=base, headers={"Authorization": f"Bearer {t}"}, timeout=30) for t in tokens]
    for _ in range(100):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    # Warm the mirror cache with one task, so the figure below is for a repository already mirrored.
    warm = clients[0].post("/v1/tasks", json={"repo": str(repo), "instruction": "warm up"}).json()["id"]
    _wait(clients[0], [warm], timeout=120)
    create_ms: list[float] = []
    show_ms: list[float] = []
    ids: list[tuple[int, str]] = []
    started = time.monotonic()
    for n in range(count):
        client = clients[n % len(clients)]
        before = time.perf_counter()
        response = client.post("/v1/tasks", json={"repo": str(repo), "instruction": f"load {n}"})
        create_ms.append((time.perf_counter() - before) * 1000)
        response.raise_for_status()
        ids.append((n % len(clients), response.json()["id"]))
    stop = threading.Event()

    def show_load() -> None:
        n = 0
        while not stop.is_set():
            owner, task_id = ids[n % len(ids)]
            before = time.perf_counter()
            clients[owner].get(f"/v1/tasks/{task_id}").raise_for_status()
            show_ms.append((time.perf_counter() - before) * 1000)
            n += 1
            time.sleep(0.01)

    reader = threading.Thread(target=show_load, daemon=True)
    reader.start()
    states = _wait_all(clients, ids, timeout=3600)
    stop.set()
    reader.join()
    drained = time.monotonic() - started
    first_request = []
    for _ in range(5):
        submitted = time.time()
        task_id = clients[0].post("/v1/tasks", json={"repo": str(repo), "instruction": "latency"}).json()["id"]
        _wait(clients[0], [task_id], timeout=120)
        first_request.append(next(t for t in model.state.received_at if t >= submitted) - submitted)
    return {
        "tasks": count,
        "ended": sum(states.values()),
        "states": states,
        "lost": count - sum(states.values()),
        "seconds_to_drain": round(drained, 1),
        "create_ms": {"p50": statistics.median(create_ms), "p99": percentile(create_ms, 0.99)},
        "show_ms_under_load": {"p50": statistics.median(show_ms), "p99": percentile(show_ms, 0.99), "n": len(show_ms)},
        "submit_to_first_model_request_s_mirrored": {
            "median": statistics.median(first_request),
            "runs": [round(x, 3) for x in first_request],
        },
    }


def _wait(client: httpx.Client, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for task_id in ids:
        while client.get(f"/v1/tasks/{task_id}").json()["state"] not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(task_id)
            time.sleep(0.2)


def _wait_all(clients: list[httpx.Client], ids: list[tuple[int, str]], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    pending = {task_id: owner for owner, task_id in ids}
    states: dict[str, int] = {}
    while pending and time.monotonic() < deadline:
        for index, client in enumerate(clients):
            page = client.get("/v1/tasks", params={"limit": 200}).json()
            cursor = page.get("next_cursor")
            tasks = page["tasks"]
            while cursor:
                page = client.get("/v1/tasks", params={"limit": 200, "cursor": cursor}).json()
                tasks += page["tasks"]
                cursor = page.get("next_cursor")
            for task in tasks:
                if task["id"] in pending and task["state"] in FINAL and pending[task["id"]] == index:
                    states[task["state"]] = states.get(task["state"], 0) + 1
                    del pending[task["id"]]
        time.sleep(2)
    return states


if __name__ == "__main__":
    main()
