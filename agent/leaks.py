"""Repairs to a model turn before the loop sees it: tool calls leaked into ``content`` as raw Mistral
tokens, and tool-call ids and names the Mistral tokenizer would reject in the next request's history (vLLM
checks names against ``^[a-zA-Z0-9_-]{1,64}$`` and ids against 9 alphanumerics). A call whose name had to
be replaced carries a ``problem``: the loop answers it with a tool error, under a name the history can hold."""

from __future__ import annotations

import json
import re
import secrets
import string

from agent.base import AssistantTurn, ToolCall

TOOL_CALLS_TOKEN = "[TOOL_CALLS]"
ARGS_TOKEN = "[ARGS]"
ID_PATTERN = re.compile(r"[A-Za-z0-9]{9}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
INVALID_NAME = "invalid_tool_name"
"""The name a call with an unusable name keeps in the history (valid for vLLM, never a real tool)."""
QUOTE_LIMIT = 200
_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(9))


def normalize_tool_calls(turn: AssistantTurn) -> AssistantTurn:
    """Ids that are not 9 alphanumerics are replaced; names are stripped of whitespace, and a name that is
    still not a function name is replaced by ``INVALID_NAME`` with a ``problem`` (the call does not run).
    Arguments stay as the model wrote them (vLLM takes any text back); cut off by ``length``, they get a
    ``problem`` that says so."""
    calls = [_normalize_call(call, cut=turn.finish_reason == "length") for call in turn.tool_calls]
    if calls == turn.tool_calls:
        return turn
    return turn.model_copy(update={"tool_calls": calls})


def _normalize_call(call: ToolCall, *, cut: bool) -> ToolCall:
    update: dict[str, str] = {}
    if not ID_PATTERN.fullmatch(call.id):
        update["id"] = new_tool_call_id()
    name = call.name.strip()
    if not NAME_PATTERN.fullmatch(name):
        update["problem"] = f"{_quote(call.name)} is not a tool name (letters, digits, _ and -, at most 64)"
        name = INVALID_NAME
    if name != call.name:
        update["name"] = name
    if cut and "problem" not in update:  # vLLM takes any argument text back; the reason is what helps the model
        try:
            json.loads(call.arguments)
        except json.JSONDecodeError:
            update["problem"] = f"the output was cut off at max_tokens inside the arguments {_quote(call.arguments)}"
    return call.model_copy(update=update) if update else call


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "...")


def recover_leaked_tool_calls(turn: AssistantTurn) -> AssistantTurn:
    """Turn ``[TOOL_CALLS]name[ARGS]{...}`` (v11+) or ``[TOOL_CALLS][{"name":..,"arguments":..}]`` (older
    tokenizers) found in ``content`` into real tool calls. Text that cannot be parsed stays in the content,
    where the loop reports it to the model."""
    content = turn.content or ""
    if turn.tool_calls or TOOL_CALLS_TOKEN not in content:
        return turn
    head, _, rest = content.partition(TOOL_CALLS_TOKEN)
    calls = _parse_v11(rest) if ARGS_TOKEN in rest else _parse_legacy(rest)
    if not calls:
        return turn
    return turn.model_copy(update={"content": head.strip() or None, "tool_calls": calls, "finish_reason": "tool_calls"})


def _parse_v11(text: str) -> list[ToolCall]:
    decoder = json.JSONDecoder()
    calls = []
    for segment in text.split(TOOL_CALLS_TOKEN):
        name, sep, arguments = segment.partition(ARGS_TOKEN)
        if not sep or not NAME_PATTERN.fullmatch(name.strip()):
            return []
        try:
            parsed, _ = decoder.raw_decode(arguments.strip())
        except json.JSONDecodeError:
            return []
        calls.append(ToolCall(id=new_tool_call_id(), name=name.strip(), arguments=json.dumps(parsed)))
    return calls


def _parse_legacy(text: str) -> list[ToolCall]:
    try:
        parsed, _ = json.JSONDecoder().raw_decode(text.strip())
    except json.JSONDecodeError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        arguments = item.get("arguments", {})
        calls.append(
            ToolCall(
                id=new_tool_call_id(),
                name=item["name"],
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
    return calls
