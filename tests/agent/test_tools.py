"""The four tools in a real Docker sandbox, including every refusal."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.base import Submitted, ToolCall
from agent.tools import Toolbox, ToolContext, ToolError, ToolResult
from sandbox.base import SandboxSpec
from sandbox.docker import DockerBackend

SOURCE = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture
def ctx(docker_backend: DockerBackend, new_workspace: Callable[..., Path]) -> Iterator[ToolContext]:
    workspace = new_workspace(docker_backend)
    (workspace / "calc.py").write_text(SOURCE)
    (workspace / "notes.txt").write_text("\n".join(f"line {n}" for n in range(1, 3001)) + "\n")
    sandbox = docker_backend.start(SandboxSpec(task_id="tools", workspace=workspace))
    try:
        yield ToolContext(sandbox=sandbox, output_limit=2000, command_timeout=10)
    finally:
        sandbox.close()


def run(ctx: ToolContext, name: str, **arguments: object) -> ToolResult:
    return Toolbox().execute(ToolCall(id="abcDEF123", name=name, arguments=json.dumps(arguments)), ctx)


def call(ctx: ToolContext, name: str, **arguments: object) -> str:
    """What the model is shown."""
    return run(ctx, name, **arguments).output


SAMPLE_ARGUMENTS = {
    "bash": {"command": "ls", "timeout": 5},
    "read_file": {"file_path": "a.py", "offset": 2, "limit": 10},
    "write_file": {"file_path": "new.py", "content": "x = 1\n"},
    "edit": {"file_path": "a.py", "old_string": "a", "new_string": "b", "replace_all": True},
    "grep": {"pattern": "def ", "path": "src", "max_matches": 5, "use_default_ignore": False},
    "todo": {"action": "write", "todos": [{"id": "1", "content": "fix", "status": "pending", "priority": "high"}]},
    "finish": {"summary": "s", "pr_title": "t", "pr_body": "b"},
}


def test_tool_names_and_schemas_are_vibes_and_round_trip() -> None:
    toolbox = Toolbox()
    names = [s["function"]["name"] for s in toolbox.schemas]
    assert names == ["bash", "read_file", "write_file", "edit", "grep", "todo", "finish"]
    read = toolbox.schemas[1]["function"]["parameters"]
    assert read["required"] == ["file_path"] and read["properties"]["limit"]["default"] == 2000
    assert read["properties"]["offset"]["anyOf"][0] == {"minimum": 1, "type": "integer"}
    assert toolbox.schemas[4]["function"]["parameters"]["properties"]["path"]["default"] == "."
    assert '"title":' not in json.dumps(toolbox.schemas)
    for schema in toolbox.schemas:
        name = schema["function"]["name"]
        sample = SAMPLE_ARGUMENTS[name]
        assert set(schema["function"]["parameters"].get("required", [])) <= set(sample)
        parsed = toolbox.tools[name].args.model_validate(json.loads(json.dumps(sample)))
        assert parsed.model_dump(mode="json") == sample


def test_read_file_numbers_lines_and_pages(ctx: ToolContext) -> None:
    assert call(ctx, "read_file", file_path="calc.py").splitlines()[1] == "     2\u2192    return a - b"
    page = call(ctx, "read_file", file_path="notes.txt", offset=2999, limit=5)
    assert page.splitlines() == ["  2999\u2192line 2999", "  3000\u2192line 3000"]
    first = call(ctx, "read_file", file_path="/workspace/notes.txt")
    shown = first.splitlines()
    # The page is what fits in what the loop shows of a tool result (2,000 characters here), and says so.
    assert len(first) <= ctx.output_limit
    last = len(shown) - 1
    assert (
        shown[-1] == f"[/workspace/notes.txt has 3000 lines; showing lines 1-{last}. Use offset={last + 1} to read on.]"
    )
    assert shown[-2] == f"{last:6}\u2192line {last}"


def test_read_file_pages_within_what_the_loop_shows(ctx: ToolContext) -> None:
    """A model that follows the hints sees every line of a long module exactly once, and never a cut page."""
    module = "".join(f"def function_{n}(value):  # line {n}\n    return value + {n}\n" for n in range(1, 2501))
    ctx.sandbox.write_file("big.py", module.encode())
    seen: list[str] = []
    offset = None
    while True:
        page = call(ctx, "read_file", file_path="big.py", **({"offset": offset} if offset else {}))
        assert len(page) <= ctx.output_limit and "omitted" not in page
        lines = page.splitlines()
        if not lines[-1].startswith("[big.py has 5000 lines; showing lines "):
            seen += lines
            break
        first, last = map(int, lines[-1].split("showing lines ")[1].split(".")[0].split("-"))
        assert lines[-1].endswith(f"Use offset={last + 1} to read on.]") and len(lines) - 1 == last - first + 1
        seen += lines[:-1]
        offset = last + 1
    assert [line.split("\u2192", 1)[1] for line in seen] == module.splitlines()


def test_read_file_pages_inside_the_sandbox(ctx: ToolContext) -> None:
    """Lines are counted by newlines (as grep -n does), found and cut in the sandbox; only the page comes back."""
    ctx.sandbox.write_file("crlf.txt", b"one\r\ntwo\x0cstill two\r\nthree")
    assert call(ctx, "read_file", file_path="crlf.txt").split("\n") == [
        "     1\u2192one", "     2\u2192two\x0cstill two", "     3\u2192three"]  # fmt: skip
    with pytest.raises(ToolError, match=r"offset 5 is past the end of crlf\.txt \(3 lines\)"):
        call(ctx, "read_file", file_path="crlf.txt", offset=5)
    ctx.sandbox.write_file("minified.js", b"x" * 200_000 + b"\nsecond\n")
    page = call(ctx, "read_file", file_path="minified.js")
    assert page.startswith("     1\u2192xxx") and len(page) <= ctx.output_limit
    assert page.endswith("only its start is shown (bash reads on, e.g. cut -c). The next line is at offset 2.]")
    assert call(ctx, "read_file", file_path="minified.js", offset=2) == "     2\u2192second"
    ctx.sandbox.write_file("data.bin", b"\x7fELF\x00\x01")
    with pytest.raises(ToolError, match=r"data\.bin looks like a binary file"):
        call(ctx, "read_file", file_path="data.bin")
    ctx.sandbox.run("mkfifo pipe")
    with pytest.raises(ToolError, match=r"cannot read pipe: .*not a regular file"):
        call(ctx, "read_file", file_path="pipe")
    with pytest.raises(ToolError, match=r"cannot read pipe: .*not a regular file"):
        call(ctx, "edit", file_path="pipe", old_string="a", new_string="b")


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
    with pytest.raises(ToolError, match=r"NOT applied: calc.py would not compile"):
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
    out = run(ctx, "bash", command="echo out; echo err >&2; exit 3")
    assert out.output == "returncode: 3\nstdout:\nout\n\nstderr:\nerr\n"
    assert out.exit_code == 3 and not out.timed_out and not out.error  # as data, not only in the text
    slow = run(ctx, "bash", command="sleep 30", timeout=1)
    assert "timed out: the command was killed after 1 seconds" in slow.output and slow.timed_out
    assert run(ctx, "read_file", file_path="calc.py").exit_code is None  # no command of the model's ran
    noisy = call(ctx, "bash", command="seq 1 100000")
    assert "lines /" in noisy and "omitted ...]" in noisy and len(noisy) < 2500


def test_bad_calls_become_tool_errors(ctx: ToolContext) -> None:
    with pytest.raises(
        ToolError, match=r"unknown tool .vim.; available tools: bash, read_file, write_file, edit, grep, todo, finish"
    ):
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


def test_write_file_creates_only_new_files(ctx: ToolContext, tmp_path: Path) -> None:
    assert (
        call(ctx, "write_file", file_path="pkg/new.py", content="X = 1\n") == "Created pkg/new.py (1 lines, 6 bytes)."
    )
    assert (tmp_path / "ws" / "pkg" / "new.py").read_text() == "X = 1\n"
    with pytest.raises(ToolError, match=r"calc\.py already exists; use edit"):
        call(ctx, "write_file", file_path="calc.py", content="")
    with pytest.raises(ToolError, match=r"NOT applied: bad\.py would not compile: '\(' was never closed"):
        call(ctx, "write_file", file_path="bad.py", content="print(\n")
    assert not (tmp_path / "ws" / "bad.py").exists()
    with pytest.raises(ToolError, match="outside the workspace"):
        call(ctx, "write_file", file_path="../escape.txt", content="x")
    with pytest.raises(ToolError, match="at most 64000"):
        call(ctx, "write_file", file_path="big.txt", content="x" * 64_001)


def test_grep_finds_matches_with_line_numbers_and_caps_them(ctx: ToolContext) -> None:
    assert call(ctx, "grep", pattern="return a - b", path="calc.py").splitlines() == [
        "2:    return a - b",
        "6:    return a - b",
    ]
    found = call(ctx, "grep", pattern="^def ")
    assert "calc.py:1:def add(a, b):" in found and "calc.py:5:def sub(a, b):" in found
    capped = call(ctx, "grep", pattern="line", path="notes.txt", max_matches=10)
    assert len(capped.splitlines()) == 11 and "3000 matches; showing the first 10" in capped
    assert call(ctx, "grep", pattern="nothing-like-this") == "No matches for 'nothing-like-this' in .."
    with pytest.raises(ToolError, match=r"grep failed: regex parse error:(.|\n)*unclosed group"):
        call(ctx, "grep", pattern="(unclosed")
    with pytest.raises(ToolError, match="outside the workspace"):
        call(ctx, "grep", pattern="root", path="/etc")


def test_grep_respects_gitignore_unless_told_not_to(ctx: ToolContext) -> None:
    ctx.sandbox.run("git init -q . && echo 'build/' > .gitignore && mkdir build && echo needle > build/out.txt")
    assert call(ctx, "grep", pattern="needle").startswith("No matches")
    assert "build/out.txt:1:needle" in call(ctx, "grep", pattern="needle", use_default_ignore=False)


def test_todo_writes_and_reads_the_list(ctx: ToolContext) -> None:
    assert call(ctx, "todo", action="read") == "The todo list is empty."
    todos = [
        {"id": "1", "content": "reproduce", "status": "completed"},
        {"id": "2", "content": "fix", "priority": "high"},
    ]
    expected = "[x] 1: reproduce (medium)\n[ ] 2: fix (high)"
    assert call(ctx, "todo", action="write", todos=todos) == expected
    assert call(ctx, "todo", action="read") == expected
    with pytest.raises(ToolError, match="todos is required"):
        call(ctx, "todo", action="write")
    with pytest.raises(ToolError, match="action: Input should be 'read' or 'write'"):
        call(ctx, "todo", action="delete")
    with pytest.raises(ToolError, match="unique"):
        call(ctx, "todo", action="write", todos=[{"id": "1", "content": "a"}, {"id": "1", "content": "b"}])


def test_agents_md_of_a_subfolder_arrives_with_the_first_tool_result_there(ctx: ToolContext) -> None:
    ctx.sandbox.write_file("AGENTS.md", b"root rules")
    ctx.sandbox.write_file("pkg/AGENTS.md", b"Run tests with: python3 -m unittest")
    ctx.sandbox.write_file("pkg/mod.py", b"x = 1\n")
    ctx.instructions_shown.add(".")  # the loop puts the root file in the first user message
    first = call(ctx, "read_file", file_path="pkg/mod.py")
    assert "<instructions from pkg/AGENTS.md>\nRun tests with: python3 -m unittest\n</instructions>" in first
    assert "root rules" not in first
    assert "instructions" not in call(ctx, "read_file", file_path="pkg/mod.py")
