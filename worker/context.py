"""What a worker process runs tasks with (:class:`WorkerContext`, built once per process in
``worker/tasks.py``), and the hooks through which the place a task came from is told how it goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from agent.base import ModelClient
from agent.loop import AgentConfig
from overnight.settings import SecretsSettings
from sandbox.base import SandboxBackend
from sandbox.environments import EnvironmentCache
from sandbox.proxy import EgressProxy
from store.models import TaskState
from worker.environment import SetupPolicy
from worker.hostgit import DataLimits
from worker.repo import Checkout, Commit


class TaskHooks(Protocol):
    """Where a task came from gets told (GitHub: a progress comment, then the branch and pull request)."""

    def git_credentials(self, task_id: str, url: str) -> dict[str, str]:
        """Extra {host: token} for cloning this task's repository."""

    def started(self, task_id: str) -> None: ...

    def finished(self, task_id: str, state: TaskState, reason: str | None, commit: Commit | None) -> None:
        """Called after the sandbox is gone and before the final state is written, with the patch's commit
        (None without one); must not raise."""


@dataclass(kw_only=True)
class WorkerContext:
    sessions: sessionmaker[Session]
    backend: SandboxBackend
    model_factory: Callable[[str], ModelClient]
    """Builds the model client of one task (the task id becomes its cache-affinity key)."""
    workspaces: Path
    checkout: Checkout
    agent: AgentConfig
    environments: EnvironmentCache
    setup: SetupPolicy
    agent_network: bool = False
    egress: EgressProxy | None = None
    """The egress proxy (started on first use) through which allowlist and full network policies go."""
    worker_name: str = "worker"
    max_active_per_user: int = 4
    max_attempts: int = 3
    heartbeat_seconds: float = 5.0
    stale_after: timedelta = timedelta(seconds=60)
    author: tuple[str, str] = ("Overnight", "overnight@localhost")
    hooks: TaskHooks | None = None
    database_retry_seconds: float = 300.0
    """How long writes (the final state included) are retried while the database cannot be reached."""
    limits: DataLimits = field(default_factory=DataLimits)
    """What a task's bytes may cost the worker: the patch's size, git's memory over uploads and patches."""
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    """The key environments' secrets are opened with (read when a task's set-up needs them)."""
