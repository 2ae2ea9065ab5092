"""A scripted OpenAI-compatible model server that speaks vLLM's wire format exactly.

It replays a list of assistant turns (reasoning, content, tool calls) as vLLM streams them — a role
delta, reasoning deltas, content deltas, tool calls whose first fragment carries a 9-character
alphanumeric id and the name, argument-only fragments after it, a finish chunk, then a usage chunk
with ``prompt_tokens_details.cached_tokens`` — and records every request it receives. It is the one
test double of the project, shipped in the package so that tests, benchmarks and demos share it (the
answers themselves are made in ``agent/scripted_wire.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.scripted_wire import CHARS_PER_TOKEN, complete, error, stream, tool_call_id
from overnight.loopback import LoopbackServer

CACHE_BLOCK_TOKENS = 16
IMAGE_TOKENS = 1024
__all__ = ["ScriptedCall", "ScriptedModel", "ScriptedModelServer", "ScriptedTurn", "example_session", "tool_call_id"]


class ScriptedCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = None
    """Force this tool-call id (to test clients against servers whose ids break Mistral's rules)."""


class ScriptedTurn(BaseModel):
    """One assistant turn to replay, or an HTTP error to answer with instead (``status``)."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str | None = None
    content: str | None = None
    tool_calls: list[ScriptedCall] = Field(default_factory=list)
    finish_reason: str | None = None
    status: int | None = None
    """Answer with this HTTP status and an error body instead of a completion."""
    delay: float = 0.0
    """Seconds to wait before answering."""
    chunk_delay: float = 0.0
    """Seconds between streamed reasoning and content chunks (a server that trickles)."""


class ScriptedModel:
    """The state behind the app: the turns left to play and the requests seen."""

    def __init__(
        self,
        turns: list[ScriptedTurn] | None = None,
        *,
        model: str = "mistral-medium-3.5",
        dialect: Literal["vllm", "mistral"] = "vllm",
        default: ScriptedTurn | None = None,
        spec_decode: bool = True,
        vision: bool = True,
    ) -> None:
        self.turns: list[ScriptedTurn] = list(turns or [])
        self.model = model
        self.dialect = dialect
        """vllm streams reasoning in ``delta.reasoning``; mistral (La Plateforme) as thinking content chunks."""
        self.default = default
        """The turn answered once the script is used up (None: an error, as a finished script should be)."""
        self.spec_decode = spec_decode
        """Report EAGLE's speculative-decoding counters on /metrics, as vLLM does with a draft model."""
        self.vision = vision
        """Take image parts (off: answer them 400 as vLLM serving a text-only model, or --language-model-only)."""
        self.counters: dict[str, float] = dict.fromkeys(
            ("prompt_tokens", "generation_tokens", "prefix_cache_queries", "prefix_cache_hits",
             "spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"), 0.0
        )  # fmt: skip
        self.requests: list[dict[str, Any]] = []
        self.scripts: list[list[ScriptedTurn]] = []
        """Per session (x-session-affinity: a task's id), its own turns: a new session takes the next script (tasks
        running at once, each its own turns; then ``turns``)."""
        self.sessions: dict[str, list[ScriptedTurn]] = {}
        self.affinity: list[str | None] = []
        """The x-session-affinity header of each request (what a replica router hashes on)."""
        self.received_at: list[float] = []
        """time.time() of each request's arrival."""
        self._previous_prompt = ""
        self._lock = threading.Lock()

    def extend(self, turns: list[ScriptedTurn]) -> None:
        with self._lock:
            self.turns.extend(turns)

    def next_turn(
        self, body: dict[str, Any], affinity: str | None = None
    ) -> tuple[ScriptedTurn | None, dict[str, int]]:
        with self._lock:
            self.affinity.append(affinity)
            self.received_at.append(time.time())
            self.requests.append(body)
            prompt = json.dumps([body.get("tools"), _counted(body.get("messages"))], separators=(",", ":"))
            usage = self._prompt_usage(prompt)
            self._previous_prompt = prompt
            if affinity and affinity not in self.sessions and self.scripts:
                self.sessions[affinity] = self.scripts.pop(0)
            own = self.sessions.get(affinity or "")
            turn = own.pop(0) if own else self.turns.pop(0) if self.turns else self.default
            self._count(usage, turn)
            return turn, usage

    def _count(self, usage: dict[str, int], turn: ScriptedTurn | None) -> None:
        """vLLM's counters: prefix-cache queries and hits in tokens; drafts of 3 tokens, 60 % accepted."""
        generated = len(json.dumps(turn.model_dump())) // CHARS_PER_TOKEN if turn else 0
        self.counters["prompt_tokens"] += usage["prompt_tokens"]
        self.counters["generation_tokens"] += generated
        self.counters["prefix_cache_queries"] += usage["prompt_tokens"]
        self.counters["prefix_cache_hits"] += usage["cached_tokens"]
        if self.spec_decode:
            drafts = generated // 2
            self.counters["spec_decode_num_drafts"] += drafts
            self.counters["spec_decode_num_draft_tokens"] += drafts * 3
            self.counters["spec_decode_num_accepted_tokens"] += int(drafts * 3 * 0.6)

    def metrics_text(self) -> str:
        lines = []
        with self._lock:
            for name, value in self.counters.items():
                if name.startswith("spec_decode") and not self.spec_decode:
                    continue
                lines += [f"# TYPE vllm:{name} counter", f'vllm:{name}_total{{model_name="{self.model}"}} {value}']
        return "\n".join(lines) + "\n"

    def _prompt_usage(self, prompt: str) -> dict[str, int]:
        """Token counts that behave like vLLM's: cached tokens are whole blocks of the shared prefix."""
        shared = 0
        for mine, theirs in zip(prompt, self._previous_prompt, strict=False):
            if mine != theirs:
                break
            shared += 1
        prompt_tokens = max(len(prompt) // CHARS_PER_TOKEN, 1)
        cached = (shared // CHARS_PER_TOKEN) // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS
        return {"prompt_tokens": prompt_tokens, "cached_tokens": min(cached, prompt_tokens - 1)}


def create_app(state: ScriptedModel) -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": state.model, "object": "model", "owned_by": "vllm"}]})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics_text(), media_type="text/plain; version=0.0.4")

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in ("none", "high"):  # as vLLM with Medium 3.5's template
            return error(400, f"reasoning_effort {effort!r} is not supported: use 'none' or 'high'")
        if body.get("model") != state.model:
            return error(404, f"The model `{body.get('model')}` does not exist.")
        if not state.vision and any(part.get("type") == "image_url" for part in _parts(body)):
            return error(400, "At most 0 image(s) may be provided in one prompt.")
        turn, usage = state.next_turn(body, request.headers.get("x-session-affinity"))
        if turn is None:
            return error(400, "the scripted model has no turns left")
        if turn.delay:
            await asyncio.sleep(turn.delay)
        if turn.status is not None:
            return error(turn.status, f"scripted error {turn.status}")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = stream(turn, state.model, usage, include_usage, state.dialect)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return JSONResponse(complete(turn, state.model, usage))

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


def _counted(messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The messages as their tokens are counted: an image as IMAGE_TOKENS (vLLM counts its patches, not the
    length of its base64), different images differently."""

    def part(p: dict[str, Any]) -> dict[str, Any]:
        if p.get("type") != "image_url":
            return p
        digest = hashlib.sha256(str(p.get("image_url")).encode()).hexdigest()
        return {"type": "image_url", "image_url": digest * (IMAGE_TOKENS * CHARS_PER_TOKEN // len(digest))}

    return [{**m, "content": [part(p) for p in m["content"]]} if isinstance(m.get("content"), list) else m
            for m in messages or []]  # fmt: skip


def _parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [part for m in body.get("messages") or [] if isinstance(m.get("content"), list) for part in m["content"]]


EXAMPLE_REPOSITORY = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "AGENTS.md": "Run the tests with `python3 -m unittest`.\n",
}
"""The files of the repository ``example_session`` works on."""


EXAMPLE_TEST_FILE = (
    "import unittest\n\nfrom calc import add\n\n\nclass AddTest(unittest.TestCase):\n"
    "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
)


def example_session() -> list[ScriptedTurn]:
    """A realistic 40-step session on a repository whose calc.add() subtracts: explore, plan, reproduce, fix,
    test, add tests, check, finish. Tests, the agent benchmark and demos replay it."""
    session = [*_explore_and_plan(), *_reproduce_and_fix(), *_check_and_finish()]
    assert len(session) == 40
    return session


def _bash(command: str) -> ScriptedTurn:
    return ScriptedTurn(
        reasoning=f"Run {command}.", tool_calls=[ScriptedCall(name="bash", arguments={"command": command})]
    )


def _tool(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(reasoning=f"Use {name}.", tool_calls=[ScriptedCall(name=name, arguments=arguments)])


def _explore_and_plan() -> list[ScriptedTurn]:
    todos = [
        {"id": "1", "content": "reproduce", "status": "in_progress"},
        {"id": "2", "content": "fix"},
        {"id": "3", "content": "test"},
    ]
    return [
        _bash("ls -la"),
        _bash("git status --short || true"),
        _tool("read_file", file_path="AGENTS.md"),
        _tool("grep", pattern="def add"),
        _tool("read_file", file_path="calc.py"),
        _tool("todo", action="write", todos=todos),
    ]


def _reproduce_and_fix() -> list[ScriptedTurn]:
    return [
        _bash("python3 -c 'from calc import add; print(add(2, 3))'"),
        _tool("grep", pattern="add\\(", path="."),
        _tool("write_file", file_path="test_calc.py", content=EXAMPLE_TEST_FILE),
        _bash("python3 -m unittest -q 2>&1 | tail -3"),
        _tool("edit", file_path="calc.py", old_string="return a - b", new_string="return a + b"),
        _bash("python3 -m unittest -q 2>&1 | tail -1"),
        _tool("todo", action="read"),
        _tool(
            "edit",
            file_path="test_calc.py",
            old_string="        self.assertEqual(add(2, 3), 5)\n",
            new_string="        self.assertEqual(add(2, 3), 5)\n        self.assertEqual(add(-1, 1), 0)\n",
        ),
        _bash("python3 -m unittest -v 2>&1 | tail -4"),
        _tool("read_file", file_path="test_calc.py", offset=6),
    ]


def _check_and_finish() -> list[ScriptedTurn]:
    checks = [_bash(f"python3 -c 'from calc import add; assert add({n}, {n}) == {2 * n}' && echo ok {n}")
              for n in range(21)]  # fmt: skip
    finish = ScriptedCall(
        name="finish",
        arguments={
            "summary": "add() subtracted; fixed and tested (python3 -m unittest: OK).",
            "pr_title": "Make add() add and cover it with tests",
            "pr_body": "Fixes add(); adds test_calc.py.",
        },
    )
    return [
        *checks,
        _bash("git diff --stat || true"),
        _bash("python3 -m unittest -q 2>&1 | tail -1"),
        ScriptedTurn(content="All green.", tool_calls=[finish]),
    ]


class ScriptedModelServer(LoopbackServer):
    """Runs the scripted model on a free loopback port in a background thread."""

    def __init__(self, state: ScriptedModel) -> None:
        super().__init__(create_app(state), name="scripted model server")
        self.state = state

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"
