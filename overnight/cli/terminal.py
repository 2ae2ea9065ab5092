"""What the CLI writes to a terminal holds no control characters from server data: a diff line, a tool's
output or a task's title can carry escape sequences (clear the line, move the cursor, rewrite the window
title, a hyperlink) or bidirectional overrides that would hide or reorder what the reader sees. They are
shown as visible escapes (``\\x1b``) instead, at the one place every string becomes terminal output."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.text import Text

INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
"""C0 controls but tab and newline, DEL, C1 controls, the Unicode bidirectional marks and overrides, zero-width
characters (which hide text between what looks adjacent) and the line and paragraph separators (which break a
line where the reader sees none)."""


def visible(text: str) -> str:
    """``text`` with every character ``INVISIBLE`` matches written as ``\\xNN`` / ``\\uNNNN``."""
    return INVISIBLE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class SafeConsole(Console):
    """A rich ``Console`` that makes control characters visible in every string it renders (``print``,
    table cells, live displays), before markup is parsed: Overnight's own markup holds none."""

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(visible(text), **options)
