"""Which test passed, read from a test command's output: pytest's ``-rA`` summary (as SWE-bench's harness reads
it) or TAP (tape, node-tap). Only the lines ``STATUS_LINES`` selects cross out of the grading sandbox."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

Status = Literal["PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"]
PASSING: frozenset[str] = frozenset({"PASSED", "XFAIL"})
"""As in SWE-bench's grading: a named test counts as passing only with one of these (missing is failing)."""

STATUS_LINES: dict[str, str] = {
    "pytest": r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) ",
    "tap": r"^(ok |not ok |# |TAP version)",
}
"""For ``grep -E`` in the sandbox: the lines each parser reads."""

_PYTEST = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (.+)$")
_TAP_RESULT = re.compile(r"^(not ok|ok)\b")
_TAP_SUMMARY = re.compile(r"^# (tests|pass|fail|ok)\b")


def parse_pytest(log: str) -> dict[str, str]:
    """``PASSED tests/test_x.py::test_y[param]`` lines; the `` - message`` a failure (or an xfail) adds is not part
    of its name."""
    results: dict[str, str] = {}
    for line in log.splitlines():
        match = _PYTEST.match(line.rstrip())
        if match is None:
            continue
        status, rest = match.groups()
        if status == "SKIPPED":  # "SKIPPED [1] file.py:12: reason": no test id to name
            continue
        name = rest.strip() if status == "PASSED" else rest.split(" - ", 1)[0].strip()  # others may add a reason
        results[name] = status
    return results


def parse_tap(log: str) -> dict[str, str]:
    """TAP as tape prints it, one run a process: ``TAP version`` opens a run, ``# name`` a test, ``ok N``/``not ok
    N`` are its assertions, and ``# tests``/``# pass``/``# fail``/``# ok`` close the run. A test passes when it
    made at least one assertion and none failed; the test a run was in when it stopped without its closing lines
    (the process died under it) failed."""
    results: dict[str, str] = {}
    current: str | None = None
    for line in log.splitlines():
        line = line.rstrip()
        if line.startswith("TAP version") or _TAP_SUMMARY.match(line):
            if current is not None and not _TAP_SUMMARY.match(line):
                results[current] = "FAILED"  # the previous run died in it
            current = None
        elif line.startswith("# "):
            if current is not None and results[current] == "OPEN":
                results[current] = "FAILED"  # no assertion at all
            current = line[2:].strip()
            results[current] = "OPEN"
        elif current is not None and (match := _TAP_RESULT.match(line)):
            if match.group(1) == "not ok":
                results[current] = "FAILED"
            elif results[current] == "OPEN":
                results[current] = "PASSED"
    if current is not None:
        results[current] = "FAILED"
    return {name: ("FAILED" if status == "OPEN" else status) for name, status in results.items()}


PARSERS: dict[str, Callable[[str], dict[str, str]]] = {"pytest": parse_pytest, "tap": parse_tap}
