from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

import store.events
import store.patches
import store.tasks
from agent.budget import Budget
from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig
from overnight.access import RepoAccess
from sandbox.base import SandboxBackend
from sandbox.environments import EnvironmentCache
from store.engine import make_sessionmaker
from tests.conftest import SANDBOX_IMAGE
from worker.environment import SetupPolicy
from worker.mirrors import MirrorCache
from worker.pipeline import WorkerContext, run_task
from worker.repo import Checkout


def make_context(
    engine: Engine, backend: SandboxBackend, base_url: str, tmp_path: Path, *, max_steps: int = 10, **overrides: Any
) -> WorkerContext:
    context = WorkerContext(
        sessions=make_sessionmaker(engine),
        backend=backend,
        model_factory=lambda task_id: ChatClient(
            LLMConfig(base_url=base_url, model="mistral-medium-3.5", retries=1, backoff_max=0.1, session_id=task_id)
        ),
        workspaces=tmp_path / "workspaces",
        checkout=Checkout(mirrors=MirrorCache(tmp_path / "mirrors", max_bytes=2**30), access=local_access(tmp_path)),
        heartbeat_seconds=0.5,
        agent=AgentConfig(budget=Budget(max_steps=max_steps), command_timeout=30),
        environments=EnvironmentCache(tmp_path / "environments", backend, max_age=3600, max_bytes=10 * 2**30),
        setup=SetupPolicy(image=SANDBOX_IMAGE, network=False, timeout=120, lifetime=900),
    )
    for key, value in overrides.items():
        setattr(context, key, value)
    return context


def local_access(tmp_path: Path, **fields: Any) -> RepoAccess:
    """Local repositories anywhere under the temporary folder the tests make them in, but the worker's own
    folders in ``tmp_path`` (as ``overnight up`` allows the home folder but its data folder)."""
    root = tmp_path.resolve()
    forbidden = tuple(root / name for name in ("mirrors", "workspaces", "environments"))
    roots = (Path(tempfile.gettempdir()).resolve(), root)
    return RepoAccess(**{"allow_local": True, "local_roots": roots, "forbidden": forbidden, **fields})


def submit(engine: Engine, repo: str, ref: str | None = None, setup: str | None = None) -> str:
    with make_sessionmaker(engine).begin() as session:
        return store.tasks.create_task(session, repo=repo, ref=ref, instruction="fix the test", setup=setup).id


def outcome(engine: Engine, task_id: str) -> tuple[Any, Any, list[Any]]:
    with make_sessionmaker(engine)() as session:
        events = [(e.type, e.data) for e in store.events.list_events(session, task_id)]
        return store.tasks.get_task(session, task_id), store.patches.get_patch(session, task_id), events


def run_and_meanwhile(task_id: str, context, condition, action, *, settle: float) -> None:  # type: ignore[no-untyped-def]
    """run_task, while a thread waits (up to 60 s) for ``condition``, lets ``settle`` seconds pass and runs
    ``action`` — what a user does while the task is under way."""

    def meanwhile() -> None:
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        action()

    thread = threading.Thread(target=meanwhile)
    thread.start()
    try:
        run_task(task_id, context)
    finally:
        thread.join()
