"""Steering a random-weight model through the real server: the loop's own requests plus ``logit_bias`` (and a
``seed``), so that vLLM's real parsers produce the turns a test needs: reasoning, tool calls, junk names, cut
calls. vLLM ignores ``logit_bias`` with speculative decoding on, so steered requests go to a server without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.client import ChatClient, LLMConfig

TOOL_CALLS, ARGS, THINK, END_THINK, EOS = 9, 32, 34, 35, 2
"""Special-token ranks of the tiny model's tokenizer (infra/vllm/tiny_model.py)."""


def token_id(tokenizer_file: Path, text: str) -> int:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    (token,) = MistralTokenizer.from_file(str(tokenizer_file)).instruct_tokenizer.tokenizer.encode(text, False, False)
    return int(token)


def named(tool: str) -> dict[str, Any]:
    return {"tool_choice": {"type": "function", "function": {"name": tool}}}


class SteeredClient(ChatClient):
    """The project's client; each request is the loop's own body plus the next steer (sampling controls)."""

    def __init__(self, config: LLMConfig, steers: list[dict[str, Any]]) -> None:
        super().__init__(config)
        self.steers = list(steers)
        self.bodies: list[dict[str, Any]] = []

    def build_request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, max_tokens: int | None = None
    ) -> dict[str, Any]:
        body = super().build_request(messages, tools, max_tokens=max_tokens)
        steer = self.steers.pop(0) if self.steers else {}
        body = {**body, "seed": 7, **steer}
        self.bodies.append(json.loads(json.dumps(body)))
        return body
