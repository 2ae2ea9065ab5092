"""How values read on a page: short repository names, durations, token counts, costs, state words."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from store.models import Task, TaskState

STATES = [state.value for state in TaskState]
STATE_WORDS = {
    "queued": "Queued",
    "preparing": "Preparing",
    "running": "Running",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Cancelled",
}


def short_repo(repo: str) -> str:
    """OWNER/NAME of a hosted repository; the last two folders of a local path."""
    text = repo.rstrip("/").removesuffix(".git")
    if text.startswith("/"):
        return "/".join(PurePosixPath(text).parts[-2:])
    if "://" in text:
        text = text.split("://", 1)[1]
    elif "@" in text and ":" in text:  # git@host:owner/name
        text = text.split(":", 1)[1]
    parts = [part for part in text.split("/") if part]
    return "/".join(parts[-2:]) if len(parts) >= 2 else text


def first_line(text: str, limit: int = 120) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_text(moment: datetime | None) -> str:
    """Shown until the page's script puts it in the viewer's own time zone."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def task_seconds(task: Task, now: datetime | None = None) -> float | None:
    """From start to end (to now while it runs); None before it started."""
    if task.started_at is None:
        return None
    end = task.finished_at or now or datetime.now(UTC)
    return max((end - task.started_at).total_seconds(), 0.0)


def count_text(number: int | None) -> str:
    if number is None:
        return "—"
    if number < 1000:
        return str(number)
    if number < 1_000_000:
        return f"{number / 1000:.1f}k".replace(".0k", "k")
    return f"{number / 1_000_000:.1f}M".replace(".0M", "M")


def cost_text(cost: float | None) -> str:
    if cost is None:
        return "—"
    return f"{cost:.2f}" if cost >= 0.01 or cost == 0 else f"{cost:.4f}"


def safe_url(url: str | None) -> str:
    """The address when it is http(s) (a link never runs script); empty otherwise."""
    return url if url and url.startswith(("https://", "http://")) else ""


def is_final(state: str) -> bool:
    return TaskState(state).is_final


def filters() -> dict[str, Any]:
    """The helpers templates use, as Jinja filters."""
    return {
        "short_repo": short_repo,
        "first_line": first_line,
        "iso": iso,
        "utc_text": utc_text,
        "duration_text": duration_text,
        "count_text": count_text,
        "cost_text": cost_text,
        "safe_url": safe_url,
        "state_word": lambda state: STATE_WORDS.get(state, state),
    }
