"""How the CLI shows a task's events: one compact line each, and a status line (step, elapsed, tokens)."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape


def describe(event: dict[str, Any]) -> str | None:
    """The event as one line of rich markup (None: nothing worth a line); an event whose data is not what its
    type promises (a newer or broken server) is shown by its type alone."""
    try:
        return _line(event["type"], event["data"])
    except (KeyError, TypeError, AttributeError, ValueError):
        return f"[dim]{escape(str(event.get('type')))}[/dim]"


def _line(kind: str, data: dict[str, Any]) -> str | None:
    if kind == "state":
        reason = f": {escape(str(data['reason']))}" if data.get("reason") else ""
        colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(data["state"], "bold")
        return f"[{colour}]● {escape(str(data['state']))}[/{colour}]{reason}"
    if kind == "phase":
        return f"[dim]… {escape(data['phase'])}[/dim]"
    if kind == "setup":
        what = (
            "cached environment"
            if data.get("cached")
            else escape(f"exit {data.get('exit_code')} in {data.get('duration')} s")
        )
        return f"[dim]… set-up ({escape(str(data.get('script')))}): {what}[/dim]"
    if kind == "model_response":
        text = (data.get("content") or "").strip().splitlines()
        return f"[blue]step {int(data['step'])}[/blue] {escape(text[0][:140])}" if text else None
    if kind == "tool_call":
        name, arguments = escape(str(data["name"])), escape(_short(str(data["arguments"]), 140))
        return f"[cyan]step {int(data['step'])} ▸ {name}[/cyan] {arguments}"
    if kind == "tool_result":
        lines = [line for line in (data.get("output") or "").splitlines() if line.strip()]
        mark = "[red]✗[/red]" if data.get("error") else "[dim]↳[/dim]"
        return f"  {mark} [dim]{escape(_short(lines[0] if lines else '(no output)', 140))}[/dim]"
    if kind == "patch":
        return f"[bold]patch[/bold]: {int(data['files_changed'])} file(s), {int(data['bytes'])} bytes"
    if kind == "publish":
        if data.get("state") == "published":
            return f"[green]published[/green]: {escape(str(data.get('pull_request') or data.get('branch')))}"
        if data.get("state") == "failed":
            return f"[red]publishing failed[/red]: {escape(str(data.get('reason')))}"
        return None
    if kind in ("compaction", "format_error", "finish"):
        return f"[magenta]{kind}[/magenta]"
    return None


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Status:
    """Step count, elapsed time and tokens so far, from the events seen."""

    def __init__(self) -> None:
        self.step = 0
        self.tokens = 0
        self.state = "queued"
        self.started: datetime | None = None

    def update(self, event: dict[str, Any]) -> None:
        # An event not shaped as its type promises leaves the status line as it was.
        with suppress(KeyError, TypeError, AttributeError, ValueError):
            self._update(event)

    def _update(self, event: dict[str, Any]) -> None:
        data = event["data"]
        if event["type"] == "model_response":
            self.step = data["step"]
            usage = data.get("usage") or {}
            self.tokens += int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        if event["type"] == "state":
            self.state = data["state"]
            if self.started is None and data["state"] == "preparing":
                self.started = datetime.fromisoformat(event["created_at"])

    def __rich__(self) -> str:
        """Rendered afresh at every refresh of a ``Live`` display, so the elapsed time keeps moving between
        events."""
        return self.line()

    def line(self) -> str:
        elapsed = (datetime.now(UTC) - self.started).total_seconds() if self.started else 0
        state, step = escape(str(self.state)), escape(str(self.step))
        return f"[bold]{state}[/bold] · step {step} · {elapsed:.0f} s · {self.tokens:,} tokens"
