"""The Celery task body and the per-process worker context it runs with."""

from __future__ import annotations

import threading

from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig
from migrations.store import make_engine, make_sessionmaker
from overnight.settings import Settings
from sandbox.docker import DockerConfig
from worker.pipeline import WorkerContext, run_task

_context: WorkerContext | None = None
_lock = threading.Lock()


def build_context(settings: Settings) -> WorkerContext:
    engine = make_engine(settings.resolved_database_url)

    def model_factory(task_id: str) -> ChatClient:
        return ChatClient(
            LLMConfig(
                base_url=settings.llm_base_url,
                model=settings.llm_model,
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

    return WorkerContext(
        sessions=make_sessionmaker(engine),
        backend=DockerConfig(
            image=settings.sandbox_image,
            memory=settings.sandbox_memory,
            pids=settings.sandbox_pids,
            cpus=settings.sandbox_cpus,
            command_timeout=settings.sandbox_command_timeout,
        ).build(),
        model_factory=model_factory,
        workspaces=settings.workspaces_dir,
        allow_local_repos=settings.allow_local_repos,
        agent=AgentConfig(
            max_steps=settings.agent_max_steps,
            tool_output_limit=settings.agent_tool_output_limit,
            command_timeout=settings.sandbox_command_timeout,
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
