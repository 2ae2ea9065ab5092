"""The Celery task body and the per-process worker context it runs with."""

from __future__ import annotations

import threading

from agent.budget import Budget
from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig
from migrations.store import make_engine, make_sessionmaker
from overnight.settings import Settings
from sandbox.environments import EnvironmentCache
from worker.environment import SetupPolicy
from worker.pipeline import WorkerContext, run_task
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
    return WorkerContext(
        sessions=make_sessionmaker(engine),
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
        ),
        agent_network=settings.sandbox_agent_network,
        model_factory=model_factory,
        workspaces=settings.workspaces_dir,
        allow_local_repos=settings.allow_local_repos,
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


def run_task_entry(task_id: str) -> None:
    run_task(task_id, worker_context())
