"""File tools: read_file, write_file, edit. Paths are confined to the workspace; Python files that
compiled before an edit must compile after it (SWE-agent's linting guard), or the edit is refused."""

from __future__ import annotations

import difflib
import shlex

from pydantic import Field

from agent.tools.base import ToolArgs, ToolContext, ToolError, ToolResult, instructions_along, resolve_path
from sandbox.base import SandboxError, SandboxFileTooLargeError

READ_MAX_BYTES = 64_000
HINT_ROOM = 200
"""Characters of a read_file result kept for the paging hint (beside the file's name)."""
WRITE_MAX_BYTES = 64_000
EDIT_MAX_BYTES = 4 * 2**20
"""Files edit reads whole into the worker; larger ones are changed with bash (sed, python) in the sandbox."""
SNIPPET_CONTEXT = 4


class ReadFileArgs(ToolArgs):
    file_path: str = Field(description="The path of the file to read (relative to the repository root).")
    offset: int | None = Field(
        default=None,
        ge=1,
        description="The line number to start reading from (1-indexed). Only provide if the file is too large "
        "to read at once.",
    )
    limit: int = Field(
        default=2000,
        gt=0,
        description="The number of lines to read. Lower it to read a smaller portion of a large file.",
    )


class WriteFileArgs(ToolArgs):
    file_path: str = Field(description="The path of the new file (relative to the repository root).")
    content: str = Field(description="The whole content of the new file.")


class EditArgs(ToolArgs):
    file_path: str = Field(description="The path of the file to modify")
    old_string: str = Field(description="The text to replace")
    new_string: str = Field(description="The text to replace it with (must be different from old_string)")
    replace_all: bool = Field(default=False, description="Replace all occurrences of old_string (default false)")


def read_file(args: ReadFileArgs, ctx: ToolContext) -> ToolResult:
    """The lines are picked inside the sandbox: only the page shown crosses into the worker. A page holds what
    fits in the loop's cut of a tool result (``ctx.output_limit``), so the hint names exactly the lines shown."""
    path = resolve_path(ctx, args.file_path)
    extra = _fitting_instructions(ctx, path)
    budget = max(ctx.output_limit - len(extra) - len(args.file_path) - HINT_ROOM, ctx.output_limit // 4)
    first = args.offset or 1
    try:
        page = ctx.sandbox.read_lines(path, first=first, count=args.limit, max_bytes=min(READ_MAX_BYTES, budget))
    except SandboxError as exc:
        raise ToolError(f"cannot read {args.file_path}: {exc}") from exc
    if page.binary:
        raise ToolError(f"{args.file_path} looks like a binary file")
    if page.count == 0 and page.total:
        raise ToolError(f"offset {args.offset} is past the end of {args.file_path} ({page.total} lines)")
    lines = page.content.split(b"\n")[: page.count]  # numbered as grep -n and editors do: by newlines only
    if page.cut and page.count > 1:
        lines.pop()  # a line the bytes ran out in: the next page starts with it
    shown: list[str] = []
    size, line_cut = 0, page.cut and page.count == 1
    for number, line in enumerate(lines, start=first):
        rendered = f"{number:6}\u2192{line.decode('utf-8', errors='replace').removesuffix(chr(13))}"
        if size + len(rendered) + 1 > budget:
            if not shown:  # one line longer than a page: its start
                shown.append(rendered[:budget])
                line_cut = True
            break
        shown.append(rendered)
        size += len(rendered) + 1
    end = first + len(shown) - 1
    if line_cut and len(shown) == 1:
        shown.append(f"[line {end} is longer than a page ({budget} characters); only its start is shown (bash "
                     f"reads on, e.g. cut -c). The next line is at offset {end + 1}.]")  # fmt: skip
    elif page.total is None:
        shown.append(f"[{args.file_path} goes on ({page.size} bytes); showing lines {first}-{end}. "
                     f"Use offset={end + 1} to read on.]")  # fmt: skip
    elif end < page.total:
        shown.append(f"[{args.file_path} has {page.total} lines; showing lines {first}-{end}. "
                     f"Use offset={end + 1} to read on.]")  # fmt: skip
    output = "\n".join(shown) if shown else f"[{args.file_path} is empty]"
    return ToolResult(output=f"{output}\n\n{extra}" if extra else output)


def _fitting_instructions(ctx: ToolContext, path: str) -> str:
    """The AGENTS.md files along ``path`` not yet shown, at most half a tool result (the page needs the rest)."""
    extra = instructions_along(ctx, path)
    half = ctx.output_limit // 2
    if len(extra) <= half:
        return extra
    return extra[:half] + "\n[the instructions go on: read the AGENTS.md files above for the rest]"


def write_file(args: WriteFileArgs, ctx: ToolContext) -> ToolResult:
    size = len(args.content.encode("utf-8"))
    if size > WRITE_MAX_BYTES:
        raise ToolError(f"content is {size} bytes; write_file takes at most {WRITE_MAX_BYTES}")
    path = resolve_path(ctx, args.file_path)
    if ctx.sandbox.run(f"test -e {shlex.quote(path)} -o -L {shlex.quote(path)}", timeout=10).exit_code == 0:
        raise ToolError(f"{args.file_path} already exists; use edit to change it")
    check_python(args.file_path, None, args.content)
    try:
        ctx.sandbox.write_file(path, args.content.encode("utf-8"))
    except SandboxError as exc:
        raise ToolError(f"cannot write {args.file_path}: {exc}") from exc
    lines = args.content.count("\n") + (0 if args.content.endswith("\n") or not args.content else 1)
    return _with_instructions(ctx, path, f"Created {args.file_path} ({lines} lines, {size} bytes).")


def edit(args: EditArgs, ctx: ToolContext) -> ToolResult:
    if args.old_string == args.new_string:
        raise ToolError("old_string and new_string are the same: nothing to change")
    if not args.old_string:
        raise ToolError("old_string is empty; use write_file to create a file")
    path = resolve_path(ctx, args.file_path)
    text = read_text(ctx, path, args.file_path)
    count = text.count(args.old_string)
    if count == 0:
        raise ToolError(f"old_string not found in {args.file_path}.{_nearest(text, args.old_string)}")
    if count > 1 and not args.replace_all:
        lines = _match_lines(text, args.old_string)
        raise ToolError(
            f"old_string occurs {count} times in {args.file_path} (lines {', '.join(map(str, lines))}); "
            "include more surrounding context to make it unique, or set replace_all"
        )
    replacements = count if args.replace_all else 1
    updated = text.replace(args.old_string, args.new_string, replacements)
    check_python(args.file_path, text, updated)
    ctx.sandbox.write_file(path, updated.encode("utf-8"))
    first = text[: text.index(args.old_string)].count("\n")
    snippet = _snippet(updated, first, args.new_string.count("\n") + 1)
    return _with_instructions(ctx, path, f"Edited {args.file_path} ({replacements} replacement).\n{snippet}")


def read_text(ctx: ToolContext, path: str, shown_as: str) -> str:
    try:
        data = ctx.sandbox.read_file(path, limit=EDIT_MAX_BYTES)
    except SandboxFileTooLargeError as exc:
        raise ToolError(f"{shown_as} is {exc.size} bytes; edit works on files up to {EDIT_MAX_BYTES} bytes "
                        "(use bash for larger ones)") from exc  # fmt: skip
    except SandboxError as exc:
        raise ToolError(f"cannot read {shown_as}: {exc}") from exc
    if b"\x00" in data[:8192]:
        raise ToolError(f"{shown_as} looks like a binary file")
    return data.decode("utf-8", errors="replace")


def check_python(shown_as: str, before: str | None, after: str) -> None:
    """Refuse content that breaks a Python file which compiled before (compiling runs none of its code)."""
    if not shown_as.endswith(".py"):
        return
    if before is not None:
        try:
            compile(before, shown_as, "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return
    try:
        compile(after, shown_as, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = exc.lineno or 1
        raise ToolError(
            f"NOT applied: {shown_as} would not compile: {exc.msg} at line {line}; the file is unchanged.\n"
            + _snippet(after, line - 1, 1)
        ) from exc


def _with_instructions(ctx: ToolContext, path: str, output: str) -> ToolResult:
    extra = instructions_along(ctx, path)
    return ToolResult(output=f"{output}\n\n{extra}" if extra else output)


def _nearest(text: str, needle: str) -> str:
    lines = text.splitlines()
    probe = next((line for line in needle.splitlines() if line.strip()), needle)
    matches = difflib.get_close_matches(probe, lines, n=3, cutoff=0.5)
    if not matches:
        return " No similar lines found; read the file again before editing."
    found = [f"{lines.index(match) + 1:6}\u2192{match}" for match in matches]
    return " The closest lines are:\n" + "\n".join(found)


def _match_lines(text: str, needle: str) -> list[int]:
    lines, position = [], text.find(needle)
    while position != -1:
        lines.append(text[:position].count("\n") + 1)
        position = text.find(needle, position + 1)
    return lines


def _snippet(text: str, first_line: int, count: int) -> str:
    lines = text.splitlines()
    start = max(first_line - SNIPPET_CONTEXT, 0)
    end = min(first_line + count + SNIPPET_CONTEXT, len(lines))
    return "\n".join(f"{n:6}\u2192{lines[n - 1]}" for n in range(start + 1, end + 1))
