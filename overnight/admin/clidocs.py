"""The CLI reference of docs/cli.md, generated from the client's typer app: every command's ``--help`` as click's
plain formatter writes it on a terminal of 80 columns or more (no colour, no rich panels: ``TYPER_USE_RICH=0
overnight ... --help`` prints the same), the same on every machine. It walks the app, so a new command needs only a
regeneration; tests/overnight/test_cli_docs.py fails when the checked-in block drifts.

Run ``python -m overnight.admin.clidocs docs/cli.md`` after changing a command, an option or a help string."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import typer
from typer.core import TyperCommand, TyperGroup

BEGIN = "<!-- cli-reference:begin -->"
END = "<!-- cli-reference:end -->"
COLUMNS = 80
PROGRAM = "overnight"
Command = TyperCommand | TyperGroup


@dataclass(frozen=True, kw_only=True)
class Page:
    path: tuple[str, ...]
    """The words after ``overnight`` (``("token", "create")``; the root's is empty)."""
    help: str

    @property
    def title(self) -> str:
        return " ".join((PROGRAM, *self.path))


def _command(app: typer.Typer) -> Command:
    command = typer.main.get_command(app)
    if not isinstance(command, TyperCommand | TyperGroup):
        raise TypeError(f"{app} gave a {type(command).__name__}, not a typer command")
    return command


def _eval_commands() -> dict[tuple[str, ...], Command]:
    from overnight.admin.eval.command import compare_app, run_app

    return {(): _command(run_app), ("compare",): _command(compare_app)}


PASSED_ON: dict[str, Callable[[], dict[tuple[str, ...], Command]]] = {"eval": _eval_commands}
"""Commands that hand their arguments, ``--help`` included, to a command line of their own, by the path of the
command: that command line's commands, by their path under it (click cannot see into them)."""


def _context(command: Command, name: str, parent: typer.Context | None) -> typer.Context:
    width = COLUMNS - 2  # what click's formatter takes of a terminal this wide (its margin)
    return typer.Context(command, info_name=name, parent=parent, terminal_width=width, max_content_width=width)


def _help(command: Command, context: typer.Context) -> str:
    command.rich_markup_mode = None  # click's own formatter: plain text (the command object is this walk's own)
    return command.get_help(context)


def _walk(command: Command, context: typer.Context, path: tuple[str, ...]) -> Iterator[Page]:
    if not command.add_help_option:  # its --help is another command line's: render that one's instead
        passed_on = PASSED_ON.get(" ".join(path))
        if passed_on is None:
            raise LookupError(
                f"`{PROGRAM} {' '.join(path)}` passes its arguments on and has no --help of its own: "
                "say in PASSED_ON of overnight/admin/clidocs.py where its commands are"
            )
        for subpath, inner in passed_on().items():  # named in full, as that command line's main() names itself
            inner_context = _context(inner, " ".join((PROGRAM, *path, *subpath)), None)
            yield Page(path=path + subpath, help=_help(inner, inner_context))
        return
    yield Page(path=path, help=_help(command, context))
    if isinstance(command, TyperGroup):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if not isinstance(sub, TyperCommand | TyperGroup):
                raise TypeError(f"`{PROGRAM} {' '.join((*path, name))}` is not a typer command: {sub!r}")
            if not sub.hidden:
                yield from _walk(sub, _context(sub, name, context), (*path, name))


def pages() -> list[Page]:
    """Every command's help, the root first, each group before its commands, in the app's order."""
    from overnight.cli import app

    root = _command(app)
    return list(_walk(root, _context(root, PROGRAM, None), ()))


def reference() -> str:
    sections = []
    for page in pages():
        heading = "###" if len(page.path) <= 1 else "####"
        sections.append(f"{heading} `{page.title}`\n\n```text\n{page.help}\n```")
    return "\n\n".join(sections)


def render_cli_doc(text: str) -> str:
    """``text`` with the block between the markers replaced by the reference as the code has it now."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"no {BEGIN} ... {END} block to fill")
    return f"{head}{BEGIN}\n{reference()}\n{END}{tail}"


if __name__ == "__main__":  # python -m overnight.admin.clidocs docs/cli.md
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/cli.md")
    target.write_text(render_cli_doc(target.read_text()))
