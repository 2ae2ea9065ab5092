"""Agent-loop benchmark: what the platform costs per step, and how warm it keeps vLLM's prefix cache.

Replays the 40-step example session (``agent.scripted.example_session``) against the scripted vLLM server
and a real Docker sandbox, with events written to a real SQLite store as the worker does. Per step it
measures the platform's overhead — everything but waiting for the model: tool execution in the sandbox,
event writes, request building and stream parsing — and, over all requests, the share of prompt bytes
that were a byte-identical prefix of the previous request.

    python -m bench.agent --runs 3 [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import store.events
import store.tasks
from agent.base import AssistantTurn
from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig, Trajectory, run_agent
from agent.scripted import EXAMPLE_REPOSITORY, ScriptedModel, ScriptedModelServer, example_session
from agent.tools import ToolContext
from overnight.events import TaskEvent, ToolResultEvent
from sandbox.base import SandboxSpec
from sandbox.disk import remove_folder
from sandbox.docker import DockerConfig
from store.engine import make_engine, make_sessionmaker, migrate


class TimedClient:
    """The real client, with the seconds spent waiting for each response recorded."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.model_seconds: list[float] = []
        self.step_starts: list[float] = []

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        self.step_starts.append(time.perf_counter())
        started = time.perf_counter()
        turn = self.client.complete(messages, tools)
        self.model_seconds.append(time.perf_counter() - started)
        return turn

    def history_message(self, turn: AssistantTurn) -> dict[str, Any]:
        return self.client.history_message(turn)


def prefix_share(requests: list[dict[str, Any]]) -> float:
    """Bytes of each request (after the first) that repeat the previous request's prompt, over all bytes."""
    shared = total = 0
    previous = b""
    for body in requests:
        prompt = json.dumps([body["tools"], body["messages"]], separators=(",", ":")).encode()
        if previous:
            common = 0
            for mine, theirs in zip(prompt, previous, strict=False):
                if mine != theirs:
                    break
                common += 1
            shared += common
            total += len(prompt)
        previous = prompt
    return shared / total if total else 0.0


def run_once(tmp: Path, index: int) -> dict[str, Any]:
    backend = DockerConfig().build()
    workspace = tmp / f"ws{index}"
    backend.create_workspace(workspace)
    for name, text in EXAMPLE_REPOSITORY.items():
        (workspace / name).write_text(text)
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        task_id = store.tasks.create_task(session, repo="/bench", ref=None, instruction="bench").id

    tool_seconds: dict[int, float] = {}

    def emit(event: TaskEvent) -> None:
        if isinstance(event, ToolResultEvent):
            tool_seconds[event.step] = tool_seconds.get(event.step, 0.0) + (event.duration or 0.0)
        with sessions.begin() as session:
            store.events.append_event(session, task_id, event)

    sandbox = backend.start(SandboxSpec(task_id=f"bench-{index}", workspace=workspace))
    try:
        with ScriptedModelServer(ScriptedModel(example_session())) as server:
            client = TimedClient(ChatClient(LLMConfig(base_url=server.base_url, model="mistral-medium-3.5")))
            trajectory = Trajectory()
            started = time.perf_counter()
            run_agent(
                instruction="Make add() add.",
                model=client,
                ctx=ToolContext(sandbox=sandbox, command_timeout=60),
                config=AgentConfig(),
                on_event=emit,
                trajectory=trajectory,
            )
            ended = time.perf_counter()
            requests = server.state.requests
    finally:
        sandbox.close()
        remove_folder(workspace)
    boundaries = [*client.step_starts, ended]
    overheads = [
        (boundaries[i + 1] - boundaries[i]) - client.model_seconds[i] for i in range(len(client.model_seconds))
    ]
    usages = [step["usage"] for step in trajectory.steps]
    return {
        "overheads": overheads,
        "outside_tools": [o - tool_seconds.get(i + 1, 0.0) for i, o in enumerate(overheads)],
        "model_seconds": client.model_seconds,
        "wall": ended - started,
        "prefix_share": prefix_share(requests),
        "cached_share": sum(u["cached_tokens"] for u in usages[1:]) / sum(u["prompt_tokens"] for u in usages[1:]),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_once(Path(tmp), index) for index in range(args.runs)]
    overheads = [o * 1000 for run in runs for o in run["overheads"]]
    model = [m * 1000 for run in runs for m in run["model_seconds"]]
    outside = [o * 1000 for run in runs for o in run["outside_tools"]]
    result = {
        "runs": args.runs,
        "steps": len(overheads),
        "overhead_ms_median": statistics.median(overheads),
        "overhead_ms_p95": percentile(overheads, 0.95),
        "outside_tools_ms_median": statistics.median(outside),
        "outside_tools_ms_p95": percentile(outside, 0.95),
        "model_wait_ms_median": statistics.median(model),
        "prefix_share": statistics.median(run["prefix_share"] for run in runs),
        "cached_token_share": statistics.median(run["cached_share"] for run in runs),
    }
    print(f"steps measured:                    {result['steps']} ({args.runs} runs of the 40-step session)")
    print(
        f"platform overhead per step:        median {result['overhead_ms_median']:.1f} ms, "
        f"p95 {result['overhead_ms_p95']:.1f} ms"
    )
    print(
        f"  of which outside tool execution: median {result['outside_tools_ms_median']:.1f} ms, "
        f"p95 {result['outside_tools_ms_p95']:.1f} ms (events, request building, stream parsing)"
    )
    print(f"waiting for the (scripted) model:  median {result['model_wait_ms_median']:.1f} ms")
    print(f"prompt bytes that repeat the previous request's prefix: {result['prefix_share']:.1%}")
    print(f"cached prompt tokens reported by the server:            {result['cached_token_share']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
