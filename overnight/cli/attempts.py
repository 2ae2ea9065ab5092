"""What the client shows of a task's best-of-N attempts (``overnight show``): each attempt's state, rank, test
result, patch size and why, best first once ranked."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from overnight.cli.terminal import SafeConsole


def _size(size: object) -> str:
    if not isinstance(size, int):
        return "no patch"
    return f"{size} B" if size < 1024 else f"{size / 1024:.1f} KB"


def _tests(attempt: dict[str, Any]) -> str:
    passed = attempt.get("passed")
    return "not checked" if passed is None else "pass" if passed else "fail"


def print_attempts(console: SafeConsole, task: dict[str, Any], attempts: list[dict[str, Any]]) -> None:
    """The attempts of ``task`` as a table (best first once ranked, else by K)."""
    from rich.table import Table

    ranked = any(isinstance(a.get("rank"), int) for a in attempts)
    ordered = sorted(attempts, key=lambda a: (a.get("rank") or 0, a["attempt"])) if ranked else attempts
    count = task.get("attempts")
    console.print(f"[bold]attempts[/bold]: {count}" + (", ranked" if ranked else ", not ranked yet"), markup=True)
    table = Table("K", "rank", "state", "tests", "patch", "why", "task", box=None, pad_edge=False)
    for attempt in ordered:
        rank = f"{attempt['rank']}{' (best)' if attempt.get('best') else ''}" if attempt.get("rank") else "-"
        why = attempt.get("reason") or attempt.get("failure_reason") or ""
        cells = (str(attempt["attempt"]), rank, attempt["state"], _tests(attempt), _size(attempt.get("patch_bytes")),
                 str(why)[:80], attempt["task_id"])  # fmt: skip
        table.add_row(*map(escape, cells))  # reasons quote model-written text: no markup from there
    console.print(table)
