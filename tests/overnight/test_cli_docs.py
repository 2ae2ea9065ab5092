"""docs/cli.md's reference block is every command's --help as the code has it: regenerated, never hand-edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from overnight.admin.clidocs import BEGIN, END, pages, render_cli_doc
from overnight.cli import app

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REGENERATE = "run `python -m overnight.admin.clidocs docs/cli.md`"


def _block() -> str:
    return CLI_DOC.read_text().partition(BEGIN)[2].partition(END)[0]


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Read from the typer app's own registrations, not from the generator's walk of the click commands."""
    paths = []
    for command in group.registered_commands:
        if command.callback is not None and not command.hidden:
            paths.append((*prefix, command.name or typer.main.get_command_name(command.callback.__name__)))
    for sub in group.registered_groups:
        assert sub.name, f"a group of `overnight {' '.join(prefix)}` has no name"
        paths.append((*prefix, sub.name))
        assert sub.typer_instance is not None
        paths += _command_paths(sub.typer_instance, (*prefix, sub.name))
    return paths


def test_the_checked_in_cli_reference_is_what_the_code_says() -> None:
    text = CLI_DOC.read_text()
    assert render_cli_doc(text) == text, f"docs/cli.md's CLI reference is stale: {REGENERATE}"


def test_every_command_of_the_app_has_its_page_in_the_reference() -> None:
    paths = _command_paths(app)
    assert {("submit",), ("token", "create"), ("bench", "llm")} <= set(paths), "the app's registrations were misread"
    block = _block()
    missing = [" ".join(path) for path in paths if f"`overnight {' '.join(path)}`\n\n```text\nUsage: " not in block]
    assert missing == [], f"no page for these commands in docs/cli.md: {REGENERATE}"


def test_a_changed_help_string_makes_the_reference_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    text = CLI_DOC.read_text()
    monkeypatch.setattr(app.info, "help", "A help string nobody regenerated the docs for.")
    regenerated = render_cli_doc(text)
    assert regenerated != text
    assert "A help string nobody regenerated the docs for." in regenerated
    assert regenerated.partition(BEGIN)[0] == text.partition(BEGIN)[0], "the prose before the block was changed"
    assert regenerated.partition(END)[2] == text.partition(END)[2], "the prose after the block was changed"


# The entry point as the `overnight` script runs it, once per page, in a process of its own: typer reads
# TYPER_USE_RICH when it is first imported (and one process is seconds faster than a script per page).
PRINT_HELP = """
import contextlib, io, json, sys
from overnight.cli import main
printed = []
for path in json.loads(sys.argv[1]):
    sys.argv, out, code = ["overnight", *path, "--help"], io.StringIO(), None
    with contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    printed.append([code, out.getvalue()])
sys.__stdout__.write(json.dumps(printed))
"""


def test_each_page_is_what_the_command_prints_without_rich_on_80_columns() -> None:
    """The generator renders what `overnight ... --help` prints, commands that pass their arguments on included."""
    expected = pages()
    paths = json.dumps([page.path for page in expected])
    env = {**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "80"}
    ran = subprocess.run([sys.executable, "-c", PRINT_HELP, paths], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    printed = json.loads(ran.stdout)
    differing = [
        f"{page.title} (exit {code}):\n{output}"
        for page, (code, output) in zip(expected, printed, strict=True)
        if code not in (0, None) or output != page.help + "\n"
    ]
    assert differing == []
