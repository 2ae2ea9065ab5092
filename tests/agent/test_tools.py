"""The four tools in a real Docker sandbox, including every refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.base import Submitted, ToolCall
from agent.tools import Toolbox, ToolContext, ToolError
from sandbox.base import SandboxSpec
from sandbox.docker import DockerBackend

SOURCE = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture
def ctx(tmp_path: Path, docker_backend: DockerBackend) -> Iterator[ToolContext]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "calc.py").write_text(SOURCE)
    (workspace / "notes.txt").write_text("\n".join(f"line {n}" for n in range(1, 3001)) + "\n")
    sandbox = docker_backend.start(SandboxSpec(task_id="tools", workspace=workspace))
    try:
        yield ToolContext(sandbox=sandbox, output_limit=2000, command_timeout=10)
    finally:
        sandbox.close()


def call(ctx: ToolContext, name: str, **arguments: object) -> str:
    return Toolbox().execute(ToolCall(id="abcDEF123", name=name, arguments=json.dumps(arguments)), ctx)


def test_schemas_round_trip_through_the_argument_models() -> None:
    toolbox = Toolbox()
    assert [s["function"]["name"] for s in toolbox.schemas] == ["bash", "read_file", "edit", "finish"]
    read = toolbox.schemas[1]["function"]["parameters"]
    assert read["required"] == ["file_path"] and read["properties"]["limit"]["default"] == 2000
    assert '"title":' not in json.dumps(toolbox.schemas)
    for tool in toolbox.tools.values():
        required = tool.schema()["function"]["parameters"].get("required", [])
        sample = {name: ("x" if name != "timeout" else 1) for name in required}
        assert tool.args.model_validate(sample).model_dump(include=set(required)) == sample


def test_read_file_numbers_lines_and_pages(ctx: ToolContext) -> None:
    assert call(ctx, "read_file", file_path="calc.py").splitlines()[1] == "     2\u2192    return a - b"
    page = call(ctx, "read_file", file_path="notes.txt", offset=2999, limit=5)
    assert page.splitlines() == ["  2999\u2192line 2999", "  3000\u2192line 3000"]
    first = call(ctx, "read_file", file_path="/workspace/notes.txt")
    assert "showing 1-2000. Use offset to read on." in first.splitlines()[-1]


def test_edit_replaces_exactly_one_match(ctx: ToolContext, tmp_path: Path) -> None:
    out = call(
        ctx,
        "edit",
        file_path="calc.py",
        old_string="def add(a, b):\n    return a - b",
        new_string="def add(a, b):\n    return a + b",
    )
    assert "Edited calc.py" in out
    assert (tmp_path / "ws" / "calc.py").read_text() == SOURCE.replace("return a - b", "return a + b", 1)


def test_edit_with_several_matches_names_their_lines(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"occurs 2 times in calc.py \(lines 2, 6\)"):
        call(ctx, "edit", file_path="calc.py", old_string="return a - b", new_string="return a + b")
    call(ctx, "edit", file_path="calc.py", old_string="return a - b", new_string="return b - a", replace_all=True)
    assert ctx.sandbox.read_file("calc.py").decode().count("return b - a") == 2


def test_edit_without_match_shows_the_nearest_lines(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"not found in calc.py\. The closest lines are:\n +2\u2192    return a - b"):
        call(ctx, "edit", file_path="calc.py", old_string="    return a -b", new_string="x")


def test_edit_that_breaks_python_is_refused_and_the_file_kept(ctx: ToolContext, tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"edit NOT applied: calc.py would no longer compile"):
        call(ctx, "edit", file_path="calc.py", old_string="def add(a, b):", new_string="def add(a, b:")
    assert (tmp_path / "ws" / "calc.py").read_text() == SOURCE


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "sub/../../x", "/workspace/../etc/shadow"])
def test_paths_outside_the_workspace_are_refused(ctx: ToolContext, path: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        call(ctx, "read_file", file_path=path)


def test_symlinks_that_leave_the_workspace_are_refused(ctx: ToolContext, tmp_path: Path) -> None:
    ctx.sandbox.run("ln -s /etc/passwd passwd-link && ln -s /etc etc-link")
    for path in ("passwd-link", "etc-link/hostname"):
        with pytest.raises(ToolError, match=r"resolves .* outside the workspace"):
            call(ctx, "read_file", file_path=path)
    with pytest.raises(ToolError, match="outside the workspace"):
        call(ctx, "edit", file_path="passwd-link", old_string="root", new_string="toor")


def test_bash_reports_exit_code_streams_and_timeouts(ctx: ToolContext) -> None:
    out = call(ctx, "bash", command="echo out; echo err >&2; exit 3")
    assert out == "returncode: 3\nstdout:\nout\n\nstderr:\nerr\n"
    slow = call(ctx, "bash", command="sleep 30", timeout=1)
    assert "timed out: the command was killed after 1 seconds" in slow
    noisy = call(ctx, "bash", command="seq 1 100000")
    assert "lines /" in noisy and "omitted ...]" in noisy and len(noisy) < 2500


def test_bad_calls_become_tool_errors(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="unknown tool 'vim'; available tools: bash, read_file, edit, finish"):
        call(ctx, "vim")
    with pytest.raises(ToolError, match=r"invalid arguments for read_file: file_path: Field required"):
        call(ctx, "read_file")
    with pytest.raises(ToolError, match=r"invalid arguments for read_file: limit: Input should be greater than 0"):
        call(ctx, "read_file", file_path="calc.py", limit=0)
    with pytest.raises(ToolError, match="not valid JSON"):
        Toolbox().execute(ToolCall(id="abcDEF123", name="bash", arguments="{command: ls"), ctx)
    with pytest.raises(ToolError, match=r"cannot read missing\.py"):
        call(ctx, "read_file", file_path="missing.py")


def test_finish_submits(ctx: ToolContext) -> None:
    with pytest.raises(Submitted) as info:
        call(ctx, "finish", summary="s", pr_title="  Fix add  ", pr_body="b")
    assert info.value.pr_title == "Fix add"
