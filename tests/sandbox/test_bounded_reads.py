"""Reading out of a sandbox costs the worker what it asked for, never what the sandbox holds (issue 21, item 6),
on both backends: a 3-line read of a 500 MB file stays small in the worker's memory (measured in a process of
its own), a file past the caller's limit is refused unread, and files that never end are not read at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.base import SandboxBackend, SandboxFileError, SandboxSpec

BIG = 500 * 10**6
RSS_BOUND_MIB = 300
"""Generous: the child's own imports (pydantic, docker, the agent) take about 130 MiB; the file is 477 MiB."""
CHILD = """
import json, sys
from pathlib import Path
from agent.base import ToolCall
from agent.tools import Toolbox, ToolContext, ToolError
from sandbox.base import SandboxFileTooLargeError, SandboxSpec

kind, config, workspace = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if kind == "docker":
    import docker
    from sandbox.docker import DockerBackend, DockerConfig
    backend = DockerBackend(DockerConfig.model_validate_json(config), client=docker.from_env())
else:
    from sandbox.bwrap import BwrapBackend, BwrapConfig
    backend = BwrapBackend(BwrapConfig.model_validate_json(config))
sandbox = backend.start(SandboxSpec(task_id="bounded-read", workspace=workspace))
result = {}
try:
    ctx = ToolContext(sandbox=sandbox, output_limit=2000, command_timeout=30)
    call = lambda name, **args: Toolbox().execute(ToolCall(id="abcDEF123", name=name, arguments=json.dumps(args)), ctx)
    result["page"] = call("read_file", file_path="big.log", offset=2, limit=3).output
    try:
        call("edit", file_path="big.log", old_string="line 2", new_string="line two")
    except ToolError as exc:
        result["edit"] = str(exc)
    try:
        sandbox.read_file("big.log")
    except SandboxFileTooLargeError as exc:
        result["read_file"] = str(exc)
    result["head"] = len(sandbox.read_file("big.log", limit=3 * 2**20, truncate=True))
finally:
    sandbox.close()
# VmHWM, this process's own peak: ru_maxrss would also count the parent it was spawned from (the kernel keeps
# the larger of the old and the new image's peak across exec), which in a long test run is pytest's.
with open("/proc/self/status") as status:
    result["maxrss_mib"] = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(json.dumps(result))
"""


def test_a_three_line_read_of_a_500_mb_file_keeps_the_worker_small(
    backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    big = workspace / "big.log"
    big.write_text("".join(f"line {n} of the log\n" for n in range(1, 10_001)))
    os.truncate(big, BIG)  # sparse: 500 MB to read, nothing on the disk
    config = backend.config.model_dump_json()  # type: ignore[attr-defined]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, backend.name, config, str(workspace)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["page"].splitlines() == [
        "     2\u2192line 2 of the log",
        "     3\u2192line 3 of the log",
        "     4\u2192line 4 of the log",
        f"[big.log goes on ({BIG} bytes); showing lines 2-4. Use offset=5 to read on.]",
    ]
    assert (
        result["edit"] == f"big.log is {BIG} bytes; edit works on files up to 4194304 bytes (use bash for larger ones)"
    )
    assert result["read_file"] == f"/workspace/big.log is {BIG} bytes, more than the 16777216 that may be read"
    assert result["head"] == 3 * 2**20
    assert result["maxrss_mib"] < RSS_BOUND_MIB, result["maxrss_mib"]


def test_files_that_never_end_are_not_read(backend: SandboxBackend, new_workspace: Callable[..., Path]) -> None:
    sandbox = backend.start(SandboxSpec(task_id="endless-read", workspace=new_workspace(backend)))
    try:
        assert sandbox.run("mkfifo pipe && ln -s /dev/zero zeros").exit_code == 0
        for path in ("pipe", "zeros", "/dev/zero", "/dev/urandom"):
            with pytest.raises(SandboxFileError, match="not a regular file"):
                sandbox.read_file(path)
            with pytest.raises(SandboxFileError, match="not a regular file"):
                sandbox.read_lines(path, first=1, count=3, max_bytes=1000)
        with pytest.raises(SandboxFileError, match="Is a directory"):
            sandbox.read_file(".")
        assert sandbox.run("echo still answering").stdout == "still answering\n"
    finally:
        sandbox.close()
