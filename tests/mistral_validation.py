"""Checks a request body the way vLLM's Mistral tokenizer does: mistral-common's validator, serving mode."""

from __future__ import annotations

from typing import Any

from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import MistralRequestValidatorV15, ValidationMode

SAMPLING_KEYS = ("model", "temperature", "top_p", "max_tokens", "reasoning_effort")


def assert_valid_mistral_request(body: dict[str, Any]) -> None:
    request = ChatCompletionRequest.from_openai(
        body["messages"], tools=body.get("tools"), **{key: body[key] for key in SAMPLING_KEYS if key in body}
    )
    MistralRequestValidatorV15(ValidationMode.serving).validate_request(request)
