"""Checks a request body the way vLLM's Mistral tokenizer does: mistral-common's validator, serving mode, and
every image part decoded by mistral-common's own loader (what vLLM does before the vision encoder sees it)."""

from __future__ import annotations

from typing import Any

from mistral_common.protocol.instruct.chunk import ImageURLChunk
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import MistralRequestValidatorV15, ValidationMode
from mistral_common.tokens.tokenizers.image import image_from_chunk

SAMPLING_KEYS = ("model", "temperature", "top_p", "max_tokens", "reasoning_effort")


def assert_valid_mistral_request(body: dict[str, Any]) -> None:
    request = ChatCompletionRequest.from_openai(
        body["messages"], tools=body.get("tools"), **{key: body[key] for key in SAMPLING_KEYS if key in body}
    )
    MistralRequestValidatorV15(ValidationMode.serving).validate_request(request)
    for message in request.messages:
        if isinstance(message, UserMessage) and isinstance(message.content, list):
            for chunk in message.content:
                if isinstance(chunk, ImageURLChunk):
                    image_from_chunk(chunk)  # raises on a data URL that is not a decodable image
