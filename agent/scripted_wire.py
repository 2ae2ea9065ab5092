"""The wire side of the scripted model server: a turn answered as vLLM answers it, whole (``complete``) or as its
SSE stream (``stream``), with vLLM's usage and error bodies. ``agent/scripted.py`` holds the state and the app."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from agent.scripted import ScriptedCall, ScriptedTurn

ID_ALPHABET = string.ascii_letters + string.digits
CHARS_PER_TOKEN = 4
ARGUMENT_FRAGMENT = 24


def tool_call_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(9))


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status},
        status_code=status,
    )


def _arguments_text(call: ScriptedCall) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def finish_reason(turn: ScriptedTurn) -> str:
    return turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")


def usage_body(turn: ScriptedTurn, usage: dict[str, int]) -> dict[str, Any]:
    completion = sum(
        len(text) for text in (turn.reasoning or "", turn.content or "", *map(_arguments_text, turn.tool_calls))
    )
    completion_tokens = max(completion // CHARS_PER_TOKEN, 1)
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "total_tokens": usage["prompt_tokens"] + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": len(turn.reasoning or "") // CHARS_PER_TOKEN},
    }


def complete(turn: ScriptedTurn, model: str, usage: dict[str, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.content, "reasoning": turn.reasoning}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id or tool_call_id(),
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments_text(c)},
            }
            for c in turn.tool_calls
        ]
    return {
        "id": f"chatcmpl-{secrets.token_hex(16)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(turn)}],
        "usage": usage_body(turn, usage),
    }


async def stream(
    turn: ScriptedTurn, model: str, usage: dict[str, int], include_usage: bool, dialect: str
) -> AsyncIterator[str]:
    completion_id = f"chatcmpl-{secrets.token_hex(16)}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(turn.reasoning or "", 16):
        if turn.chunk_delay:
            await asyncio.sleep(turn.chunk_delay)
        if dialect == "mistral":
            yield chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": piece}]}]})
        else:
            yield chunk({"reasoning": piece})
    for piece in _pieces(turn.content or "", 16):
        yield chunk({"content": piece})
    for index, call in enumerate(turn.tool_calls):
        fragments = _pieces(_arguments_text(call), ARGUMENT_FRAGMENT) or [""]
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "type": "function",
                        "id": call.id or tool_call_id(),
                        "function": {"name": call.name, "arguments": fragments[0]},
                    }
                ]
            }
        )
        for fragment in fragments[1:]:
            yield chunk({"tool_calls": [{"index": index, "type": "function", "function": {"arguments": fragment}}]})
    yield chunk({}, finish_reason(turn))
    if include_usage:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_body(turn, usage),
        }
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
