"""How the CLI shows a task's events: one compact line each, and a status line (step, elapsed, tokens)."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.markup import escape

if TYPE_CHECKING:
    from overnight.events import ImagesEvent, TaskEvent


def read(event: dict[str, Any]) -> TaskEvent | None:
    """The typed event of one the API sent (fields a newer server added are ignored); None if it is none."""
    from overnight.events import UnreadableEvent, parse_event  # here: `--help` starts without pydantic

    try:
        return parse_event(event["type"], event["data"], ignore_unknown_fields=True)
    except (UnreadableEvent, KeyError, TypeError):
        return None


def describe(event: dict[str, Any]) -> str | None:
    """The event as one line of rich markup (None: nothing worth a line, or a type this client does not know);
    an event whose data is not what its type promises (a newer or broken server) is shown by its type alone."""
    from overnight.events import EVENT_MODELS

    if isinstance(event.get("type"), str) and event["type"] not in EVENT_MODELS:
        return None
    parsed = read(event)
    return f"[dim]{escape(str(event.get('type')))}[/dim]" if parsed is None else _line(parsed)


def _line(event: TaskEvent) -> str | None:
    from overnight.events import (
        CompactionEvent,
        FinishEvent,
        FormatErrorEvent,
        ImagesEvent,
        MessageDeliveredEvent,
        MessageDroppedEvent,
        ModelResponseEvent,
        NetworkBlockedEvent,
        PatchEvent,
        PhaseEvent,
        PublishEvent,
        SetupEvent,
        StateEvent,
        ToolCallEvent,
        ToolResultEvent,
    )

    match event:
        case StateEvent():
            reason = f": {escape(event.reason)}" if event.reason else ""
            colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(event.state, "bold")
            return f"[{colour}]● {escape(event.state)}[/{colour}]{reason}"
        case PhaseEvent():
            return f"[dim]… {escape(event.phase)}[/dim]"
        case SetupEvent():
            what = "cached environment" if event.cached else escape(f"exit {event.exit_code} in {event.duration} s")
            return f"[dim]… set-up ({escape(event.script)}): {what}[/dim]"
        case ModelResponseEvent():
            text = (event.content or "").strip().splitlines()
            return f"[blue]step {event.step}[/blue] {escape(text[0][:140])}" if text else None
        case ToolCallEvent():
            return f"[cyan]step {event.step} ▸ {escape(event.name)}[/cyan] {escape(_short(event.arguments, 140))}"
        case ToolResultEvent():
            lines = [line for line in event.output.splitlines() if line.strip()]
            mark = "[red]✗[/red]" if event.error else "[dim]↳[/dim]"
            return f"  {mark} [dim]{escape(_short(lines[0] if lines else '(no output)', 140))}[/dim]"
        case PatchEvent():
            return f"[bold]patch[/bold]: {event.files_changed} file(s), {event.bytes} bytes"
        case PublishEvent(state="published"):
            return f"[green]published[/green]: {escape(str(event.pull_request or event.branch))}"
        case PublishEvent(state="failed"):
            return f"[red]publishing failed[/red]: {escape(str(event.reason))}"
        case MessageDeliveredEvent():
            what = "queued message" if event.mode == "queue" else "steer"
            return f"[magenta]✉ {what} from {escape(event.author)} delivered at step {event.step}[/magenta]"
        case MessageDroppedEvent():
            return f"[yellow]✉ message {event.message_id} dropped[/yellow]: {escape(event.reason)}"
        case NetworkBlockedEvent():
            where = f"step {event.step}" if event.step is not None else event.phase
            times = f" ×{event.count}" if event.count > 1 else ""  # noqa: RUF001
            what = f"{event.method} {event.host}:{event.port}{times} ({where}): {event.reason}"
            return f"[yellow]⊘ blocked[/yellow] {escape(what)}"
        case ImagesEvent():
            return _images_line(event)
        case CompactionEvent() | FormatErrorEvent() | FinishEvent():
            return f"[magenta]{event.type}[/magenta]"
    return None


def _images_line(event: ImagesEvent) -> str:
    given = ", ".join(f"{image.media_type} ({image.size} bytes)" for image in event.images)
    missed = "; not fetched: " + "; ".join(f"{f.url}: {f.reason}" for f in event.failed) if event.failed else ""
    what = f"{len(event.images)} image(s) for the model" + (f": {given}" if given else "") + missed
    return f"[dim]… {escape(what)}[/dim]"


def blocked_hosts(summary: object) -> str | None:
    """The task's ``network_blocked`` summary as the server sent it, in one line (None: nothing refused, or a
    summary not in the shape this client knows)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("hosts"), list):
        return None
    hosts = [h for h in summary["hosts"] if isinstance(h, dict) and "host" in h and "requests" in h]
    if not hosts:
        return None
    listed = ", ".join(f"{h['host']} ×{h['requests']}" for h in hosts)  # noqa: RUF001
    more = summary.get("more_hosts")
    return listed + (f" (and {more} more)" if isinstance(more, int) and more > 0 else "")


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
        """An event not shaped as its type promises leaves the status line as it was."""
        from overnight.events import ModelResponseEvent, StateEvent

        parsed = read(event)
        if isinstance(parsed, ModelResponseEvent):
            self.step = parsed.step
            self.tokens += parsed.usage.prompt_tokens + parsed.usage.completion_tokens
        if isinstance(parsed, StateEvent):
            self.state = parsed.state
            if self.started is None and parsed.state == "preparing":
                with suppress(KeyError, TypeError, ValueError):
                    self.started = datetime.fromisoformat(event["created_at"])

    def __rich__(self) -> str:
        """Rendered afresh at every refresh of a ``Live`` display, so the elapsed time keeps moving between
        events."""
        return self.line()

    def line(self) -> str:
        elapsed = (datetime.now(UTC) - self.started).total_seconds() if self.started else 0
        state, step = escape(str(self.state)), escape(str(self.step))
        return f"[bold]{state}[/bold] · step {step} · {elapsed:.0f} s · {self.tokens:,} tokens"
