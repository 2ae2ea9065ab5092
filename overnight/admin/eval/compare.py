"""Two reports side by side: each one's resolved rate with a Wilson score interval, and the runs they share
(same instance, same attempt number) paired: which flipped, and McNemar's exact test on the flips."""

from __future__ import annotations

import math

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from overnight.admin.eval.report import Report

Z95 = 1.959963984540054


class Rate(BaseModel):
    name: str
    resolved: int
    graded: int
    percent: float | None
    low: float | None
    """The Wilson score interval's bounds (95 %), in percent."""
    high: float | None


class Comparison(BaseModel):
    a: Rate
    b: Rate
    paired: int
    """Runs graded in both reports (same instance id and attempt)."""
    gained: list[str]
    """Resolved in B, not in A ("instance#attempt")."""
    lost: list[str]
    """Resolved in A, not in B."""
    both: int
    neither: int
    mcnemar_p: float | None
    """Exact two-sided p of McNemar's test on the flips: how likely this many flips one way or the other are if
    A and B solve the same instances equally often (None without flips)."""


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (it stays inside [0, 1] and is sound for the small
    samples and rates near 0 or 1 an eval gives, where the normal approximation is not)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(gained: int, lost: int) -> float | None:
    flips = gained + lost
    if flips == 0:
        return None
    tail = sum(math.comb(flips, k) for k in range(min(gained, lost) + 1)) / 2**flips
    return min(1.0, 2 * tail)


def rate(name: str, report: Report) -> Rate:
    graded = [run for run in report.runs if run.graded]
    resolved = sum(run.resolved for run in graded)
    if not graded:
        return Rate(name=name, resolved=0, graded=0, percent=None, low=None, high=None)
    low, high = wilson(resolved, len(graded))
    return Rate(name=name, resolved=resolved, graded=len(graded), percent=round(100 * resolved / len(graded), 2),
                low=round(100 * low, 2), high=round(100 * high, 2))  # fmt: skip


def compare(a: Report, b: Report, *, names: tuple[str, str] = ("A", "B")) -> Comparison:
    runs_a = {run.key: run for run in a.runs if run.graded}
    runs_b = {run.key: run for run in b.runs if run.graded}
    shared = [key for key in runs_a if key in runs_b]
    gained = [f"{iid}#{n}" for iid, n in shared if runs_b[iid, n].resolved and not runs_a[iid, n].resolved]
    lost = [f"{iid}#{n}" for iid, n in shared if runs_a[iid, n].resolved and not runs_b[iid, n].resolved]
    both = sum(runs_a[key].resolved and runs_b[key].resolved for key in shared)
    return Comparison(
        a=rate(names[0], a), b=rate(names[1], b), paired=len(shared), gained=gained, lost=lost, both=both,
        neither=len(shared) - both - len(gained) - len(lost), mcnemar_p=mcnemar_exact(len(gained), len(lost)),
    )  # fmt: skip


def print_comparison(comparison: Comparison, console: Console) -> None:
    table = Table("report", "resolved", "graded", "resolved %", "95 % interval (Wilson)", box=None, pad_edge=False)
    for each in (comparison.a, comparison.b):
        percent = "-" if each.percent is None else f"{each.percent:.1f} %"
        interval = "-" if each.low is None else f"{each.low:.1f} to {each.high:.1f} %"
        table.add_row(escape(each.name), str(each.resolved), str(each.graded), percent, interval)
    console.print(table)
    console.print(f"paired runs: {comparison.paired} (resolved in both {comparison.both}, in neither "
                  f"{comparison.neither})")  # fmt: skip
    for label, flips in (("resolved only by B (gained)", comparison.gained),
                         ("resolved only by A (lost)", comparison.lost)):  # fmt: skip
        console.print(f"{label}: {len(flips)}" + (f": {escape(', '.join(flips))}" if flips else ""))
    if comparison.mcnemar_p is not None:
        console.print(f"McNemar's exact test on the flips: p = {comparison.mcnemar_p:.3g}")
