"""The loop against the real vLLM, on a server with speculative decoding off (where ``logit_bias`` and the
tool-call grammar hold): real reasoning and tool-call streams, the real server's junk — names no tool has,
arguments that are not JSON, a call cut off by ``length`` — each a tool error the model sees, a history the
server still takes, and the stored trajectory replayed by ``bench llm`` on the EAGLE server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import connect_sse

from agent.base import LimitsExceeded, ModelResponseError
from agent.budget import Budget
from agent.client import ChatClient, LLMConfig, _TurnAccumulator
from agent.leaks import INVALID_NAME, normalize_tool_calls
from agent.loop import AgentConfig, Trajectory, run_agent
from agent.prompts import COMPACTION_PROMPT, NO_TOOL_CALL_REMINDER, SYSTEM_PROMPT, first_user_message
from agent.tools import Toolbox, ToolContext
from overnight.events import event_data
from sandbox.base import SandboxSpec
from sandbox.docker import DockerBackend
from tests.mistral_validation import assert_valid_mistral_request
from tests.vllm.conftest import SERVED_MODEL, VLLMServer, serve
from tests.vllm.steering import ARGS, END_THINK, EOS, THINK, TOOL_CALLS, SteeredClient, named, token_id

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def speculative_off(
    vllm_python: Path, tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    yield from serve(vllm_python, tiny_models, "none", tmp_path_factory.mktemp("vllm-none"))


@pytest.fixture(scope="module")
def braces(tiny_models: tuple[Path, Path]) -> int:
    """The token ``{}``: an empty JSON object in one step."""
    return token_id(tiny_models[0] / "tekken.json", "{}")


@pytest.fixture
def ctx(docker_backend: DockerBackend, new_workspace: Callable[..., Path]) -> Iterator[ToolContext]:
    workspace = new_workspace(docker_backend)
    (workspace / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    sandbox = docker_backend.start(SandboxSpec(task_id="vllm", workspace=workspace))
    try:
        yield ToolContext(sandbox=sandbox, output_limit=4000, command_timeout=20)
    finally:
        sandbox.close()


def config(server: VLLMServer, **extra: Any) -> LLMConfig:
    return LLMConfig(base_url=server.base_url, model=SERVED_MODEL, api_key=server.api_key, retries=0,
                     max_tokens=48, **extra)  # fmt: skip


def stream(server: VLLMServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    model = ChatClient(config(server))
    try:
        with connect_sse(model._http, "POST", "/chat/completions", json=body) as source:
            assert source.response.status_code == 200, source.response.read()
            return [json.loads(sse.data) for sse in source.iter_sse() if sse.data.strip() != "[DONE]"]
    finally:
        model.close()


def parse(chunks: list[dict[str, Any]]) -> Any:
    accumulator = _TurnAccumulator()
    for chunk in chunks:
        accumulator.add(chunk)
    return normalize_tool_calls(accumulator.turn())


def first_body(server: VLLMServer, **steer: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": first_user_message("Make add() add.")}]  # fmt: skip
    return SteeredClient(config(server), [steer]).build_request(messages, Toolbox().schemas)


def test_a_named_tool_choice_forces_a_valid_call_with_speculative_decoding_off(
    speculative_off: VLLMServer, braces: int
) -> None:
    body = first_body(speculative_off, **named("bash"), logit_bias={TOOL_CALLS: 30, braces: 30, EOS: 30})
    chunks = stream(speculative_off, body)
    assert all(chunk.get("usage") for chunk in chunks)
    fragments = [f for c in chunks if c["choices"] for f in c["choices"][0]["delta"].get("tool_calls") or []]
    opening = [f for f in fragments if "id" in f]
    assert opening and all(len(f["id"]) == 9 and f["id"].isalnum() and f["type"] == "function" for f in opening)
    turn = parse(chunks)
    assert turn.finish_reason == "stop"  # vLLM's finish reason for a named tool choice
    # The grammar forces the name (vLLM streams it with leading whitespace, which the client strips).
    assert turn.tool_calls and {call.name for call in turn.tool_calls} == {"bash"}
    assert all(json.loads(call.arguments) == {} and call.problem is None for call in turn.tool_calls)


def test_reasoning_and_content_arrive_in_their_own_fields(speculative_off: VLLMServer) -> None:
    body = first_body(speculative_off, logit_bias={THINK: 30, END_THINK: 10, EOS: 8})
    chunks = stream(speculative_off, body)
    turn = parse(chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert turn.reasoning and turn.reasoning == "".join(d.get("reasoning") or "" for d in deltas)
    assert "[THINK]" not in (turn.content or "") and "[/THINK]" not in turn.reasoning
    assert turn.finish_reason in ("stop", "length") and not turn.tool_calls


def junk_steers(braces: int) -> list[dict[str, Any]]:
    return [
        # Three parallel calls of bash with whitespace around the name and no arguments.
        {**named("bash"), "logit_bias": {TOOL_CALLS: 30, braces: 30, EOS: 30}},
        # auto: a call with an empty name and arguments that are not JSON ('{}{}[ARGS]{}').
        {"logit_bias": {TOOL_CALLS: 30, ARGS: 30, braces: 30, EOS: 30}},
        # A call cut off by max_tokens inside its arguments.
        {**named("todo"), "logit_bias": {TOOL_CALLS: 30}, "max_tokens": 6},
        # Reasoning and text, no tool call: the loop reminds the model.
        {"logit_bias": {THINK: 30, END_THINK: 10, EOS: 8}},
    ]


def test_the_loop_survives_the_real_servers_junk(
    speculative_off: VLLMServer, ctx: ToolContext, braces: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    model = SteeredClient(config(speculative_off), junk_steers(braces))
    trajectory = Trajectory()
    with pytest.raises(LimitsExceeded, match="step budget exhausted"):
        run_agent(instruction="Make add() add.", model=model, ctx=ctx, trajectory=trajectory,
                  config=AgentConfig(budget=Budget(max_steps=4)),
                  on_event=lambda event: events.append((event.type, event_data(event))))  # fmt: skip
    results = [data for kind, data in events if kind == "tool_result"]
    outputs = [r["output"] for r in results]
    assert all(r["error"] for r in results) and len(results) >= 5
    # Whitespace around a name is stripped: bash itself answers (its arguments are missing).
    assert sum("invalid arguments for bash: command: Field required" in o for o in outputs) >= 1
    # A name no tool has becomes a tool error under a name the history can hold.
    assert any(r["name"] == INVALID_NAME and "'' is not a tool name" in r["output"] for r in results)
    assert any("cut off at max_tokens inside the arguments" in o for o in outputs)
    assert trajectory.messages[-1] == {"role": "user", "content": NO_TOOL_CALL_REMINDER}
    assistant = [m for m in trajectory.messages if m["role"] == "assistant"]
    assert any(len(m.get("tool_calls", [])) > 1 for m in assistant)  # parallel calls and their results
    assert any(m.get("reasoning") for m in assistant)  # reasoning goes back in the history
    names = {c["function"]["name"] for m in trajectory.messages for c in m.get("tool_calls", [])}
    assert names <= {"bash", "todo", INVALID_NAME}
    # Every request was valid for mistral-common, and the history after all that junk still is for vLLM.
    for body in model.bodies:
        assert_valid_mistral_request(body)
    following = SteeredClient(config(speculative_off), [{"logit_bias": {EOS: 30}}])
    turn = following.complete(trajectory.messages, Toolbox().schemas)
    assert turn.finish_reason == "stop"
    stored = tmp_path_factory.getbasetemp() / "junk-trajectory.json"
    stored.write_text(json.dumps({"tools": trajectory.tools, "messages": trajectory.messages}))


def test_compaction_on_the_real_server(speculative_off: VLLMServer, ctx: ToolContext, braces: int) -> None:
    call = {**named("bash"), "logit_bias": {TOOL_CALLS: 30, braces: 30, EOS: 30}}
    steers = [call, {"logit_bias": {THINK: 30, END_THINK: 10, EOS: 8}}, call]
    model = SteeredClient(config(speculative_off), steers)
    events: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(LimitsExceeded, match="context budget exhausted"):
        run_agent(instruction="Make add() add.", model=model, ctx=ctx,
                  config=AgentConfig(compact_threshold=1600, max_compactions=1),
                  on_event=lambda event: events.append((event.type, event_data(event))))  # fmt: skip
    assert model.bodies[1]["messages"][-1] == {"role": "user", "content": COMPACTION_PROMPT}
    assert [kind for kind, _ in events].count("compaction") == 1
    for body in model.bodies:
        assert_valid_mistral_request(body)


def test_provider_mistral_against_vllm_says_it_is_a_misconfiguration(speculative_off: VLLMServer) -> None:
    model = ChatClient(config(speculative_off, provider="mistral"))
    previous = parse(stream(speculative_off, first_body(speculative_off, logit_bias={THINK: 30, END_THINK: 10,
                                                                                     EOS: 8})))  # fmt: skip
    assert previous.reasoning
    messages = [*first_body(speculative_off)["messages"], model.history_message(previous),
                {"role": "user", "content": NO_TOOL_CALL_REMINDER}]  # fmt: skip
    with pytest.raises(ModelResponseError, match=r"HTTP 400.*set OVERNIGHT_LLM_PROVIDER=vllm"):
        model.complete(messages, Toolbox().schemas)


def test_a_stored_trajectory_replays_on_the_eagle_server(
    vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    stored = tmp_path_factory.getbasetemp() / "junk-trajectory.json"
    if not stored.exists():
        pytest.skip("needs the trajectory of test_the_loop_survives_the_real_servers_junk")
    output = tmp_path / "bench.json"
    result = subprocess.run(
        ["overnight", "bench", "llm", "--base-url", vllm_server.base_url, "--api-key", vllm_server.api_key,
         "--trajectory", str(stored), "--concurrency", "1", "--max-tokens", "8", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(output.read_text())[vllm_server.base_url]
    turns = sum(m["role"] == "assistant" for m in json.loads(stored.read_text())["messages"])
    assert row["requests"] == turns >= 4 and row["mean_acceptance_length"] is not None
    assert row["prefix_cache_hit_rate"] > 0.5  # each request extends the previous one
