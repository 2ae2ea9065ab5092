"""A streaming chat-completions client for vLLM's OpenAI-compatible server (and Mistral's API).

The request body is built here field by field so that it is exactly what the Mistral tokenizer in
vLLM accepts; the tests run every body through mistral-common's validator.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from agent.base import AssistantTurn, ModelResponseError, ModelUnavailableError, ToolCall, Usage
from agent.leaks import normalize_tool_calls, recover_leaked_tool_calls

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMConfig(BaseModel):
    """How to reach the model (the server's settings nest it as it is: ``OVERNIGHT_LLM_*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL ending in /v1 (vLLM, Mistral's API, any compatible server)."""
    provider: Literal["vllm", "mistral"] = "vllm"
    """Wire dialect: vllm (reasoning in the `reasoning` field) or mistral (La Plateforme: thinking chunks)."""
    model: str = "mistral-medium-3.5"
    """Model name as the endpoint serves it (vLLM's --served-model-name)."""
    api_key: SecretStr | None = None
    """Bearer key of the model endpoint (vLLM's --api-key), if it needs one."""
    reasoning_effort: Literal["high", "none"] = "high"
    """Medium 3.5 accepts only "high" and "none"."""
    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature (the model card's 0.7 for reasoning_effort="high")."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling cut-off."""
    max_tokens: int = Field(default=32768, gt=0)
    """Output budget of one model call, reasoning included (doubled once when a turn is cut off)."""
    timeout: float = Field(default=600.0, gt=0)
    """Seconds one chat-completion request may take, streaming included."""
    retries: int = Field(default=4, ge=0)
    """Attempts after the first on 429, 5xx and connection errors, with exponential backoff."""
    backoff_max: float = Field(default=30.0, gt=0)
    """Longest wait between two attempts."""
    session_id: str | None = None
    """Sent as ``x-session-affinity`` so that a router keeps a task's turns on one replica's prefix cache."""

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class _RetryableStatus(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


class ChatClient:
    """``ModelClient`` over HTTP with streaming, retries and usage accounting."""

    def __init__(self, config: LLMConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"content-type": "application/json"}
        if config.api_key is not None:
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        if config.session_id:
            headers["x-session-affinity"] = config.session_id
        self._http = httpx.Client(
            base_url=config.base_url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def build_request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, max_tokens: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": max_tokens or self.config.max_tokens,
            "reasoning_effort": self.config.reasoning_effort,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:  # vLLM rejects an empty list
            body["tools"] = tools
            body["tool_choice"] = "auto"
            body["parallel_tool_calls"] = True
        return body

    def history_message(self, turn: AssistantTurn) -> dict[str, Any]:
        """The assistant message as it goes back into the history, reasoning verbatim in the provider's form."""
        message = turn.to_message()
        if self.config.provider == "mistral" and turn.reasoning:
            del message["reasoning"]
            chunks: list[dict[str, Any]] = [
                {"type": "thinking", "thinking": [{"type": "text", "text": turn.reasoning}]}
            ]
            if turn.content:
                chunks.append({"type": "text", "text": turn.content})
            message["content"] = chunks
        return message

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        turn = self._complete_once(messages, tools)
        return normalize_tool_calls(recover_leaked_tool_calls(turn))

    def _complete_once(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        turn = self._complete_with_retries(self.build_request(messages, tools))
        if turn.finish_reason == "length" and not turn.tool_calls:
            # Reasoning tokens count against max_tokens; give a cut-off turn one more, larger budget.
            turn = self._complete_with_retries(
                self.build_request(messages, tools, max_tokens=self.config.max_tokens * 2)
            )
            if turn.finish_reason == "length" and not turn.tool_calls:
                raise ModelResponseError(f"model output was cut off at max_tokens ({self.config.max_tokens * 2}) twice")
        return turn

    def _complete_with_retries(self, body: dict[str, Any]) -> AssistantTurn:
        retrying = Retrying(
            stop=stop_after_attempt(self.config.retries + 1),
            wait=wait_exponential(multiplier=0.5, max=self.config.backoff_max),
            retry=retry_if_exception_type((httpx.TransportError, _RetryableStatus)),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._stream(body)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise ModelUnavailableError(
                f"model endpoint unreachable at {self.config.base_url} after "
                f"{self.config.retries + 1} attempts: {_describe(last)}"
            ) from last
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream(self, body: dict[str, Any]) -> AssistantTurn:
        with connect_sse(self._http, "POST", "/chat/completions", json=body) as source:
            response = source.response
            if response.status_code in RETRYABLE_STATUS:
                raise _RetryableStatus(response.status_code, _error_text(response))
            if response.status_code >= 400:
                raise ModelResponseError(
                    f"model endpoint rejected the request (HTTP {response.status_code}): {_error_text(response)}"
                    + self._misconfiguration(response.status_code, body)
                )
            accumulator = _TurnAccumulator()
            # httpx's read timeout bounds each read; a server that keeps trickling must not outlast the request's.
            deadline = time.monotonic() + self.config.timeout
            try:
                for sse in source.iter_sse():
                    if sse.data.strip() == "[DONE]":
                        break
                    accumulator.add(json.loads(sse.data))
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout(f"the response took longer than {self.config.timeout:g} s")
            except (SSEError, json.JSONDecodeError) as exc:
                raise ModelResponseError(f"malformed stream from the model endpoint: {exc}") from exc
            return accumulator.turn()

    def _misconfiguration(self, status: int, body: dict[str, Any]) -> str:
        """A hint when the 400 is what vLLM answers to Mistral's API form (thinking chunks in ``content``)."""
        messages = body.get("messages", [])
        if status == 400 and any(_has_image(message) for message in messages):
            return (
                " — the request carried the task's images: a model server without vision refuses them (vLLM "
                "with --language-model-only, or a text-only model); `overnight doctor` checks, and "
                "OVERNIGHT_IMAGES_ENABLED=false refuses images when tasks are filed"
            )
        chunks = any(isinstance(m.get("content"), list) for m in messages if m.get("role") == "assistant")
        if status != 400 or self.config.provider != "mistral" or not chunks:
            return ""
        return (
            " — the history carries reasoning as Mistral API thinking chunks (OVERNIGHT_LLM_PROVIDER=mistral), "
            "which a vLLM server refuses: set OVERNIGHT_LLM_PROVIDER=vllm when the endpoint is vLLM"
        )


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(part.get("type") == "image_url" for part in content)


class _TurnAccumulator:
    """Folds streamed deltas into one turn; tool-call fragments are joined by their ``index``."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()

    def add(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            raise ModelResponseError(f"model endpoint error mid-stream: {chunk['error']}")
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning"):
                self.reasoning.append(delta["reasoning"])
            elif delta.get("reasoning_content"):
                self.reasoning.append(delta["reasoning_content"])
            self._add_content(delta.get("content"))
            for fragment in delta.get("tool_calls") or []:
                call = self.calls.setdefault(fragment.get("index", 0), {"id": None, "name": "", "arguments": ""})
                if fragment.get("id"):
                    call["id"] = fragment["id"]
                function = fragment.get("function") or {}
                if function.get("name"):
                    call["name"] += function["name"]
                if function.get("arguments"):
                    call["arguments"] += function["arguments"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _add_content(self, content: Any) -> None:
        """Content is a string (vLLM) or a list of text/thinking chunks (Mistral's API)."""
        if isinstance(content, str):
            self.content.append(content)
            return
        for chunk in content or []:
            if chunk.get("type") == "text":
                self.content.append(chunk.get("text") or "")
            elif chunk.get("type") == "thinking":
                thinking = chunk.get("thinking")
                if isinstance(thinking, str):
                    self.reasoning.append(thinking)
                else:
                    self.reasoning.extend(part.get("text") or "" for part in thinking or [])

    def turn(self) -> AssistantTurn:
        # A call without an id or a name is kept: normalize_tool_calls gives it valid ones and a tool error.
        calls = [
            ToolCall(id=call["id"] or "", name=call["name"], arguments=call["arguments"] or "{}")
            for _, call in sorted(self.calls.items())
        ]
        return AssistantTurn(
            content="".join(self.content) or None,
            reasoning="".join(self.reasoning) or None,
            tool_calls=calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
        )


def _usage(data: dict[str, Any]) -> Usage:
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


def _error_text(response: httpx.Response) -> str:
    raw = response.read().decode("utf-8", errors="replace")
    try:
        data = json.loads(raw)
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else None
        message = message or data.get("message") or data.get("detail") or raw
    except (json.JSONDecodeError, AttributeError):
        message = raw
    return " ".join(str(message).split())[:300]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, _RetryableStatus) else text
