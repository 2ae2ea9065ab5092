"""`overnight bench llm`: the model server under an agent's load, for a GPU host.

Replays an agent trajectory — a real task's, stored by Overnight (``--trajectory``), or the built-in example
session — as N concurrent sessions. Each request grows the last, so the prefix-cache pattern is an agent's;
sessions share the system prompt and tools and diverge from the task on, as tasks do. At each concurrency
level: time to first token, output tokens per second per request and in total, and — from vLLM's /metrics,
before and after — the mean acceptance length and draft acceptance rate of speculative decoding and the
prefix-cache hit rate. Two endpoints (EAGLE on and off, say) can be measured in one run.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import typer
from httpx_sse import connect_sse

from overnight.admin.doctor import parse_metrics


def trajectory_requests(model: str, max_tokens: int) -> list[dict[str, Any]]:
    """The request bodies an agent sends while working through the example session, in order."""
    from agent.prompts import SYSTEM_PROMPT, first_user_message
    from agent.scripted import EXAMPLE_REPOSITORY, example_session, tool_call_id
    from agent.tools import Toolbox

    tools = Toolbox().schemas
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": first_user_message("Make add() add.", str(EXAMPLE_REPOSITORY["AGENTS.md"]))},
    ]
    bodies = []
    for turn in example_session():
        bodies.append({
            "model": model, "messages": list(messages), "tools": tools, "tool_choice": "auto",
            "reasoning_effort": "high", "temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True},
        })  # fmt: skip
        calls: list[dict[str, Any]] = [
            {"id": tool_call_id(), "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in turn.tool_calls
        ]  # fmt: skip
        messages.append({"role": "assistant", "content": turn.content, "reasoning": turn.reasoning,
                         "tool_calls": calls})  # fmt: skip
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                             "content": "returncode: 0\nstdout:\nok\n\nstderr:\n"})  # fmt: skip
    return bodies


def requests_from_trajectory(data: dict[str, Any], model: str, max_tokens: int) -> list[dict[str, Any]]:
    """The request bodies of a stored task trajectory (``GET /v1/tasks/ID/trajectory`` or ``overnight show``'s
    JSON): for each assistant turn, the messages before it — what the agent sent for that turn."""
    messages, tools = data.get("messages"), data.get("tools")
    if not isinstance(messages, list) or not isinstance(tools, list):
        raise ValueError("not a trajectory: it needs 'messages' and 'tools' lists")
    bodies = []
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant" and index > 0:
            bodies.append({
                "model": model, "messages": messages[:index], "tools": tools, "tool_choice": "auto",
                "reasoning_effort": "high", "temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens,
                "stream": True, "stream_options": {"include_usage": True},
            })  # fmt: skip
    if not bodies:
        raise ValueError("the trajectory has no assistant turns to replay")
    return bodies


def own_session(bodies: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The bodies with the first user message made this session's own: sessions share the system prompt and
    tools (as tasks do) and diverge from the task on, so the cache sees tasks, not one prompt N times."""
    result = []
    for body in bodies:
        messages = [dict(m) for m in body["messages"]]
        for message in messages:
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                message["content"] = f"(session {key})\n" + message["content"]
                break
        result.append({**body, "messages": messages})
    return result


def _one(http: httpx.Client, body: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    with connect_sse(http, "POST", "/chat/completions", json=body) as source:
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if sse.data.strip() == "[DONE]":
                break
            chunk = json.loads(sse.data)
            if first is None and any(
                (c.get("delta") or {}).get(k) for c in chunk.get("choices") or [] for k in ("content", "reasoning",
                                                                                          "tool_calls")
            ):  # fmt: skip
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = int(chunk["usage"].get("completion_tokens") or 0)
    duration = time.perf_counter() - started
    return {"ttft": first if first is not None else duration, "tokens": tokens, "duration": duration}


def _metrics(base_url: str, headers: dict[str, str]) -> dict[str, float]:
    try:
        response = httpx.get(base_url.removesuffix("/v1") + "/metrics", headers=headers, timeout=10)
        return parse_metrics(response.text) if response.status_code == 200 else {}
    except httpx.HTTPError:
        return {}


def _session(base_url: str, headers: dict[str, str], bodies: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One agent session: the trajectory's requests one after the other, as a task sends them (with a session
    key of its own, as the agent sends its task id, so a router keeps the session on one replica)."""
    key = f"bench-{secrets.token_hex(6)}"
    headers = {**headers, "x-session-affinity": key}
    with httpx.Client(base_url=base_url, headers=headers, timeout=httpx.Timeout(600, connect=10)) as http:
        return [_one(http, body) for body in own_session(bodies, key)]


def measure(base_url: str, model: str, *, api_key: str | None, levels: list[int], sessions_steps: int,
            max_tokens: int, trajectory: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if trajectory is not None:
        bodies = requests_from_trajectory(trajectory, model, max_tokens)[:sessions_steps]
    else:
        bodies = trajectory_requests(model, max_tokens)[:sessions_steps]
    results = []
    for concurrency in levels:
        before = _metrics(base_url, headers)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            runs = list(pool.map(lambda _: _session(base_url, headers, bodies), range(concurrency)))
        wall = time.perf_counter() - started
        samples = [sample for run in runs for sample in run]
        after = _metrics(base_url, headers)
        delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
        drafts = delta.get("vllm:spec_decode_num_drafts_total", 0.0)
        draft_tokens = delta.get("vllm:spec_decode_num_draft_tokens_total", 0.0)
        accepted = delta.get("vllm:spec_decode_num_accepted_tokens_total", 0.0)
        queries = delta.get("vllm:prefix_cache_queries_total", 0.0)
        results.append({
            "concurrency": concurrency,
            "requests": len(samples),
            "ttft_ms_median": statistics.median(s["ttft"] for s in samples) * 1000,
            "tokens_per_s_per_request": statistics.median(
                s["tokens"] / s["duration"] for s in samples if s["duration"] > 0),
            "tokens_per_s_total": sum(s["tokens"] for s in samples) / wall,
            "mean_acceptance_length": 1 + accepted / drafts if drafts else None,
            "draft_acceptance_rate": accepted / draft_tokens if draft_tokens else None,
            "prefix_cache_hit_rate": delta.get("vllm:prefix_cache_hits_total", 0.0) / queries if queries else None,
        })  # fmt: skip
    return results


def run_bench(*, base_url: str, model: str, api_key: str | None, compare: list[str] | None, concurrency: str,
              steps: int, max_tokens: int, output: str, trajectory: str | None,
              say: Callable[[Any], None]) -> None:  # fmt: skip
    """``overnight bench llm``: measure each endpoint, show the table, write the JSON to ``output``."""
    levels = [int(level) for level in concurrency.split(",") if level.strip()]
    recorded = None
    if trajectory is not None:
        try:
            recorded = json.loads(Path(trajectory).read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read the trajectory {trajectory}: {exc}") from exc
    report = {}
    for url in [base_url, *(compare or [])]:
        try:
            report[url] = measure(url, model, api_key=api_key, levels=levels, sessions_steps=steps,
                                  max_tokens=max_tokens, trajectory=recorded)  # fmt: skip
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    say(_table(report))
    with open(output, "w") as handle:
        json.dump(report, handle, indent=2)
    say(f"results in {output}")


def _table(report: dict[str, list[dict[str, Any]]]) -> Any:
    from rich.table import Table

    table = Table("endpoint", "conc.", "TTFT ms", "tok/s/req", "tok/s total", "accept len", "accept rate",
                  "prefix hit")  # fmt: skip

    def show(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    for url, rows in report.items():
        for row in rows:
            table.add_row(url, str(row["concurrency"]), show(row["ttft_ms_median"], ".0f"),
                          show(row["tokens_per_s_per_request"], ".1f"), show(row["tokens_per_s_total"], ".1f"),
                          show(row["mean_acceptance_length"], ".2f"), show(row["draft_acceptance_rate"], ".0%"),
                          show(row["prefix_cache_hit_rate"], ".0%"))  # fmt: skip
    return table
