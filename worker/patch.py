"""Extracting the patch: the workspace's change against the base commit, and nothing else.

Runs inside the sandbox (a repository's own git config must never run code on the worker). New files are
included and binary ones as git binary patches; a built-in list keeps caches, virtualenvs, dependencies and
build output out — on top of the repository's own ignore rules — and what it kept out is reported. The
worker then makes the patch's one commit on the base commit of its pristine copy of the repository (which no
untrusted code touched), which checks that it applies, before it is stored (``worker/repo.py``).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from agent.loop import Trajectory
from sandbox.base import Sandbox, SandboxFileTooLargeError
from sandbox.environments import WORKSPACE_MODIFIED
from worker.errors import TaskFailure
from worker.hostgit import DEFAULT_MAX_PATCH_BYTES

BUILTIN_EXCLUDES = (
    "__pycache__/", "*.py[cod]", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".hypothesis/",
    "*.egg-info/", ".eggs/", ".tox/", ".nox/", ".venv/", "venv/", ".coverage", ".coverage.*", "coverage.xml",
    "htmlcov/", ".nyc_output/", "coverage/", "node_modules/", "build/", "dist/", ".cache/", "target/",
    "*.o", "*.obj", "*.so", "*.dylib", "*.dll", "*.class",
)  # fmt: skip
MAX_REPORTED = 200
EXCLUDED_BYTES = 256 * 1024
"""Of the list of excluded paths, only this much is read (the first MAX_REPORTED paths are kept)."""
DIFF = "/tmp/overnight-task.diff"
EXCLUDED = "/tmp/overnight-excluded"
SCRIPT = """set -e
cd /workspace
G="/usr/bin/git -c core.fsmonitor=false -c core.hooksPath=/dev/null"  # never a git the set-up put on the PATH
printf '%s\\n' {patterns} > /tmp/overnight-exclude
$G -c core.excludesFile=/tmp/overnight-exclude add -A -- .
: > {setup_changed}
if [ -f {modified} ]; then
  while IFS= read -r -d '' path && IFS= read -r -d '' hash; do
    if [ -f "$path" ] && [ "$($G hash-object -- "$path")" = "$hash" ]; then
      $G reset -q {base} -- "$path" && printf '%s\\0' "$path" >> {setup_changed}
    fi
  done < {modified}
fi
$G diff --cached --binary --full-index --no-color --no-ext-diff --no-textconv {base} > {diff}
$G -c core.excludesFile=/tmp/overnight-exclude ls-files -z -o -i --exclude-standard --directory | sort -z > /tmp/ov-a
$G -c core.excludesFile=/dev/null ls-files -z -o -i --exclude-standard --directory | sort -z > /tmp/ov-b
comm -z -23 /tmp/ov-a /tmp/ov-b > {excluded}
cat {setup_changed} >> {excluded}
"""


@dataclass(kw_only=True, frozen=True)
class ExtractedPatch:
    diff: str
    files_changed: int
    excluded: list[str]
    """Paths kept out of the patch: by the built-in exclude list (the repository's own rules aside), and
    tracked files only the set-up changed."""


def extract_patch(sandbox: Sandbox, base_sha: str, *, max_bytes: int = DEFAULT_MAX_PATCH_BYTES) -> ExtractedPatch:
    """The diff, read out of the sandbox in pieces and refused past ``max_bytes`` (OVERNIGHT_MAX_PATCH_BYTES)."""
    patterns = " ".join(shlex.quote(p) for p in BUILTIN_EXCLUDES)
    script = SCRIPT.format(
        patterns=patterns,
        base=base_sha,
        diff=DIFF,
        excluded=EXCLUDED,
        modified=WORKSPACE_MODIFIED,
        setup_changed="/tmp/overnight-setup-changed",
    )
    result = sandbox.run(script, timeout=600)
    if result.exit_code != 0:
        last = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.exit_code}"]
        raise TaskFailure(f"could not compute the diff: {last[0]}")
    try:
        diff = sandbox.read_file(DIFF, limit=max_bytes).decode("utf-8", errors="replace")
    except SandboxFileTooLargeError as exc:
        raise TaskFailure(
            f"the patch is {exc.size} bytes, more than the {max_bytes} a task may produce (OVERNIGHT_MAX_PATCH_BYTES)"
        ) from exc
    listed = sandbox.read_file(EXCLUDED, limit=EXCLUDED_BYTES, truncate=True)
    cut = len(listed) == EXCLUDED_BYTES  # the last path may be partial
    excluded = [p.decode("utf-8", errors="replace") for p in listed.split(b"\0")[: -1 if cut else None] if p]
    return ExtractedPatch(
        diff=diff,
        files_changed=len(changed_files(diff)),
        excluded=excluded[:MAX_REPORTED],
    )


TEST_COMMAND = re.compile(
    r"\b(pytest|py\.test|unittest|tox|nox|npm (run )?test|yarn test|pnpm test|jest|vitest|mocha|tape|go test|"
    r"cargo test|mvn test|gradle test|make (check|test)|ctest|rspec|phpunit)\b"
)


def tests_run(trajectory: Trajectory) -> list[tuple[str, int | None]]:
    """The test commands the agent ran (bash calls that look like a test runner) and their exit codes, as the
    trajectory recorded them (None: the call failed before its command ended)."""
    commands: dict[str, str] = {}
    for message in trajectory.messages:
        for call in message.get("tool_calls") or []:
            if call["function"]["name"] == "bash":
                try:
                    command = json.loads(call["function"]["arguments"]).get("command", "")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if isinstance(command, str) and TEST_COMMAND.search(command):
                    commands[call["id"]] = command
    return [(commands[result["id"]], result.get("exit_code")) for result in trajectory.tool_results
            if result["id"] in commands]  # fmt: skip


def commit_message(*, title: str, summary: str, files: list[str], tests: list[tuple[str, int | None]]) -> str:
    """Title, blank line, then the summary, the files changed and the tests the agent ran with their result."""
    lines = [title.strip() or "Overnight change", "", summary.strip() or "(no summary)", ""]
    if files:
        lines += ["Files changed:", *(f"- {name}" for name in files), ""]
    if tests:
        lines.append("Tests run by the agent:")
        for command, code in tests[-10:]:
            verdict = "passed" if code == 0 else ("result unknown" if code is None else f"failed (exit {code})")
            lines.append(f"- `{command.strip()[:200]}`: {verdict}")
    else:
        lines.append("The agent ran no tests.")
    return "\n".join(lines).rstrip() + "\n"


def changed_files(diff: str) -> list[str]:
    return [line.split(" b/", 1)[1] for line in diff.splitlines() if line.startswith("diff --git ") and " b/" in line]
