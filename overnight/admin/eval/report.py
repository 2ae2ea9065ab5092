"""The eval's record: one entry per run (an instance's attempt), saved after each so that an interrupted eval
resumes where it was; the summary figures; the predictions files in SWE-bench's format; the table."""

from __future__ import annotations

import json
import os
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

REPORT = "report.json"


class RunRecord(BaseModel):
    """One attempt at one instance: its task, what the task did, and how it was graded."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str
    attempt: int = Field(ge=1)
    task_id: str
    graded: bool = False
    outcome: Literal["resolved", "unresolved", "error"] | None = None
    reason: str | None = None
    task_state: str | None = None
    task_reason: str | None = None
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    wall_seconds: float | None = None
    queued_seconds: float | None = None
    setup_seconds: float | None = None
    setup_cached: bool | None = None
    setup_script: str | None = None
    """Which set-up the task had (its ``setup`` event): ``environment set-up script`` (the instance's, through the
    eval's environment), ``automatic set-up``, or a path of the repository."""
    grading_seconds: float | None = None
    patch_complete: bool | None = None
    fail_to_pass: tuple[int, int] = (0, 0)
    pass_to_pass: tuple[int, int] = (0, 0)
    tests: dict[str, str] = Field(default_factory=dict)
    model_patch: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.instance_id, self.attempt

    @property
    def resolved(self) -> bool:
        return self.outcome == "resolved"


class Summary(BaseModel):
    planned: int
    graded: int
    resolved: int
    resolved_percent: float | None
    """Of the graded runs."""
    errors: int
    """Runs grading could not judge (counted unresolved)."""
    by_attempt: dict[int, float | None]
    """Resolved % of each attempt's graded runs."""
    resolved_any_percent: float | None
    """Instances with at least one resolved attempt, of the instances with a graded run (pass@attempts)."""
    steps_median: float | None
    prompt_tokens: int
    completion_tokens: int
    cached_share: float | None
    """Prompt tokens served from the model server's prefix cache, of all prompt tokens."""
    cost: float
    wall_seconds_median: float | None
    wall_seconds_p95: float | None
    setup_seconds_median: float | None
    grading_seconds_median: float | None


class Report(BaseModel):
    model_name_or_path: str
    instances_file: str
    attempts: int
    planned: int
    created_at: str = Field(default_factory=lambda: _now())
    updated_at: str = Field(default_factory=lambda: _now())
    elapsed_seconds: float = 0.0
    """Wall time the eval ran, over all its resumptions."""
    runs: list[RunRecord] = Field(default_factory=list)
    summary: Summary | None = None

    def run(self, instance_id: str, attempt: int) -> RunRecord | None:
        return next((run for run in self.runs if run.key == (instance_id, attempt)), None)

    def put(self, record: RunRecord) -> None:
        self.runs = [run for run in self.runs if run.key != record.key] + [record]

    def summarise(self) -> Summary:
        graded = [run for run in self.runs if run.graded]
        resolved = [run for run in graded if run.resolved]
        by_instance: dict[str, bool] = {}
        for run in graded:
            by_instance[run.instance_id] = by_instance.get(run.instance_id, False) or run.resolved
        prompt = sum(run.prompt_tokens for run in graded)
        walls = [run.wall_seconds for run in graded if run.wall_seconds is not None]
        return Summary(
            planned=self.planned, graded=len(graded), resolved=len(resolved),
            resolved_percent=_percent(len(resolved), len(graded)),
            errors=sum(run.outcome == "error" for run in graded),
            by_attempt={attempt: _percent(sum(r.resolved for r in runs), len(runs))
                        for attempt in range(1, self.attempts + 1)
                        for runs in [[r for r in graded if r.attempt == attempt]]},
            resolved_any_percent=_percent(sum(by_instance.values()), len(by_instance)),
            steps_median=_median([run.steps for run in graded]),
            prompt_tokens=prompt, completion_tokens=sum(run.completion_tokens for run in graded),
            cached_share=round(sum(run.cached_tokens for run in graded) / prompt, 4) if prompt else None,
            cost=round(sum(run.cost for run in graded), 4),
            wall_seconds_median=_median(walls), wall_seconds_p95=_p95(walls),
            setup_seconds_median=_median([run.setup_seconds for run in graded if run.setup_seconds is not None]),
            grading_seconds_median=_median([r.grading_seconds for r in graded if r.grading_seconds is not None]),
        )  # fmt: skip


def load_report(folder: Path) -> Report | None:
    path = folder / REPORT
    return Report.model_validate_json(path.read_text()) if path.exists() else None


def save(report: Report, folder: Path, order: list[str]) -> None:
    """The report and the predictions files, each written aside and renamed into place. ``order``: the
    instances' order in their file, which the predictions keep."""
    report.updated_at = _now()
    report.summary = report.summarise()
    position = {instance_id: number for number, instance_id in enumerate(order)}
    report.runs.sort(key=lambda run: (position.get(run.instance_id, len(order)), run.attempt))
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / REPORT, report.model_dump_json(indent=2) + "\n")
    for attempt in range(1, report.attempts + 1):
        rows = [{"instance_id": run.instance_id, "model_name_or_path": report.model_name_or_path,
                 "model_patch": run.model_patch}
                for run in report.runs if run.graded and run.attempt == attempt]  # fmt: skip
        _write(folder / predictions_name(attempt), "".join(json.dumps(row) + "\n" for row in rows))


def predictions_name(attempt: int) -> str:
    return "predictions.jsonl" if attempt == 1 else f"predictions-attempt-{attempt}.jsonl"


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def print_report(report: Report, console: Console) -> None:
    table = Table("instance", "try", "outcome", "steps", "tokens", "cached", "cost", "wall s", "set-up s",
                  "reason", box=None, pad_edge=False)  # fmt: skip
    for run in report.runs:
        style = {"resolved": "green", "unresolved": "red", "error": "yellow"}.get(run.outcome or "", "dim")
        tokens = run.prompt_tokens + run.completion_tokens
        table.add_row(
            escape(run.instance_id), str(run.attempt), f"[{style}]{run.outcome or 'pending'}[/{style}]",
            str(run.steps), f"{tokens:,}", _share(run.cached_tokens, run.prompt_tokens), f"{run.cost:.2f}",
            _number(run.wall_seconds), _number(run.setup_seconds) + (" (cached)" if run.setup_cached else ""),
            escape(_one_line(run.reason or run.task_reason or "")),
        )  # fmt: skip
    console.print(table)
    summary = report.summary or report.summarise()
    percent = "n/a" if summary.resolved_percent is None else f"{summary.resolved_percent:.1f} %"
    console.print(f"resolved: {summary.resolved} of {summary.graded} graded runs ({percent}); "
                  f"{summary.graded} of {summary.planned} runs graded; {summary.errors} grading errors")  # fmt: skip
    if report.attempts > 1 and summary.resolved_any_percent is not None:
        console.print(f"resolved by any of {report.attempts} attempts: {summary.resolved_any_percent:.1f} %")
    cached = "n/a" if summary.cached_share is None else f"{summary.cached_share * 100:.1f} %"
    console.print(f"tokens: {summary.prompt_tokens:,} prompt ({cached} cached), {summary.completion_tokens:,} "
                  f"completion; cost {summary.cost:.2f}; median steps {_number(summary.steps_median)}; wall time "
                  f"median {_number(summary.wall_seconds_median)} s, p95 {_number(summary.wall_seconds_p95)} s; "
                  f"set-up median {_number(summary.setup_seconds_median)} s; grading median "
                  f"{_number(summary.grading_seconds_median)} s; eval ran {report.elapsed_seconds:.0f} s")  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 2) if whole else None


def _median(values: list[float] | list[int]) -> float | None:
    return round(float(statistics.median(values)), 2) if values else None


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _one_line(text: str, limit: int = 100) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
