"""``overnight up``: the API and one worker on embedded defaults, on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from overnight.broker import redact, resolve_broker_url
from overnight.cli.settings import read_client_config, write_client_config
from overnight.secrets import write_key_file
from overnight.settings import Settings

Say = Callable[[str], None]
STOP_GRACE_SECONDS = 10


def _settings_for_up(host: str | None, port: int | None) -> Settings:
    settings = Settings()
    embedded: dict[str, object] = {}
    if "allow_local_repos" not in settings.model_fields_set:
        embedded["allow_local_repos"] = True  # embedded default: the admin's own checkouts are fair game...
    if "local_repo_roots" not in settings.model_fields_set:
        embedded["local_repo_roots"] = [Path.home()]  # ...those under their home (never the data folder)
    api = settings.api.model_copy(update={"host": host or settings.api.host, "port": port or settings.api.port})
    return settings.model_copy(update={**embedded, "api": api})


def _choose_sandbox(settings: Settings, say: Say) -> str:
    """Docker when an engine answers (or when asked), else bubblewrap; say which, and what is missing."""
    from sandbox.image import image_present, rootfs_complete
    from worker.sandboxes import docker_answers

    backend = settings.sandbox.backend
    if backend == "auto":
        backend = "docker" if docker_answers() else "bwrap"
        why = "a Docker engine answers" if backend == "docker" else "no Docker engine answered"
    else:
        why = "OVERNIGHT_SANDBOX_BACKEND"
    if backend == "docker":
        import docker

        client = docker.from_env()
        ready = image_present(client, settings.sandbox.image)
        say(f"sandbox: Docker {client.version().get('Version', '?')} ({why}), image {settings.sandbox.image}")
    else:
        rootfs = settings.sandbox_rootfs_for(settings.sandbox.image)
        ready = rootfs_complete(rootfs)
        say(f"sandbox: bubblewrap ({why}), root filesystem {rootfs}")
    if not ready:
        say("[yellow]the sandbox image is missing: run `overnight image build` (tasks fail until then)[/yellow]")
    return backend


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _choose_ca_bundle(settings: Settings, say: Say) -> Path | None:
    """The host's CA bundle for set-up sandboxes when it trusts more than the image does (a TLS proxy's CA)."""
    if settings.sandbox.ca_bundle is not None:
        say(f"set-up sandboxes trust {settings.sandbox.ca_bundle} (OVERNIGHT_SANDBOX_CA_BUNDLE)")
        return settings.sandbox.ca_bundle
    image_bundle = settings.sandbox_rootfs_for(settings.sandbox.image) / HOST_CA_BUNDLE.relative_to("/")
    if not HOST_CA_BUNDLE.is_file() or not image_bundle.is_file():
        return None
    if HOST_CA_BUNDLE.read_bytes() == image_bundle.read_bytes():
        return None
    say(f"set-up sandboxes trust this host's CA bundle {HOST_CA_BUNDLE}: it differs from the image's")
    return HOST_CA_BUNDLE


def _unworkable(settings: Settings, say: Say) -> bool:
    """Say each setting that cannot work (an http:// GitHub API root, a webhook secret without credentials...)."""
    from rich.markup import escape

    from overnight.github.config import problems

    found = problems(settings)
    for problem in found:
        say(f"[red]cannot start: {escape(problem)}[/red]")
    return bool(found)


def _say_local_repos(settings: Settings, say: Say) -> None:
    if not settings.allow_local_repos:
        return
    roots = ", ".join(str(root) for root in settings.local_repo_roots) or "none (OVERNIGHT_LOCAL_REPO_ROOTS)"
    say(f"local repositories: admins' tasks may name paths under {roots}")


def run_up(*, host: str | None, port: int | None, concurrency: int, say: Say) -> int:
    from store.engine import make_engine, migrate

    settings = _settings_for_up(host, port)
    if _unworkable(settings, say):
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database_url = settings.resolved_database_url
    engine = make_engine(database_url)
    migrate(engine)
    say(f"database: {redact(database_url)} (migrated)")
    base = f"http://{settings.api.host}:{settings.api.port}"
    _ensure_local_admin(settings, engine, base, say)
    broker_url, broker_description = resolve_broker_url(settings)
    say(broker_description)
    backend = _choose_sandbox(settings, say)
    ca_bundle = _choose_ca_bundle(settings, say)
    say(f"model: {settings.llm.model} at {settings.llm.base_url}")
    _say_local_repos(settings, say)
    env = _children_env(settings, database_url, broker_url, backend, ca_bundle)
    children = _start_children(settings, env, concurrency)
    return _supervise(children, base, say)


def _children_env(
    settings: Settings, database_url: str, broker_url: str, backend: str, ca_bundle: Path | None
) -> dict[str, str]:
    """The environment of the API and the worker: this one, with what `up` chose written out."""
    env = dict(os.environ)
    env.update(
        OVERNIGHT_DATA_DIR=str(settings.data_dir),
        OVERNIGHT_DATABASE_URL=database_url,
        OVERNIGHT_BROKER_URL=broker_url,
        OVERNIGHT_ALLOW_LOCAL_REPOS="true" if settings.allow_local_repos else "false",
        OVERNIGHT_LOCAL_REPO_ROOTS=json.dumps([str(root) for root in settings.local_repo_roots]),
        OVERNIGHT_SANDBOX_BACKEND=backend,
    )
    if ca_bundle is not None:
        env["OVERNIGHT_SANDBOX_CA_BUNDLE"] = str(ca_bundle)
    if settings.secrets.key is None and settings.secrets.key_file is None:
        # Local mode: one key file both children read (a deployment sets OVERNIGHT_SECRETS_KEY itself).
        key_file = settings.data_dir / "secrets.key"
        write_key_file(key_file)
        env["OVERNIGHT_SECRETS_KEY_FILE"] = str(key_file)
    return env


def _start_children(settings: Settings, env: dict[str, str], concurrency: int) -> dict[str, subprocess.Popen[bytes]]:
    """The worker and the API (uvicorn), each in a session of its own so that stopping reaches their children."""
    api = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", settings.api.host,
           "--port", str(settings.api.port), "--log-level", "warning"]  # fmt: skip
    return {
        "worker": subprocess.Popen([sys.executable, "-m", "worker", str(concurrency)], env=env, start_new_session=True),
        "api": subprocess.Popen(api, env=env, start_new_session=True),
    }


def _supervise(children: dict[str, subprocess.Popen[bytes]], base: str, say: Say) -> int:
    """Until SIGTERM or SIGINT (0), or until a child exits (1); the children are stopped either way."""
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if _wait_healthy(base, list(children.values())):
            say(f"API listening on {base}")
            say(f'submit a task:  OVERNIGHT_SERVER={base} overnight submit --repo PATH_OR_URL "what to do" --wait')
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    say(f"[red]the {name} process exited with code {child.returncode}; stopping[/red]")
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        _terminate(list(children.values()))


LOCAL_ADMIN = "admin"


def _ensure_local_admin(settings: Settings, engine: Any, base: str, say: Say) -> None:
    """On first start, an admin token for this machine's user, written to the client config (0600), so that
    `overnight submit` works with no extra step."""
    import store.users
    from store.engine import make_sessionmaker

    config = read_client_config(settings.config_dir)
    with make_sessionmaker(engine).begin() as session:
        if (
            config.get("server") == base
            and config.get("token")
            and store.users.user_for_token(session, config["token"])
        ):
            return
        token = store.users.create_token(session, LOCAL_ADMIN, admin=True, label="overnight up")
    path = write_client_config(settings.config_dir, server=base, token=token)
    say(f"created a local admin token; the CLI finds it in {path}")


def _wait_healthy(base: str, children: list[subprocess.Popen[bytes]], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def _terminate(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
