"""The chat client against the scripted server speaking vLLM's streaming format."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from agent.base import ModelResponseError, ModelUnavailableError
from agent.client import ChatClient, LLMConfig
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from agent.tools import Toolbox
from tests.mistral_validation import assert_valid_mistral_request

TOOLS = Toolbox().schemas


def _client(server: ScriptedModelServer, **overrides: object) -> ChatClient:
    config = {"base_url": server.base_url, "model": "mistral-medium-3.5", "retries": 2, "backoff_max": 0.1}
    return ChatClient(LLMConfig(**config | overrides))  # type: ignore[arg-type]


def test_streamed_tool_calls_are_accumulated_by_index(scripted_model: ScriptedModelServer) -> None:
    long_command = "python3 -m pytest -x tests/test_api.py -k 'flaky and not slow' " * 3
    scripted_model.state.extend(
        [
            ScriptedTurn(
                reasoning="I will run the tests and read the file." * 3,
                content="Running both.",
                tool_calls=[
                    ScriptedCall(name="bash", arguments={"command": long_command}),
                    ScriptedCall(name="read_file", arguments={"file_path": "tests/test_api.py", "offset": 3}),
                ],
            )
        ]
    )
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    turn = _client(scripted_model).complete(messages, TOOLS)
    assert turn.finish_reason == "tool_calls"
    assert turn.reasoning == "I will run the tests and read the file." * 3 and turn.content == "Running both."
    assert [c.name for c in turn.tool_calls] == ["bash", "read_file"]
    assert json.loads(turn.tool_calls[0].arguments) == {"command": long_command}
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", c.id) for c in turn.tool_calls)
    assert turn.usage.prompt_tokens > 0 and turn.usage.completion_tokens > 0


def test_request_body_is_what_vllm_with_the_mistral_tokenizer_accepts(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend(
        [
            ScriptedTurn(reasoning="think", tool_calls=[ScriptedCall(name="bash", arguments={"command": "ls"})]),
            ScriptedTurn(content="done"),
        ]
    )
    client = _client(scripted_model)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    turn = client.complete(messages, TOOLS)
    messages += [
        turn.to_message(),
        {"role": "tool", "tool_call_id": turn.tool_calls[0].id, "name": "bash", "content": "a.txt"},
    ]
    client.complete(messages, TOOLS)
    first, second = scripted_model.state.requests
    for body in (first, second):
        assert_valid_mistral_request(body)
        assert body["reasoning_effort"] == "high" and body["temperature"] == 0.7 and body["top_p"] == 0.95
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["tools"] == TOOLS and body["tool_choice"] == "auto"
    # The previous turn's reasoning goes back verbatim; the second request extends the first.
    assert second["messages"][2]["reasoning"] == "think"
    assert second["messages"][: len(first["messages"])] == first["messages"]


def test_cached_tokens_are_read_from_prompt_tokens_details(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend([ScriptedTurn(content="a"), ScriptedTurn(content="b")])
    client = _client(scripted_model)
    long_history = [{"role": "system", "content": "x" * 4000}, {"role": "user", "content": "u"}]
    assert client.complete(long_history, TOOLS).usage.cached_tokens == 0
    second = client.complete(
        [*long_history, {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}], TOOLS
    )
    assert second.usage.cached_tokens >= 1000


def test_5xx_and_429_are_retried(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend([ScriptedTurn(status=503), ScriptedTurn(status=429), ScriptedTurn(content="ok")])
    turn = _client(scripted_model).complete([{"role": "user", "content": "u"}], TOOLS)
    assert turn.content == "ok" and len(scripted_model.state.requests) == 3


def test_endpoint_that_stays_down_raises_unavailable_with_the_reason(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend([ScriptedTurn(status=503)] * 3)
    with pytest.raises(ModelUnavailableError, match=r"after 3 attempts: HTTP 503"):
        _client(scripted_model).complete([{"role": "user", "content": "u"}], TOOLS)


def test_unreachable_endpoint_raises_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ChatClient(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff_max=0.1))
    with pytest.raises(ModelUnavailableError, match=r"model endpoint unreachable at .* ConnectError"):
        client.complete([{"role": "user", "content": "u"}], TOOLS)


def test_a_stream_that_trickles_past_the_request_timeout_is_cut_off_and_retried(
    scripted_model: ScriptedModelServer,
) -> None:
    # Each chunk arrives well inside httpx's read timeout; the whole response would take 4 s against a 1 s limit.
    slow = ScriptedTurn(reasoning="x" * 16 * 20, content="late", chunk_delay=0.2)
    scripted_model.state.extend([slow, ScriptedTurn(content="ok")])
    client = ChatClient(LLMConfig(base_url=scripted_model.base_url, model="mistral-medium-3.5", timeout=1.0,
                                  retries=1, backoff_max=0.1))  # fmt: skip
    started = time.monotonic()
    turn = client.complete([{"role": "user", "content": "u"}], TOOLS)
    assert turn.content == "ok" and len(scripted_model.state.requests) == 2
    assert time.monotonic() - started < 3


def test_4xx_is_not_retried_and_says_what_the_server_said(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend([ScriptedTurn(status=400), ScriptedTurn(content="never")])
    with pytest.raises(ModelResponseError, match=r"HTTP 400\): scripted error 400"):
        _client(scripted_model).complete([{"role": "user", "content": "u"}], TOOLS)
    assert len(scripted_model.state.requests) == 1


def test_output_cut_off_at_max_tokens_is_retried_with_a_larger_budget(scripted_model: ScriptedModelServer) -> None:
    scripted_model.state.extend(
        [
            ScriptedTurn(reasoning="long thought", finish_reason="length"),
            ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": "ls"})]),
        ]
    )
    turn = _client(scripted_model, max_tokens=100).complete([{"role": "user", "content": "u"}], TOOLS)
    assert turn.tool_calls and [r["max_tokens"] for r in scripted_model.state.requests] == [100, 200]


@pytest.mark.parametrize(
    ("name", "expected", "problem"),
    [
        ("  \t bash", "bash", None),  # what vLLM streams for a named tool choice on the CPU
        ("bash\n", "bash", None),
        ("", "invalid_tool_name", "'' is not a tool name"),
        ('""""', "invalid_tool_name", '\'""""\' is not a tool name'),
        ("read file", "invalid_tool_name", "'read file' is not a tool name"),
        ("x" * 65, "invalid_tool_name", "is not a tool name"),
        ("vim", "vim", None),  # a valid name no tool has: the toolbox answers "unknown tool"
    ],
)
def test_tool_names_are_normalized_so_the_history_stays_valid(name: str, expected: str, problem: str | None) -> None:
    from agent.base import AssistantTurn, ToolCall
    from agent.leaks import normalize_tool_calls

    turn = normalize_tool_calls(AssistantTurn(tool_calls=[ToolCall(id="abcABC123", name=name, arguments="{}")]))
    (call,) = turn.tool_calls
    assert call.name == expected and call.id == "abcABC123"
    assert (call.problem is None) if problem is None else (problem in (call.problem or ""))


def test_a_call_cut_off_by_length_says_so() -> None:
    from agent.base import AssistantTurn, ToolCall
    from agent.leaks import normalize_tool_calls

    cut = AssistantTurn(finish_reason="length", tool_calls=[ToolCall(id="", name="todo", arguments='{"act')])
    (call,) = normalize_tool_calls(cut).tool_calls
    assert len(call.id) == 9 and call.arguments == '{"act'
    assert call.problem == "the output was cut off at max_tokens inside the arguments '{\"act'"
