"""`overnight up` as a subprocess, and the CLI run against it, for the end-to-end tests."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.scripted import ScriptedModelServer
from tests.conftest import SANDBOX_IMAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def overnight_up(
    tmp_path: Path,
    scripted_model: ScriptedModelServer,
    *,
    broker: str | None = None,
    extra: dict[str, str] | None = None,
) -> Iterator[dict[str, str]]:
    """``extra``: more server settings (OVERNIGHT_*) for this server."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")} | {
        "OVERNIGHT_DATA_DIR": str(tmp_path / "data"),
        "OVERNIGHT_CONFIG_DIR": str(tmp_path / "config"),
        "OVERNIGHT_API_PORT": str(port),
        "OVERNIGHT_QUEUE": f"test-{secrets.token_hex(4)}",
        "OVERNIGHT_LLM_BASE_URL": scripted_model.base_url,
        "OVERNIGHT_LLM_RETRIES": "0",
        "OVERNIGHT_SANDBOX_IMAGE": SANDBOX_IMAGE,
        # The tests' repositories are in tmp_path, not the home folder `overnight up` allows by default.
        "OVERNIGHT_LOCAL_REPO_ROOTS": json.dumps([str(tmp_path)]),
    }
    if broker:
        env["OVERNIGHT_BROKER_URL"] = broker
    env |= extra or {}
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(["overnight", "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while "API listening" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "overnight up did not come up"
            time.sleep(0.2)
        token = json.loads((tmp_path / "config" / "config.json").read_text())["token"]
        yield {**env, "OVERNIGHT_SERVER": base, "log": str(tmp_path / "up.log"), "token": token}
    finally:
        up.terminate()
        up.wait(timeout=30)
        log.close()


def cli(
    env: dict[str, str], *args: str, timeout: float = 180, cwd: Path | None = None, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `overnight` CLI, finding the server and token where `overnight up` left them."""
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
    client_env["OVERNIGHT_CONFIG_DIR"] = env["OVERNIGHT_CONFIG_DIR"]
    client_env |= extra or {}
    return subprocess.run(
        ["overnight", *args], env=client_env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
