"""The Celery task body and the per-process worker context it runs with."""

from __future__ import annotations

import os
import socket
import threading
from datetime import timedelta

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from agent.budget import Budget
from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig
from overnight.access import RepoAccess
from overnight.github.client import client_from_settings
from overnight.settings import Settings
from sandbox.environments import EnvironmentCache
from store.attempts import mark_enqueued
from store.engine import make_engine, make_sessionmaker
from store.models import TaskState
from store.tasks import transition
from worker.environment import SetupPolicy
from worker.github import GitHubHooks
from worker.hostgit import DataLimits
from worker.mirrors import MirrorCache
from worker.pipeline import WorkerContext, run_task
from worker.repo import Checkout
from worker.sandboxes import sandbox_backend

_context: WorkerContext | None = None
_lock = threading.Lock()


def build_context(settings: Settings) -> WorkerContext:
    engine = make_engine(settings.resolved_database_url)

    def model_factory(task_id: str) -> ChatClient:
        return ChatClient(
            LLMConfig(
                base_url=settings.llm_base_url,
                model=settings.llm_model,
                provider=settings.llm_provider,
                api_key=settings.llm_api_key,
                reasoning_effort=settings.llm_reasoning_effort,
                temperature=settings.llm_temperature,
                top_p=settings.llm_top_p,
                max_tokens=settings.llm_max_tokens,
                timeout=settings.llm_request_timeout,
                retries=settings.llm_retries,
                session_id=task_id,
            )
        )

    backend = sandbox_backend(settings)
    sessions = make_sessionmaker(engine)
    github = client_from_settings(settings)
    hooks = None
    if github is not None:
        hooks = GitHubHooks(
            github, sessions, allow_local=settings.allow_local_repos, label=settings.github_trigger_label,
            draft=settings.github_draft, public_url=settings.public_url,
        )  # fmt: skip
    return WorkerContext(
        sessions=sessions,
        hooks=hooks,
        backend=backend,
        environments=EnvironmentCache(
            settings.environments_dir,
            backend,
            max_age=settings.sandbox_env_max_age_hours * 3600,
            max_bytes=settings.sandbox_env_max_bytes,
        ),
        setup=SetupPolicy(
            image=settings.sandbox_image,
            network=settings.sandbox_setup_network,
            timeout=settings.sandbox_setup_timeout,
            lifetime=settings.task_time_limit,
            ca_bundle=settings.sandbox_ca_bundle,
            proxy_env=settings.sandbox_proxy_env(),
            repo_images=tuple(settings.sandbox_repo_images),
        ),
        agent_network=settings.sandbox_agent_network,
        model_factory=model_factory,
        workspaces=settings.workspaces_dir,
        checkout=Checkout(
            mirrors=MirrorCache(settings.mirrors_dir, max_bytes=settings.mirror_max_bytes),
            access=RepoAccess.from_settings(settings),
            credentials={host: token.get_secret_value() for host, token in settings.git_credentials.items()},
        ),
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
        max_active_per_user=settings.max_active_tasks_per_user,
        max_attempts=settings.task_max_attempts,
        heartbeat_seconds=settings.worker_heartbeat_seconds,
        stale_after=timedelta(seconds=settings.worker_stale_seconds),
        database_retry_seconds=settings.database_retry_seconds,
        author=(settings.git_author_name, settings.git_author_email),
        limits=DataLimits(git_memory=settings.git_memory_limit, max_patch_bytes=settings.max_patch_bytes),
        agent=AgentConfig(
            budget=Budget(
                max_steps=settings.agent_max_steps,
                max_wall_seconds=settings.agent_max_wall_seconds,
                max_total_tokens=settings.agent_max_total_tokens,
                max_cost=settings.agent_max_cost,
                price_input=settings.price_input_per_mtok,
                price_cached_input=settings.price_cached_input_per_mtok,
                price_output=settings.price_output_per_mtok,
            ),
            tool_output_limit=settings.agent_tool_output_limit,
            command_timeout=settings.sandbox_command_timeout,
            compact_threshold=settings.agent_compact_threshold,
            max_compactions=settings.agent_max_compactions,
        ),
    )


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


def fail_on_time_limit(task_id: str) -> None:
    with worker_context().sessions.begin() as session:
        transition(session, task_id, from_states=[TaskState.preparing, TaskState.running],
                   to_state=TaskState.failed, reason="task time limit exceeded")  # fmt: skip
