"""Flood benchmark: the API's memory under oversized requests that nobody authenticated.

Runs the API under uvicorn in a process of its own (SQLite file, this machine's Redis on a queue of its own)
and sends, from threads, chunked bodies (no Content-Length) of --size-mib each: to the GitHub webhook with a
wrong signature, to `POST /v1/tasks` without a token and with a token (an authenticated oversized upload).
Reports, per kind, the answers, how much of each body the client got out before the answer, and the API's
resident memory (sampled every 20 ms, and the kernel's high-water mark). Traffic goes to 127.0.0.1 only.

    python -m bench.flood [--requests 20] [--concurrency 4] [--size-mib 800] [--source DIR] [--json out.json]

--source runs the API from another checkout (e.g. `git archive` of an older commit) to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MIB = 2**20


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int | None
    body: bytes
    sent: int
    """Body bytes the client got out before the answer came (or the connection ended)."""
    closed: bool
    """The server hung up after answering."""


def send_chunked(
    port: int, path: str, headers: dict[str, str], total: int, *, chunk: int = 256 * 1024, timeout: float = 120
) -> Answer:
    """POST ``total`` bytes to 127.0.0.1:``port`` as a chunked body, reading the answer as soon as it comes
    (a server that answers early is seen answering early, unlike a client that sends everything first)."""
    piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    pieces = total // chunk
    sent, answer, closed, refused, pending = 0, b"", False, False, memoryview(b"")
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        while time.monotonic() < deadline and not closed:
            if not pending and pieces and not refused:
                pieces -= 1
                pending = memoryview(piece if pieces else piece + b"0\r\n\r\n")
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 1)
            if readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                closed = not data
                answer += data
                if _complete(answer):
                    closed = closed or _closes_soon(sock)
                    break
            elif writable:
                try:
                    written = sock.send(pending)
                except OSError:  # the server hung up: what it answered may still be waiting to be read
                    refused, pending = True, memoryview(b"")
                    continue
                sent, pending = sent + written, pending[written:]
    return _parse(answer, sent, closed)


def send_declared(port: int, path: str, headers: dict[str, str], declared: int, *, timeout: float = 30) -> Answer:
    """Send only the head of a POST that declares ``declared`` body bytes, and read the answer."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    answer, closed = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        while not _complete(answer) and not closed:
            data = sock.recv(65536)
            closed = not data
            answer += data
        closed = closed or _closes_soon(sock)
    return _parse(answer, 0, closed)


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _closes_soon(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 2)
    try:
        return bool(readable) and not sock.recv(1)
    except OSError:
        return True


def _parse(answer: bytes, sent: int, closed: bool) -> Answer:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 else None
    return Answer(status=status, body=body, sent=sent, closed=closed)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since start) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_api(env: dict[str, str], *, source: Path | None = None, log: Path | None = None) -> Iterator[tuple[int, int]]:
    """The API under uvicorn in a process of its own: yields (port, pid) once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port)]
    cwd = source or Path(__file__).resolve().parent.parent
    output = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [*command, "--log-level", "warning"], env={**env, "PYTHONPATH": str(cwd)}, cwd=cwd,
        stdout=output, stderr=output, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not come up (exit {process.poll()}); see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port, process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if log and not isinstance(output, int):
            output.close()


def api_env(tmp: Path, *, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Settings for an API on a SQLite file in ``tmp`` that can check webhook signatures (GitHub itself is
    never reached: no delivery gets past its signature here)."""
    return (
        {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
        | {
            "OVERNIGHT_DATA_DIR": str(tmp / "data"),
            "OVERNIGHT_DATABASE_URL": f"sqlite:///{tmp / 'overnight.db'}",
            "OVERNIGHT_BROKER_URL": "redis://127.0.0.1:6379/0",
            "OVERNIGHT_QUEUE": f"bench-flood-{secrets.token_hex(3)}",
            "OVERNIGHT_GITHUB_WEBHOOK_SECRET": secrets.token_hex(16),
            "OVERNIGHT_GITHUB_TOKEN": "not-used",
            "OVERNIGHT_GITHUB_API_URL": "https://127.0.0.1:9/api/v3",
        }
        | (extra or {})
    )


class PeakSampler(threading.Thread):
    """The largest VmRSS of ``pid`` seen, sampled every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stopping = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid)["VmRSS"])
            time.sleep(0.02)

    def __enter__(self) -> PeakSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()


def flood(port: int, pid: int, *, path: str, headers: dict[str, str], requests: int, concurrency: int,
          size: int) -> dict[str, Any]:  # fmt: skip
    started = time.monotonic()
    with PeakSampler(pid) as sampler, ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda _: send_chunked(port, path, headers, size, timeout=600), range(requests)))
    sent = [answer.sent / MIB for answer in answers]
    return {
        "answers": dict(Counter(str(answer.status) for answer in answers)),
        "hung_up": sum(answer.closed for answer in answers),
        "sent_mib": {"median": round(statistics.median(sent), 1), "max": round(max(sent), 1)},
        "peak_rss_mib": round(sampler.peak_kib / 1024, 1),
        "rss_after_mib": round(rss_kib(pid)["VmRSS"] / 1024, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


def kinds(token: str) -> dict[str, tuple[str, dict[str, str]]]:
    json_body = {"Content-Type": "application/json"}
    return {
        "webhook, wrong signature": ("/v1/github/webhook", {**json_body, "X-Hub-Signature-256": "sha256=" + "0" * 64,
                                     "X-GitHub-Event": "issues", "X-GitHub-Delivery": "flood-1"}),
        "POST /v1/tasks, no token": ("/v1/tasks", json_body),
        "POST /v1/tasks, valid token": ("/v1/tasks", {**json_body, "Authorization": f"Bearer {token}"}),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="Requests of each kind.")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=800, help="Body each request would send, in MiB.")
    parser.add_argument("--source", type=Path, help="Run the API from this checkout instead.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import store.users
    from store.engine import make_engine, make_sessionmaker, migrate

    with tempfile.TemporaryDirectory(prefix="bench-flood-") as name:
        tmp = Path(name)
        env = api_env(tmp)
        engine = make_engine(env["OVERNIGHT_DATABASE_URL"])
        migrate(engine)
        with make_sessionmaker(engine).begin() as session:
            token = store.users.create_token(session, "flood")
        with serve_api(env, source=args.source, log=tmp / "api.log") as (port, pid):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
                for _ in range(20):  # warm: imports, the database pool, the first requests' allocations
                    c.get("/v1/tasks").raise_for_status()
            result: dict[str, Any] = {"baseline_rss_mib": round(rss_kib(pid)["VmRSS"] / 1024, 1), "kinds": {}}
            for kind, (path, headers) in kinds(token).items():
                result["kinds"][kind] = flood(port, pid, path=path, headers=headers, requests=args.requests,
                                              concurrency=args.concurrency, size=args.size_mib * MIB)  # fmt: skip
            memory = rss_kib(pid)
            result |= {
                "final_rss_mib": round(memory["VmRSS"] / 1024, 1),
                "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
            }
    result["command"] = " ".join(["python -m bench.flood", *sys.argv[1:]])
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
