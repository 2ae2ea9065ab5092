"""The real `overnight` CLI against an HTTP server of the test's own that answers as no Overnight server would
(a proxy's HTML page, JSON of the wrong shape, an event stream of garbage): every command ends in one line of
error and exit 3, never a traceback. And a well-formed event stream full of keep-alives, comments and events
without data, dropped half-way, is followed to the end and resumed with Last-Event-ID."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overnight.loopback import LoopbackServer
from tests.conftest import git

TASK = {"id": "t1", "state": "running", "repo": "https://example.com/a.git", "instruction": "x",
        "created_at": "2026-01-01T00:00:00+00:00"}  # fmt: skip
# Streams whose events are not Overnight's: behind a proper task and a keep-alive comment.
GARBAGE_STREAMS = {
    "stream-not-json": "id: 1\nevent: state\ndata: <html>oops</html>\n\n",
    "stream-no-seq": 'id: 1\nevent: state\ndata: {"type": "state", "data": {"state": "running"}}\n\n',
    "stream-array": "data: [1, 2]\n\n",
}
# Every answer, streams included, is one of these.
GARBAGE_ANSWERS = {
    "html": HTMLResponse("<html><body>Sign in to the proxy</body></html>"),
    "array": JSONResponse([{"unexpected": True}]),
    "object": JSONResponse({"id": 7, "tasks": [{"id": "t1"}], "events": [{"seq": "1"}], "base_sha": 5}),
}
FOLLOWING = [["logs", "t1", "-f"], ["logs", "t1", "-f", "--json"], ["submit", "x", "--repo", TASK["repo"], "--wait"],
             ["submit", "x", "--repo", TASK["repo"], "--wait", "--json"]]  # fmt: skip
COMMANDS = [*FOLLOWING, ["list"], ["show", "t1"], ["logs", "t1"], ["diff", "t1", "--json"],
            ["apply", "t1"], ["cancel", "t1"], ["retry", "t1"], ["follow-up", "t1", "more"],
            ["submit", "x", "--repo", TASK["repo"]]]  # fmt: skip


def sse(seq: int, state: str) -> str:
    event = {"seq": seq, "type": "state", "data": {"state": state}, "created_at": "2026-01-01T00:00:00+00:00"}
    return f"id: {seq}\nevent: state\ndata: {json.dumps(event)}\n\n"


class FakeAPI:
    """Answers as the mode (the first segment of the path) says. In mode "resumable", a good stream: the first
    connection brings event 1 among keep-alives and is then dropped; the next must ask from 1 on. In mode
    "restarting", the first connection gets a gateway's 502."""

    def __init__(self) -> None:
        self.resume_points: list[str | None] = []
        self.app = Starlette(routes=[Route("/{mode}/{rest:path}", self.answer, methods=["GET", "POST"])])

    async def answer(self, request: Request) -> Response:
        mode = request.path_params["mode"]
        streaming = "text/event-stream" in request.headers.get("accept", "")
        if mode in GARBAGE_ANSWERS:
            return GARBAGE_ANSWERS[mode]
        if not streaming:
            return JSONResponse(TASK | {"state": "succeeded"}, status_code=201 if request.method == "POST" else 200)
        if mode in GARBAGE_STREAMS:
            return Response(": ping\n\n" + GARBAGE_STREAMS[mode], media_type="text/event-stream")
        self.resume_points.append(request.headers.get("last-event-id"))
        if mode == "restarting" and len(self.resume_points) == 1:  # a gateway while the API restarts
            return HTMLResponse("<html>502 Bad Gateway</html>", status_code=502)
        if mode == "restarting":
            return Response(sse(1, "succeeded"), media_type="text/event-stream")
        return StreamingResponse(self.resumable(request.headers.get("last-event-id")), media_type="text/event-stream")

    async def resumable(self, last: str | None) -> AsyncIterator[str]:
        if last == "0":
            # A comment, a retry field, a named event without data, sse-starlette's keep-alive, an empty data line.
            yield ": hello\n\nretry: 100\n\n" + sse(1, "queued") + "event: ping\n\n: ping - 2026-01-01\n\ndata:\n\n"
            raise ConnectionResetError("the connection drops here")  # uvicorn cuts the response short
        yield ": ping\n\n" + sse(2, "running") + ": ping\n\n" + sse(3, "succeeded")


@pytest.fixture(scope="module")
def fake_api() -> Iterator[tuple[FakeAPI, str]]:
    api = FakeAPI()
    with LoopbackServer(api.app, name="fake API") as server:
        yield api, server.url


def overnight(base: str, *args: str, cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
    env |= {"OVERNIGHT_SERVER": base, "OVERNIGHT_TOKEN": "ovn_test", "OVERNIGHT_CONFIG_DIR": str(config)}
    return subprocess.run(["overnight", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A clean git checkout to run the commands in (apply refuses a dirty one before asking the server)."""
    git(tmp_path, "init", "-q", "-b", "main", "work")
    git(tmp_path / "work", "commit", "-q", "--allow-empty", "-m", "start")
    return tmp_path / "work"


def assert_one_line_error(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert "Traceback" not in result.stderr, (what, result.stderr)
    assert result.returncode == 3, (what, result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("task t1 queued")]
    assert len(lines) == 1 and lines[0].startswith("error: unexpected answer from http://127.0.0.1:"), (what, lines)


@pytest.mark.parametrize("mode", sorted(GARBAGE_ANSWERS))
def test_every_command_turns_an_answer_that_is_not_overnights_into_a_one_line_error(
    fake_api: tuple[FakeAPI, str], mode: str, checkout: Path, tmp_path: Path
) -> None:
    _, url = fake_api
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda args: overnight(f"{url}/{mode}", *args, cwd=checkout, config=tmp_path), COMMANDS)
        for args, result in zip(COMMANDS, results, strict=True):
            assert_one_line_error(result, " ".join(args))
    login = overnight(url, "login", "--server", f"{url}/{mode}", "--token", "t", cwd=checkout, config=tmp_path)
    assert_one_line_error(login, "login")
    assert not (tmp_path / "config.json").exists()  # a server that is not Overnight's is not remembered


@pytest.mark.parametrize("mode", sorted(GARBAGE_STREAMS))
def test_following_a_stream_of_garbage_ends_in_a_one_line_error(
    fake_api: tuple[FakeAPI, str], mode: str, checkout: Path, tmp_path: Path
) -> None:
    _, url = fake_api
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda args: overnight(f"{url}/{mode}", *args, cwd=checkout, config=tmp_path), FOLLOWING)
        for args, result in zip(FOLLOWING, results, strict=True):
            assert_one_line_error(result, " ".join(args))
            assert "event" in result.stderr.strip().splitlines()[-1]


def test_keepalives_comments_and_empty_events_are_skipped_and_a_dropped_stream_resumes_from_the_last_event(
    fake_api: tuple[FakeAPI, str], checkout: Path, tmp_path: Path
) -> None:
    api, url = fake_api
    api.resume_points.clear()
    followed = overnight(f"{url}/resumable", "logs", "t1", "-f", "--json", cwd=checkout, config=tmp_path)
    assert followed.returncode == 0 and "Traceback" not in followed.stderr, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [(e["seq"], e["data"]["state"]) for e in events] == [(1, "queued"), (2, "running"), (3, "succeeded")]
    assert api.resume_points == ["0", "1"]  # reconnected after the drop, from the last event it had
    api.resume_points.clear()
    plain = overnight(f"{url}/resumable", "logs", "t1", "-f", cwd=checkout, config=tmp_path)
    assert plain.returncode == 0 and "● succeeded" in plain.stderr and "Traceback" not in plain.stderr
    assert api.resume_points == ["0", "1"]


def test_a_gateways_502_while_the_api_restarts_is_retried(
    fake_api: tuple[FakeAPI, str], checkout: Path, tmp_path: Path
) -> None:
    api, url = fake_api
    api.resume_points.clear()
    followed = overnight(f"{url}/restarting", "logs", "t1", "-f", "--json", cwd=checkout, config=tmp_path)
    assert followed.returncode == 0, followed.stderr
    assert [json.loads(line)["seq"] for line in followed.stdout.splitlines()] == [1]
    assert api.resume_points == ["0", "0"]
