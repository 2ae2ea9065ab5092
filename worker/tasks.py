"""The Celery task body and the per-process worker context it runs with."""

from __future__ import annotations

import os
import socket
import threading
from datetime import timedelta
from functools import partial

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from agent.client import ChatClient, LLMConfig
from overnight.access import RepoAccess
from overnight.github.client import client_from_settings
from overnight.settings import Settings
from sandbox.environments import EnvironmentCache
from store.attempts import mark_enqueued
from store.engine import make_engine, make_sessionmaker
from store.models import TaskState
from store.tasks import transition
from worker.bestof import group_to_rank
from worker.github import GitHubHooks
from worker.hostgit import DataLimits
from worker.mirrors import MirrorCache
from worker.pipeline import WorkerContext, run_task
from worker.repo import Checkout
from worker.sandboxes import egress_proxy, sandbox_backend, setup_policy

_context: WorkerContext | None = None
_lock = threading.Lock()


def build_context(settings: Settings) -> WorkerContext:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    backend = sandbox_backend(settings)
    sandbox, worker = settings.sandbox, settings.worker
    return WorkerContext(
        sessions=sessions,
        hooks=github_hooks(settings, sessions),
        backend=backend,
        environments=EnvironmentCache(
            settings.environments_dir,
            backend,
            max_age=sandbox.env_max_age_hours * 3600,
            max_bytes=sandbox.env_max_bytes,
        ),
        setup=setup_policy(sandbox, lifetime=worker.task_time_limit),
        agent_network=sandbox.agent_network,
        egress=egress_proxy(settings),
        model_factory=partial(model_client, settings.llm),
        workspaces=settings.workspaces_dir,
        checkout=Checkout(
            mirrors=MirrorCache(settings.mirrors_dir, max_bytes=worker.mirror_max_bytes),
            access=RepoAccess.from_settings(settings),
            credentials={host: token.get_secret_value() for host, token in settings.git_credentials.items()},
        ),
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
        max_active_per_user=worker.max_active_tasks_per_user,
        max_attempts=worker.task_max_attempts,
        heartbeat_seconds=worker.heartbeat_seconds,
        stale_after=timedelta(seconds=worker.stale_seconds),
        database_retry_seconds=worker.database_retry_seconds,
        author=worker.author,
        limits=DataLimits(git_memory=worker.git_memory_limit, max_patch_bytes=worker.max_patch_bytes),
        agent=settings.agent,
        secrets=settings.secrets,
    )


def model_client(config: LLMConfig, task_id: str) -> ChatClient:
    """The model client of one task: the task id is its cache-affinity key."""
    return ChatClient(config.model_copy(update={"session_id": task_id}))


def github_hooks(settings: Settings, sessions: sessionmaker[Session]) -> GitHubHooks | None:
    github = client_from_settings(settings.github)
    if github is None:
        return None
    return GitHubHooks(
        github, sessions, allow_local=settings.allow_local_repos, label=settings.github.trigger_label,
        draft=settings.github.draft, public_url=settings.public_url, images=settings.images,
    )  # fmt: skip


def worker_context() -> WorkerContext:
    """Built on first use in each worker process (after the pool forks), from the environment."""
    global _context
    with _lock:
        if _context is None:
            _context = build_context(Settings())
        return _context


BUSY_RETRY_SECONDS = 5.0


def run_task_entry(self: Task, task_id: str) -> None:
    """The Celery task: run it, or put it back for later when its user is at the concurrency limit."""
    try:
        outcome = run_task(task_id, worker_context())
    except SoftTimeLimitExceeded:  # raised outside the pipeline's own handling (while claiming)
        fail_on_time_limit(task_id)
        return
    if outcome == "busy":
        self.apply_async(args=[task_id], countdown=BUSY_RETRY_SECONDS)
        with worker_context().sessions.begin() as session:
            mark_enqueued(session, task_id)
    elif outcome == "ran" and (group_id := group_to_rank(task_id, worker_context())) is not None:
        self.apply_async(args=[group_id])  # the last of its attempts ended: rank them (the reconciler would too)
        with worker_context().sessions.begin() as session:
            mark_enqueued(session, group_id)


def fail_on_time_limit(task_id: str) -> None:
    with worker_context().sessions.begin() as session:
        transition(session, task_id, from_states=[TaskState.preparing, TaskState.running],
                   to_state=TaskState.failed, reason="task time limit exceeded")  # fmt: skip
