"""The part of a best-of-N task's pull request body that lists its attempts: the pull request carries the best
one's patch (the task's own), and the table says how each attempt ranked, whether its tests passed, its
patch's size, why, and how to get it (``overnight diff ID --attempt K``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

import store.bestof
from store.bestof import RankEntry, Ranking, size_text

MAX_REASON = 160
"""Characters of a reason kept in a table cell."""


def _cell(text: str) -> str:
    """``text`` as a code span that cannot break the table, mention anyone or start markup."""
    flat = " ".join(text.split()).replace("`", "'").replace("|", "\\|")
    flat = flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"
    return f"`{flat}`" if flat else "—"


def _tests(entry: RankEntry) -> str:
    if entry.passed is None:
        return "not checked"
    return "pass" if entry.passed else "fail"


def _row(task_id: str, entry: RankEntry, best: int | None, link: str | None) -> str:
    size = size_text(entry.patch_bytes) if entry.patch_bytes is not None else "no patch"
    if entry.files_changed:
        size += f", {entry.files_changed} file{'s' if entry.files_changed != 1 else ''}"
    if entry.attempt == best:
        get = "this pull request"
    elif entry.patch_bytes is None:
        get = "—"
    else:
        get = f"`overnight diff {task_id} --attempt {entry.attempt}`"
    name = f"[{entry.attempt}]({link}/tasks/{entry.task_id})" if link else str(entry.attempt)
    return f"| {name} | {entry.rank} | {_tests(entry)} | {size} | {_cell(entry.reason)} | {get} |"


def attempts_markdown(task_id: str, ranking: Ranking, *, public_url: str | None = None) -> str:
    """The section for a ranked task of ``len(ranking.entries)`` attempts, best first; "" for none."""
    if not ranking.entries:
        return ""
    count = len(ranking.entries)
    best = next((entry for entry in ranking.entries if entry.attempt == ranking.best), None)
    head = f"**Best of {count} attempts.** "
    head += (f"This pull request is attempt {best.attempt} ({_cell(best.reason)}); ranked by tests passing, then "
             "patch size." if best else "No attempt left a patch.")  # fmt: skip
    if not ranking.checked:
        head += " The tests were not checked (the checks could not run, or the task was cancelled)."
    rows = [_row(task_id, entry, ranking.best, public_url) for entry in ranking.entries]
    table = ["| attempt | rank | tests | size | why | get it |", "|---|---|---|---|---|---|", *rows]
    return "\n".join([head, "", *table])


def attempts_section(session: Session, task_id: str, *, public_url: str | None = None) -> str:
    """The attempts of ``task_id`` for its pull request's body; "" when it ran once (or was not ranked)."""
    ranking = store.bestof.ranking_of(session, task_id)
    return attempts_markdown(task_id, ranking, public_url=public_url) if ranking is not None else ""


def best_of_note(session: Session, task_id: str) -> str:
    """For the progress comment of a ranked task: ``(the best of N attempts: attempt K)`` after a space; ""
    otherwise."""
    ranking = store.bestof.ranking_of(session, task_id)
    if ranking is None or ranking.best is None:
        return ""
    return f" (the best of {len(ranking.entries)} attempts: attempt {ranking.best})"
