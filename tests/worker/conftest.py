from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from agent.budget import Budget
from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig
from migrations import store
from migrations.store import make_sessionmaker
from sandbox.base import SandboxBackend
from sandbox.environments import EnvironmentCache
from tests.conftest import SANDBOX_IMAGE
from worker.environment import SetupPolicy
from worker.mirrors import MirrorCache
from worker.pipeline import WorkerContext
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
        checkout=Checkout(mirrors=MirrorCache(tmp_path / "mirrors", max_bytes=2**30), allow_local=True),
        heartbeat_seconds=0.5,
        agent=AgentConfig(budget=Budget(max_steps=max_steps), command_timeout=30),
        environments=EnvironmentCache(tmp_path / "environments", backend, max_age=3600, max_bytes=10 * 2**30),
        setup=SetupPolicy(image=SANDBOX_IMAGE, network=False, timeout=120, lifetime=900),
    )
    for key, value in overrides.items():
        setattr(context, key, value)
    return context


def submit(engine: Engine, repo: str, ref: str | None = None, setup: str | None = None) -> str:
    with make_sessionmaker(engine).begin() as session:
        return store.create_task(session, repo=repo, ref=ref, instruction="fix the test", setup=setup).id


def outcome(engine: Engine, task_id: str) -> tuple[Any, Any, list[Any]]:
    with make_sessionmaker(engine)() as session:
        events = [(e.type, e.data) for e in store.list_events(session, task_id)]
        return store.get_task(session, task_id), store.get_patch(session, task_id), events
