"""Repairs to a model turn before the loop sees it: tool calls leaked into ``content`` as raw Mistral
tokens, and tool-call ids the Mistral tokenizer would reject."""

from __future__ import annotations

import json
import re
import secrets
import string

from agent.base import AssistantTurn, ToolCall

TOOL_CALLS_TOKEN = "[TOOL_CALLS]"
ARGS_TOKEN = "[ARGS]"
ID_PATTERN = re.compile(r"[A-Za-z0-9]{9}")
_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(9))


def normalize_tool_calls(turn: AssistantTurn) -> AssistantTurn:
    """Replace ids that are not 9 alphanumeric characters (vLLM would truncate or reject them)."""
    if all(ID_PATTERN.fullmatch(call.id) for call in turn.tool_calls):
        return turn
    calls = [
        call if ID_PATTERN.fullmatch(call.id) else call.model_copy(update={"id": new_tool_call_id()})
        for call in turn.tool_calls
    ]
    return turn.model_copy(update={"tool_calls": calls})


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
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name.strip()):
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
