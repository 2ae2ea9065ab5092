"""A best-of-N task's attempts as its page shows them: each attempt's state, its patch's size, and — once the
attempts have ended and were ranked — its rank, whether it is the best, its tests' result and why it ranks
where it does (the group's ``ranking``, written by the worker; ``store.bestof``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

import store.bestof
from store.bestof import RankEntry, Ranking, size_text
from store.models import Task, TaskState
from web.queries import PatchFigures, patch_figures


@dataclass(frozen=True, kw_only=True)
class AttemptView:
    index: int
    task_id: str
    state: str
    patch: PatchFigures | None
    entry: RankEntry | None = None
    """Its place in the ranking and why (None until every attempt ended and they were ranked)."""
    failure: str | None = None
    """Why the attempt itself failed or ended early (its task's reason)."""
    best: bool = False

    @property
    def final(self) -> bool:
        return TaskState(self.state).is_final

    @property
    def rank(self) -> int | None:
        return self.entry.rank if self.entry else None

    @property
    def tests_text(self) -> str:
        if self.entry is None:
            return "Checked once every attempt has ended"
        if self.entry.passed is None:
            return "Not checked (no test command)" if self.entry.test_command is None else "Not checked"
        return "Tests passed" if self.entry.passed else "Tests failed"

    @property
    def tests_class(self) -> str:
        passed = self.entry.passed if self.entry else None
        return "none" if passed is None else ("passed" if passed else "failed")

    @property
    def size_text(self) -> str | None:
        """The diff's size as the ranking weighed it (bytes)."""
        if self.entry is None or self.entry.patch_bytes is None:
            return None
        return size_text(self.entry.patch_bytes)


def read_ranking(ranking: Any) -> Ranking | None:
    """The group's stored ranking; None before its attempts were ranked, or for one this version cannot read
    (the attempts are then shown unranked rather than not at all)."""
    if ranking is None:
        return None
    try:
        return Ranking.model_validate(ranking)
    except ValidationError:
        return None


def attempt_views(session: Session, group: Task) -> list[AttemptView]:
    """The attempts of ``group`` (a task with ``attempts`` > 1) by K; [] for any other task."""
    if (group.attempts or 1) <= 1:
        return []
    rows = store.bestof.attempts_of(session, group.id)
    figures = patch_figures(session, [row.id for row in rows])
    ranking = read_ranking(group.ranking)
    entries = {entry.attempt: entry for entry in ranking.entries} if ranking else {}
    best = ranking.best if ranking else None
    return [
        AttemptView(index=row.attempt_index or 0, task_id=row.id, state=row.state, patch=figures.get(row.id),
                    entry=entries.get(row.attempt_index or 0), failure=row.failure_reason,
                    best=best is not None and best == row.attempt_index)
        for row in rows
    ]  # fmt: skip


def attempts_context(session: Session, group: Task, selected: int | None = None) -> dict[str, Any]:
    """What ``_attempts.html`` draws: the attempts, which one's tab is open (``selected`` when it is one of
    them, else the best, else the first) and whether they were ranked yet."""
    views = attempt_views(session, group)
    indexes = [view.index for view in views]
    best = next((view.index for view in views if view.best), None)
    chosen = selected if selected in indexes else best or (indexes[0] if indexes else None)
    count = group.attempts if (group.attempts or 1) > 1 else 0
    return {
        "attempts": views,
        "attempt_count": count,
        "selected": chosen,
        "ranked": read_ranking(group.ranking) is not None,
    }
