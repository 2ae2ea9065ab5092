"""The loop against the scripted vLLM server and a real Docker sandbox: protocol rules, budgets, compaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.base import LimitsExceeded
from agent.budget import Budget
from agent.client import ChatClient, LLMConfig
from agent.loop import AgentConfig, AgentResult, Trajectory, run_agent
from agent.prompts import COMPACTION_PROMPT, SYSTEM_PROMPT, UNPARSED_TOOL_CALL
from agent.scripted import (
    EXAMPLE_REPOSITORY,
    ScriptedCall,
    ScriptedModel,
    ScriptedModelServer,
    ScriptedTurn,
    example_session,
)
from agent.tools import ToolContext
from overnight.events import TaskEvent, event_data
from sandbox.base import SandboxSpec
from sandbox.docker import DockerBackend
from tests.mistral_validation import assert_valid_mistral_request

FINISH = ScriptedCall(name="finish", arguments={"summary": "done", "pr_title": "Fix add", "pr_body": "Fixed."})


@pytest.fixture
def ctx(docker_backend: DockerBackend, new_workspace: Callable[..., Path]) -> Iterator[ToolContext]:
    workspace = new_workspace(docker_backend)
    for name, text in EXAMPLE_REPOSITORY.items():
        (workspace / name).write_text(text)
    sandbox = docker_backend.start(SandboxSpec(task_id="loop", workspace=workspace))
    try:
        yield ToolContext(sandbox=sandbox, output_limit=4000, command_timeout=20)
    finally:
        sandbox.close()


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, event: TaskEvent) -> None:
        self.append((event.type, event_data(event)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self if k == kind]


def run(
    server: ScriptedModelServer,
    ctx: ToolContext,
    turns: list[ScriptedTurn],
    *,
    config: AgentConfig | None = None,
    provider: str = "vllm",
    trajectory: Trajectory | None = None,
) -> tuple[AgentResult, Events]:
    server.state.extend(turns)
    events = Events()
    client = ChatClient(LLMConfig(base_url=server.base_url, model="mistral-medium-3.5", retries=0, provider=provider))
    result = run_agent(
        instruction="Make add() add.",
        model=client,
        ctx=ctx,
        config=config or AgentConfig(),
        on_event=events,
        trajectory=trajectory,
    )
    return result, events


def assert_protocol(requests: list[dict[str, Any]]) -> None:
    """Every request is valid for Mistral's tokenizer and extends the previous one byte for byte."""
    for previous, body in zip([None, *requests], requests, strict=False):
        assert_valid_mistral_request(body)
        assert body["tools"] == requests[0]["tools"] and body["reasoning_effort"] == "high"
        if previous is not None:
            assert body["messages"][: len(previous["messages"])] == previous["messages"]


def test_parallel_tool_calls_get_one_tool_message_each_in_order(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    calls = [
        ScriptedCall(name="read_file", arguments={"file_path": "calc.py"}),
        ScriptedCall(name="bash", arguments={"command": "echo second"}),
        ScriptedCall(name="grep", arguments={"pattern": "return"}),
    ]
    result, _ = run(
        scripted_model, ctx, [ScriptedTurn(reasoning="look", tool_calls=calls), ScriptedTurn(tool_calls=[FINISH])]
    )
    assert result.submission.pr_title == "Fix add" and result.steps == 2
    requests = scripted_model.state.requests
    assert_protocol(requests)
    history = requests[1]["messages"]
    assistant = history[2]
    assert assistant["reasoning"] == "look"
    tool_messages = history[3:]
    assert [m["tool_call_id"] for m in tool_messages] == [c["id"] for c in assistant["tool_calls"]]
    assert [m["name"] for m in tool_messages] == ["read_file", "bash", "grep"]
    assert "second" in tool_messages[1]["content"]


def test_system_prompt_is_stable_and_root_agents_md_is_in_the_first_user_message(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    run(scripted_model, ctx, [ScriptedTurn(tool_calls=[FINISH])])
    first = scripted_model.state.requests[0]["messages"]
    assert first[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "Run the tests with `python3 -m unittest`." in first[1]["content"]
    assert "<task>\nMake add() add.\n</task>" in first[1]["content"]


def test_tool_errors_go_back_to_the_model_and_the_loop_goes_on(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    turns = [
        ScriptedTurn(tool_calls=[ScriptedCall(name="vim", arguments={"file": "x"})]),
        ScriptedTurn(tool_calls=[ScriptedCall(name="read_file", arguments="{not json")]),
        ScriptedTurn(
            tool_calls=[
                ScriptedCall(name="edit", arguments={"file_path": "/etc/passwd", "old_string": "a", "new_string": "b"})
            ]
        ),
        ScriptedTurn(tool_calls=[FINISH]),
    ]
    _, events = run(scripted_model, ctx, turns)
    results = events.of("tool_result")
    assert [r["error"] for r in results] == [True, True, True]
    assert "unknown tool 'vim'" in results[0]["output"]
    assert "not valid JSON" in results[1]["output"]
    assert "outside the workspace" in results[2]["output"]
    assert_protocol(scripted_model.state.requests)


def test_leaked_tool_call_text_is_recovered_or_reported(scripted_model: ScriptedModelServer, ctx: ToolContext) -> None:
    turns = [
        ScriptedTurn(content='Reading.[TOOL_CALLS]read_file[ARGS]{"file_path": "calc.py"}'),
        ScriptedTurn(content="[TOOL_CALLS]bash[ARGS]{broken json"),
        ScriptedTurn(tool_calls=[FINISH]),
    ]
    _, events = run(scripted_model, ctx, turns)
    assert events.of("tool_call")[0]["name"] == "read_file"
    assert "return a - b" in events.of("tool_result")[0]["output"]
    assert len(events.of("format_error")) == 1
    requests = scripted_model.state.requests
    assert requests[2]["messages"][-1] == {"role": "user", "content": UNPARSED_TOOL_CALL}
    assert_protocol(requests)


def test_tool_call_ids_that_break_mistral_rules_are_replaced(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    turns = [
        ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "true"}, id="call_abc-123_xyz")]),
        ScriptedTurn(tool_calls=[FINISH]),
    ]
    run(scripted_model, ctx, turns)
    history = scripted_model.state.requests[1]["messages"]
    assert (
        len(history[2]["tool_calls"][0]["id"]) == 9 and history[3]["tool_call_id"] == history[2]["tool_calls"][0]["id"]
    )
    assert_protocol(scripted_model.state.requests)


def test_mistral_provider_sends_reasoning_back_as_thinking_chunks(tmp_path: Path, ctx: ToolContext) -> None:
    with ScriptedModelServer(ScriptedModel(dialect="mistral")) as server:
        turns = [
            ScriptedTurn(
                reasoning="think hard",
                content="Looking.",
                tool_calls=[ScriptedCall(name="bash", arguments={"command": "true"})],
            ),
            ScriptedTurn(tool_calls=[FINISH]),
        ]
        run(server, ctx, turns, provider="mistral")
        assistant = server.state.requests[1]["messages"][2]
    assert assistant["content"] == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "think hard"}]},
        {"type": "text", "text": "Looking."},
    ]
    assert "reasoning" not in assistant


@pytest.mark.parametrize(
    ("budget", "turn", "reason"),
    [
        (
            Budget(max_steps=2),
            ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "true"})]),
            "step budget exhausted (2 steps) before the model called finish",
        ),
        (Budget(max_total_tokens=50), ScriptedTurn(content="x" * 400), "token budget exhausted"),
        (Budget(max_cost=0.0001, price_input=1000.0), ScriptedTurn(content="hi"), "cost budget exhausted (estimated"),
        (
            Budget(max_wall_seconds=0.5),
            ScriptedTurn(delay=0.6, tool_calls=[ScriptedCall(name="bash", arguments={"command": "true"})]),
            "wall-time budget exhausted (0.5 s)",
        ),
    ],
)
def test_budgets_end_the_run_with_their_reason(
    scripted_model: ScriptedModelServer, ctx: ToolContext, budget: Budget, turn: ScriptedTurn, reason: str
) -> None:
    with pytest.raises(LimitsExceeded) as info:
        run(scripted_model, ctx, [turn] * 3, config=AgentConfig(budget=budget))
    assert str(info.value).startswith(reason)


def test_a_command_never_outlives_the_wall_time_budget(scripted_model: ScriptedModelServer, ctx: ToolContext) -> None:
    turns = [ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "sleep 60", "timeout": 60})])]
    with pytest.raises(LimitsExceeded, match="wall-time budget exhausted"):
        run(scripted_model, ctx, turns * 2, config=AgentConfig(budget=Budget(max_wall_seconds=3)))


def test_compaction_replaces_older_turns_with_a_summary_once(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    big = ScriptedCall(name="bash", arguments={"command": "seq 1 3000"})
    turns = [
        ScriptedTurn(tool_calls=[big]),
        ScriptedTurn(content="Summary: add() subtracts; nothing edited yet."),
        ScriptedTurn(
            tool_calls=[
                ScriptedCall(
                    name="edit", arguments={"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
                )
            ]
        ),
        ScriptedTurn(tool_calls=[FINISH]),
    ]
    trajectory = Trajectory()
    config = AgentConfig(compact_threshold=2000, max_compactions=1)
    result, events = run(scripted_model, ctx, turns, config=config, trajectory=trajectory)
    assert result.submission.pr_title == "Fix add"
    requests = scripted_model.state.requests
    assert requests[1]["messages"][-1] == {"role": "user", "content": COMPACTION_PROMPT}
    after = requests[2]["messages"]
    assert [m["role"] for m in after] == ["system", "user"]
    assert (
        "Summary: add() subtracts" in after[1]["content"] and "<task>\nMake add() add.\n</task>" in after[1]["content"]
    )
    assert events.of("compaction")[0]["summary"] == "Summary: add() subtracts; nothing edited yet."
    assert [m.get("overnight_compaction") for m in trajectory.messages].count(True) == 1
    assert trajectory.messages[:4] == requests[1]["messages"][:4]  # the transcript keeps what came before
    for body in requests:
        assert_valid_mistral_request(body)


def test_reaching_the_threshold_again_after_the_last_compaction_ends_the_run(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    big = ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "seq 1 3000"})])
    with pytest.raises(LimitsExceeded, match=r"context budget exhausted \(\d+ tokens\) after 0 compaction"):
        run(scripted_model, ctx, [big] * 3, config=AgentConfig(compact_threshold=2000, max_compactions=0))


def test_forty_step_trajectory_replays_with_a_warm_prefix_cache(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    turns = example_session()
    trajectory = Trajectory()
    result, events = run(scripted_model, ctx, turns, trajectory=trajectory)
    assert result.steps == 40 and result.submission.pr_title == "Make add() add and cover it with tests"
    requests = scripted_model.state.requests
    assert len(requests) == 40
    assert_protocol(requests)
    assert ctx.sandbox.run("python3 -m unittest -q 2>&1 | tail -1").stdout.strip() == "OK"
    usages = [step["usage"] for step in trajectory.steps]
    cached_share = sum(u["cached_tokens"] for u in usages[1:]) / sum(u["prompt_tokens"] for u in usages[1:])
    assert cached_share > 0.8
    assert len(events.of("tool_result")) == 39


def test_trajectory_is_json_serialisable(scripted_model: ScriptedModelServer, ctx: ToolContext) -> None:
    trajectory = Trajectory()
    run(scripted_model, ctx, [ScriptedTurn(tool_calls=[FINISH])], trajectory=trajectory)
    data = json.loads(
        json.dumps({"tools": trajectory.tools, "messages": trajectory.messages, "steps": trajectory.steps})
    )
    assert data["messages"][0]["role"] == "system" and data["steps"][0]["usage"]["prompt_tokens"] > 0


def test_a_stored_trajectory_replays_as_exactly_the_requests_the_agent_sent(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    from overnight.admin.benchllm import measure, requests_from_trajectory

    trajectory = Trajectory()
    turns = [
        ScriptedTurn(
            reasoning="Look.", tool_calls=[ScriptedCall(name="read_file", arguments={"file_path": "calc.py"})]
        ),
        ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "python3 -c 'print(1)'"})]),
        ScriptedTurn(tool_calls=[FINISH]),
    ]
    run(scripted_model, ctx, turns, trajectory=trajectory)
    stored = json.loads(json.dumps({"tools": trajectory.tools, "messages": trajectory.messages}))
    sent = [request["messages"] for request in scripted_model.state.requests]
    bodies = requests_from_trajectory(stored, "mistral-medium-3.5", 1024)
    assert [body["messages"] for body in bodies] == sent and len(sent) == 3
    assert bodies[0]["tools"] == scripted_model.state.requests[0]["tools"]
    # Replayed by `overnight bench llm --trajectory`: two sessions, each its own affinity key and task prefix.
    scripted_model.state.default = ScriptedTurn(content="ok")
    [row] = measure(scripted_model.base_url, "mistral-medium-3.5", api_key=None, levels=[2], sessions_steps=3,
                    max_tokens=64, trajectory=stored)  # fmt: skip
    assert row["requests"] == 6
    replayed = scripted_model.state.requests[3:]
    firsts = {r["messages"][1]["content"].split("\n", 1)[0] for r in replayed}
    assert len(firsts) == 2 and all(first.startswith("(session bench-") for first in firsts)
    assert all(r["messages"][0] == sent[0][0] for r in replayed)  # the shared system prompt, unchanged
    with pytest.raises(ValueError, match="needs 'messages' and 'tools'"):
        requests_from_trajectory({"steps": []}, "m", 1)


def test_a_tool_that_breaks_costs_its_call_not_the_task(scripted_model: ScriptedModelServer, ctx: ToolContext) -> None:
    from agent.tools import TOOLS, Toolbox
    from agent.tools.base import Tool, ToolArgs

    def broken(args: ToolArgs, context: ToolContext) -> str:
        return {"a": 1}["missing"]  # type: ignore[return-value]  # a bug, as a real tool might have

    flaky = Tool(name="flaky", description="A tool with a bug.", args=ToolArgs, run=broken)
    scripted_model.state.extend([
        ScriptedTurn(tool_calls=[ScriptedCall(name="flaky", arguments={})]),
        ScriptedTurn(tool_calls=[FINISH]),
    ])  # fmt: skip
    events = Events()
    client = ChatClient(LLMConfig(base_url=scripted_model.base_url, model="mistral-medium-3.5", retries=0))
    result = run_agent(instruction="Make add() add.", model=client, ctx=ctx, config=AgentConfig(), on_event=events,
                       toolbox=Toolbox((*TOOLS, flaky)))  # fmt: skip
    assert result.submission.pr_title == "Fix add"
    [failed] = [data for data in events.of("tool_result") if data["name"] == "flaky"]
    assert failed["error"] and "internal error (KeyError: 'missing')" in failed["output"]
    second = scripted_model.state.requests[1]["messages"][-1]
    assert second["role"] == "tool" and "internal error (KeyError" in second["content"]
