"""Webhook benchmark: how long the API takes to answer GitHub (which gives up after 10 s) for a delivery that
queues a task, a redelivery, an ignored event and a bad signature, on the real recorded payloads.

Runs the API as its own `uvicorn` process on a SQLite file and this machine's Redis (a queue of its own),
in personal-token mode, with the tests' fake GitHub answering the collaborator-permission check (made once per
sender and repository, then remembered for five minutes). Each queued delivery is a new labelling (the issue's
``updated_at`` moves); a replay sends the same body under a new delivery id.

    python -m bench.github [--deliveries 300] [--json results.json]
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
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from overnight.github.webhooks import sign
from store.engine import make_engine, migrate
from tests.github_fake import FakeGitHub, FakeGitHubServer

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "github" / "webhooks"
SECRET = b"bench-secret"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def payload(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    for path, value in changes.items():
        target = data
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        target[last] = value
    return data


def timed(client: httpx.Client, event: str, body: bytes, delivery: str, secret: bytes = SECRET) -> tuple[int, float]:
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
               "X-Hub-Signature-256": sign(secret, body)}  # fmt: skip
    started = time.perf_counter()
    response = client.post("/v1/github/webhook", content=body, headers=headers)
    return response.status_code, (time.perf_counter() - started) * 1000


def run(base: str, count: int) -> dict[str, Any]:
    client = httpx.Client(base_url=base, timeout=30)
    for _ in range(100):
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    plain = json.dumps(payload("issue_comment.created.json")).encode()
    kinds: dict[str, list[float]] = {"queued (202)": [], "redelivery (200)": [], "replay (200)": [],
                                     "ignored (204)": [], "bad signature (401)": []}  # fmt: skip
    expected = {"queued (202)": 202, "redelivery (200)": 200, "replay (200)": 200, "ignored (204)": 204,
                "bad signature (401)": 401}  # fmt: skip
    for n in range(count):
        delivery = str(uuid.uuid4())
        labelled_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_557_933_618 + n))
        labeled = json.dumps(payload("issues.labeled.json", label__name="overnight",
                                     issue__updated_at=labelled_at)).encode()  # fmt: skip
        for kind, (event, body, delivery_id, secret) in {
            "queued (202)": ("issues", labeled, delivery, SECRET),
            "redelivery (200)": ("issues", labeled, delivery, SECRET),
            "replay (200)": ("issues", labeled, str(uuid.uuid4()), SECRET),
            "ignored (204)": ("issue_comment", plain, str(uuid.uuid4()), SECRET),
            "bad signature (401)": ("issues", labeled, str(uuid.uuid4()), b"wrong"),
        }.items():
            status, ms = timed(client, event, body, delivery_id, secret)
            if status != expected[kind]:
                raise SystemExit(f"{kind}: got {status}")
            kinds[kind].append(ms)
    summary: dict[str, Any] = {}
    for kind, values in kinds.items():
        summary[kind] = {"n": len(values), "p50_ms": round(statistics.median(values), 1),
                         "p95_ms": round(percentile(values, 0.95), 1), "max_ms": round(max(values), 1)}  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    queue = f"bench-github-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="bench-github-") as name:
        tmp = Path(name)
        database = f"sqlite:///{tmp / 'overnight.db'}"
        migrate(make_engine(database))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
            "OVERNIGHT_DATA_DIR": str(tmp / "data"), "OVERNIGHT_DATABASE_URL": database,
            "OVERNIGHT_BROKER_URL": "redis://127.0.0.1:6379/0", "OVERNIGHT_QUEUE": queue,
            "OVERNIGHT_GITHUB_WEBHOOK_SECRET": SECRET.decode(), "OVERNIGHT_GITHUB_TOKEN": "ghp_bench",
        }  # fmt: skip
        command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        with FakeGitHubServer(FakeGitHub(personal_token="ghp_bench")) as github:
            env |= {"OVERNIGHT_GITHUB_API_URL": github.url, "OVERNIGHT_GITHUB_GIT_URL": "https://github.com"}
            api = subprocess.Popen(command, env=env, start_new_session=True)
            try:
                result = run(f"http://127.0.0.1:{port}", args.deliveries)
            finally:
                os.killpg(api.pid, signal.SIGTERM)
                api.wait(timeout=30)
                redis.Redis.from_url("redis://127.0.0.1:6379/0").delete(queue)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
